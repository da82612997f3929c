"""``layerswarm tracker``: load the tracker's configuration, check its store, serve."""
from __future__ import annotations

from layerswarm.bridge.format.errors import UserError
from layerswarm.tracker import config as tconfig


def add_arguments(p) -> None:
    tconfig.SCHEMA.add_arguments(p)


def check(cfg) -> str:
    """``--check-config``: the files the configuration names are usable (the store URL was parsed with the
    configuration; the store is not called, and its URL carries no password); a one-line summary."""
    from layerswarm.bridge.format.pki import FleetTLS
    from layerswarm.tracker.fleet import Fleet
    c = cfg.server
    mode = "plain HTTP"
    if c.tls_cert:
        mode = f"HTTPS ({FleetTLS(c.fleet_ca, c.tls_cert, c.tls_key).check()})"
    if c.secure:
        Fleet(c.fleet_ca, c.deny_serials)
        mode = f"secure fleet mode, {mode}" + (f", deny list {c.deny_serials}" if c.deny_serials else "")
    writes = ("fleet certificates" if c.secure else "publish token" if cfg.admin.publish_token
              else "anonymous")
    return (f"tracker on {c.host}:{c.port}, {mode}, store {cfg.state.store}, {c.workers} worker(s), "
            f"writes: {writes}")


def run(args) -> int:
    cfg = tconfig.load(args)
    if tconfig.SCHEMA.answered(args, cfg, check=check):
        return 0
    if cfg.state.spec.shared:
        from layerswarm.tracker.errors import StoreUnavailable
        from layerswarm.tracker.storage import open_store
        store = open_store(cfg.state.store, options=cfg.state.options)
        try:
            store.ping()
        except StoreUnavailable as exc:
            raise UserError(f"cannot reach {cfg.state.store}: {exc}") from None
        finally:
            store.close()
    from layerswarm.tracker.server import serve
    serve(cfg)
    return 0
