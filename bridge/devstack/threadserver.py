"""Serve a WSGI app on a real loopback socket from a thread of this process (test servers, the token server)."""
from __future__ import annotations

import threading

from werkzeug.serving import make_server


class ThreadServer:
    """A WSGI app on a real loopback socket, served from a thread (HTTPS with ``ssl_context``)."""

    def __init__(self, app, host: str = "127.0.0.1", ssl_context=None):
        self.app = app
        self.server = make_server(host, 0, app, threaded=True, ssl_context=ssl_context)
        self.port = self.server.server_port
        self.url = f"{'https' if ssl_context else 'http'}://{host}:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
