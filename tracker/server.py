"""Production serving: gunicorn embedded, gevent workers, HTTPS with --tls-cert/--tls-key.

gevent, not threads: a client that sends its request a byte at a time holds
a greenlet, not one of a handful of threads, so a crowd of slow connections
cannot stall announces (the bridge cannot do this: libtorrent's blocking
calls would stop every greenlet; the tracker has none).  The app is built in
each worker after gevent patched the standard library (no preload), so every
worker opens its own Redis pool after the fork.  The memory store lives in
one process, so it runs with exactly one worker; Redis lets several workers
share state.

TLS: each worker builds its server context from pki.FleetTLS and a greenlet
re-reads rotated certificate files into it.  In secure fleet mode the
context asks every client for a certificate from the fleet CA but lets those
without one finish the handshake (``/healthz`` and the operator's admin
token need none); the views decide (access.py).  gunicorn hands the
connection's socket to the app as ``environ['gunicorn.socket']``, whose
``getpeercert()`` is the verified certificate (fleet.py).
"""
from __future__ import annotations

import ssl

from gunicorn.app.base import BaseApplication

from layerswarm.bridge.format.pki import FleetTLS
from layerswarm.bridge.format.rlimits import raise_open_file_limit
from layerswarm.tracker.config import Config
from layerswarm.tracker.fleet import Fleet


class TrackerServer(BaseApplication):
    def __init__(self, cfg: Config):
        self.cfg_tracker = cfg
        self.tls: FleetTLS | None = None   # built in the worker (load), used by its server socket
        super().__init__()

    def load_config(self):
        c = self.cfg_tracker.server
        host = f"[{c.host}]" if ":" in c.host else c.host
        settings = {
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
        }
        if c.tls_cert:
            # certfile/keyfile switch gunicorn to TLS; the context itself comes from FleetTLS
            settings.update(certfile=c.tls_cert, keyfile=c.tls_key, ssl_context=self._ssl_context)
        for key, value in settings.items():
            self.cfg.set(key, value)

    def _ssl_context(self, _conf, _default_factory) -> ssl.SSLContext:
        return self._worker_tls().server_context(require=False)

    def _worker_tls(self) -> FleetTLS:
        if self.tls is None:
            c = self.cfg_tracker.server
            self.tls = FleetTLS(c.fleet_ca, c.tls_cert, c.tls_key)
            _start_reloading(self.tls)
        return self.tls

    def load(self):
        from layerswarm.tracker.app import create_app
        if self.cfg_tracker.server.tls_cert:
            _quiet_failed_handshakes()
            self._worker_tls()
        return create_app(self.cfg_tracker)


def _start_reloading(tls: FleetTLS) -> None:
    """A greenlet re-reading rotated certificate files, so a new certificate is served even when
    no request comes in on the old one (an expired certificate fails every handshake)."""
    import gevent

    def loop():
        while True:
            gevent.sleep(tls.check_every)
            tls.maybe_reload()
    gevent.spawn(loop)


def _quiet_failed_handshakes() -> None:
    """gevent's server prints a traceback for every failed TLS handshake (no fleet certificate,
    another CA, plain HTTP on the port): anyone could fill the log.  They are the caller's
    failure, told to the caller by the TLS alert."""
    import gevent
    hub = gevent.get_hub()
    hub.NOT_ERROR = (*hub.NOT_ERROR, ssl.SSLError)


def serve(cfg: Config) -> None:
    raise_open_file_limit(cfg.server.connections + 1024)
    c = cfg.server
    # unreadable or mismatched files: say so once here, not from every worker that fails to boot
    if c.tls_cert:
        FleetTLS(c.fleet_ca, c.tls_cert, c.tls_key).server_context()
    if c.secure:
        Fleet(c.fleet_ca, c.deny_serials)
    TrackerServer(cfg).run()
