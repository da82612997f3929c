"""``layerswarm tracker``: load the tracker's configuration, check its store, serve."""
from __future__ import annotations

from layerswarm.bridge.format.errors import UserError
from layerswarm.tracker import config as tconfig


def add_arguments(p) -> None:
    tconfig.SCHEMA.add_arguments(p)


def run(args) -> int:
    cfg = tconfig.load(args)
    if tconfig.SCHEMA.answered(args, cfg):
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
