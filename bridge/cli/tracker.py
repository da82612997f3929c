"""``layerswarm tracker``: flags (with environment defaults) into a Config, then serve."""
from __future__ import annotations

import os

from layerswarm.bridge.format.errors import UserError
from layerswarm.tracker.config import Config


def _env(name, default=None):
    return os.environ.get(f"LAYERSWARM_TRACKER_{name}", default)


def add_arguments(p) -> None:
    d = Config()
    p.add_argument("--host", default=_env("HOST", d.host), help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=int(_env("PORT", d.port)), help="default %(default)s")
    p.add_argument("--store", default=_env("STORE", d.store),
                   help="'memory' (one process) or redis://host:port/db shared by workers and replicas")
    p.add_argument("--publish-token", default=os.environ.get("LAYERSWARM_PUBLISH_TOKEN"),
                   help="bearer token required to publish torrents/manifests (env LAYERSWARM_PUBLISH_TOKEN); "
                        "unset = open")
    p.add_argument("--interval", type=int, default=int(_env("INTERVAL", d.interval)),
                   help="announce interval in seconds; peers expire after twice that (default %(default)s)")
    p.add_argument("--numwant-max", type=int, default=int(_env("NUMWANT_MAX", d.numwant_max)))
    p.add_argument("--allow-ip-param", action="store_true", default=bool(_env("ALLOW_IP_PARAM")),
                   help="trust the announce 'ip' parameter (only behind NAT you control)")
    p.add_argument("--quarantine-reports", type=int, default=int(_env("QUARANTINE_REPORTS", d.quarantine_reports)),
                   help="distinct hosts whose bad-torrent reports quarantine a torrent (default %(default)s)")
    p.add_argument("--lease-ttl", type=int, default=int(_env("LEASE_TTL", d.lease_ttl)),
                   help="default fetch lease TTL in seconds (default %(default)s)")
    p.add_argument("--relay-fanout", type=int, default=int(_env("RELAY_FANOUT", d.relay_fanout)),
                   help="children per node in the cold-fetch relay tree (default %(default)s)")
    p.add_argument("--workers", type=int, default=int(_env("WORKERS", d.workers)),
                   help="gunicorn worker processes (more than 1 needs --store redis://)")
    p.add_argument("--threads", type=int, default=int(_env("THREADS", d.threads)), help="threads per worker")


def config_from_args(args) -> Config:
    if args.workers < 1 or args.threads < 1:
        raise UserError("--workers and --threads must be at least 1")
    if args.workers > 1 and args.store == "memory":
        raise UserError("the memory store lives in one process: use --workers 1 or --store redis://...")
    if not (1 <= args.port <= 65535):
        raise UserError(f"invalid --port {args.port}")
    if args.interval < 1 or args.quarantine_reports < 1 or args.lease_ttl < 1 or args.relay_fanout < 1:
        raise UserError("--interval, --quarantine-reports, --lease-ttl and --relay-fanout must be at least 1")
    if not (args.store == "memory" or args.store.startswith(("redis://", "rediss://", "unix://"))):
        raise UserError(f"--store must be 'memory' or a redis:// URL, not {args.store!r}")
    return Config(host=args.host, port=args.port, store=args.store, publish_token=args.publish_token or None,
                  interval=args.interval, numwant_max=args.numwant_max, allow_ip_param=args.allow_ip_param,
                  quarantine_reports=args.quarantine_reports, lease_ttl=args.lease_ttl,
                  relay_fanout=args.relay_fanout, workers=args.workers, threads=args.threads)


def run(args) -> int:
    cfg = config_from_args(args)
    if cfg.store != "memory":
        from layerswarm.tracker.storage import open_store
        from layerswarm.tracker.errors import StoreUnavailable
        store = open_store(cfg.store)
        try:
            store.ping()
        except StoreUnavailable as exc:
            raise UserError(f"cannot reach {cfg.store}: {exc}") from None
        finally:
            store.close()
    from layerswarm.tracker.server import serve
    serve(cfg)
    return 0
