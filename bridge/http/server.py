"""The bridge's server: the registry mirror app under an embedded gunicorn, and the host's peer it owns.

One worker process (it owns the host's single libtorrent session),
``gthread`` with many threads so long blob streams never starve a manifest
request, no worker recycling, no preload (the app and the session are built
in the worker by ``load()``: libtorrent's threads do not survive a fork),
sendfile on.  SIGTERM: the arbiter
stops the worker, which gets ``graceful_timeout`` seconds to finish.
"""
from __future__ import annotations

import logging

from layerswarm.bridge import config as bconfig

log = logging.getLogger("layerswarm.serve")


def gunicorn_options(cfg: bconfig.BridgeConfig) -> dict:
    return {
        "bind": [cfg.server.listen],
        "workers": 1,
        "worker_class": "gthread",
        "threads": cfg.server.threads,
        "max_requests": 0,
        "preload_app": False,
        "sendfile": True,
        # Heartbeat of the worker's main loop, not a per-request limit: long
        # blob streams run in threads and never block it.
        "timeout": 60,
        "graceful_timeout": max(1, int(cfg.server.graceful_timeout)),
        "keepalive": 5,
        "worker_connections": max(1000, cfg.server.threads * 4),
        "accesslog": "-" if cfg.server.access_log else None,
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": "layerswarm-bridge",
        "control_socket_disable": True,  # gunicorn >= 25: no control socket in the cwd
        "worker_exit": _worker_exit,
    }


def build_peer(cfg: bconfig.BridgeConfig):
    """The host's one Peer: libtorrent session + layer store + tracker client."""
    import threading
    from layerswarm.bridge.node.peer import Peer
    peer = Peer.open(cfg.server.store_dir, cfg.swarm.tracker, publish_token=cfg.swarm.publish_token,
                     host_id=cfg.host_id, cache_max=cfg.swarm.cache_max, session=cfg.session, stream=cfg.stream,
                     tracker_timeout=cfg.tracker_timeout)
    # Re-seed what the store holds without blocking startup (the tracker may be down).
    threading.Thread(target=peer.seed_stored, name="reseed", daemon=True).start()
    return peer


def build_app(cfg: bconfig.BridgeConfig):
    """The WSGI app for ``cfg``: a swarm-backed mirror with --tracker, else pass-through."""
    from layerswarm.bridge.http.app import create_app
    return create_app(cfg, peer=build_peer(cfg) if cfg.swarm.tracker else None)


def _worker_exit(server, worker) -> None:
    """The worker's app owns the host's Peer (the libtorrent session): close it on the way out."""
    state = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("layerswarm")
    if state is not None and state.peer is not None:
        state.peer.close()


def serve(cfg: bconfig.BridgeConfig) -> None:
    """Run the bridge in the foreground until SIGTERM/SIGINT."""
    from gunicorn.app.base import BaseApplication

    class BridgeServer(BaseApplication):
        def load_config(self):
            for k, v in gunicorn_options(cfg).items():
                if k in self.cfg.settings and v is not None:
                    self.cfg.set(k, v)

        def load(self):
            return build_app(cfg)

    ups = cfg.upstreams
    log.info("bridge on http://%s, default upstream %s, aliases %s, store %s", cfg.server.listen, ups.default.url,
             sorted(n for n in ups.by_name if n != bconfig.DEFAULT_NAME), cfg.server.store_dir)
    BridgeServer().run()
