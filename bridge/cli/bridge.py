"""``layerswarm bridge``: load the bridge's configuration and serve the per-host registry mirror."""
from __future__ import annotations

from layerswarm.bridge import config as bconfig


def add_arguments(parser) -> None:
    bconfig.add_arguments(parser)


def _check(cfg: bconfig.BridgeConfig) -> str:
    from layerswarm.bridge.node.torrent.session import check_settings
    check_settings(cfg.session.lt_settings)
    return bconfig.check(cfg)


def run(args) -> int:
    cfg = bconfig.from_args(args)
    if bconfig.SCHEMA.answered(args, cfg, check=_check):
        return 0
    from layerswarm.bridge.http.server import serve
    serve(cfg)
    return 0
