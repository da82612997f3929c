"""``layerswarm bridge``: parse the bridge's configuration and serve the per-host registry mirror."""
from __future__ import annotations

from layerswarm.bridge import config as bconfig
from layerswarm.bridge.format.errors import UserError


def add_arguments(parser) -> None:
    bconfig.add_arguments(parser)


def run(args) -> int:
    cfg = bconfig.from_args(args)
    host, _, port = cfg.listen.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--listen wants HOST:PORT, got {cfg.listen!r}")
    from layerswarm.bridge.http.server import serve
    serve(cfg)
    return 0
