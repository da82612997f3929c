"""Production serving: gunicorn embedded, gevent workers.

gevent, not threads: a client that sends its request a byte at a time holds
a greenlet, not one of a handful of threads, so a crowd of slow connections
cannot stall announces (the bridge cannot do this: libtorrent's blocking
calls would stop every greenlet; the tracker has none).  The app is built in
each worker after gevent patched the standard library (no preload), so every
worker opens its own Redis pool after the fork.  The memory store lives in
one process, so it runs with exactly one worker; Redis lets several workers
share state.
"""
from __future__ import annotations

from gunicorn.app.base import BaseApplication

from layerswarm.bridge.format.rlimits import raise_open_file_limit
from layerswarm.tracker.config import Config


class TrackerServer(BaseApplication):
    def __init__(self, cfg: Config):
        self.cfg_tracker = cfg
        super().__init__()

    def load_config(self):
        c = self.cfg_tracker.server
        host = f"[{c.host}]" if ":" in c.host else c.host
        for key, value in {
            "bind": [f"{host}:{c.port}"],
            "workers": c.workers,
            "worker_class": "gevent",
            "worker_connections": c.connections,
            "keepalive": 5,
            "backlog": 2048,
            "timeout": 60,
            "graceful_timeout": 10,
            "max_requests": 0,           # never recycle: the memory store lives in the worker
            "limit_request_line": 8190,  # long queries reach us and get a bencoded failure
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "info",
            "proc_name": "layerswarm-tracker",
            "control_socket_disable": True,  # one shared ~/.gunicorn/gunicorn.ctl clashes between instances
        }.items():
            self.cfg.set(key, value)

    def load(self):
        from layerswarm.tracker.app import create_app
        return create_app(self.cfg_tracker)


def serve(cfg: Config) -> None:
    raise_open_file_limit(cfg.server.connections + 1024)
    TrackerServer(cfg).run()
