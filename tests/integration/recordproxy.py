"""A pass-through HTTP/1.1 proxy in front of a bridge that records what a client asked (never a secret).

Clients reach the bridge's realm at the host they reached the API at (the
challenge names it), so with the proxy in front every request of a pull —
``/v2/``, the token realm, manifests, blobs — passes here and is recorded as a
:class:`Seen`: method, path, query keys, ``Authorization`` scheme (no value),
the values of a few parameters (account, username, scope, ns...: never a
password) and the POST form's keys, and the bridge's status and challenge error.  Keep-alive connections are fine: every request is
parsed and forwarded on its own.
"""
from __future__ import annotations

import http.client
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

# Hop-by-hop headers, and the length: bodies are re-sent whole.
NOT_FORWARDED = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                 "proxy-connection", "proxy-authorization", "content-length"}


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: tuple        # sorted query keys
    auth: str           # Authorization scheme ("Basic", "Bearer") or "" for none
    params: dict        # the SHOWN values (query or POST form; repeated ones space-joined)
    form: tuple         # sorted POST form keys
    status: int
    error: str          # the ``error=`` of the bridge's challenge, if it answered one

    def __str__(self) -> str:
        bits = [self.method, self.path]
        if self.query:
            bits.append("?" + "&".join(self.query))
        if self.form:
            bits.append("form[" + ",".join(self.form) + "]")
        bits.append(f"auth={self.auth or '-'}")
        bits.append(" ".join(f"{k}={v}" for k, v in sorted(self.params.items())))
        return " ".join(bits) + f" -> {self.status}" + (f" {self.error}" if self.error else "")


SHOWN = ("account", "username", "grant_type", "scope", "ns", "service", "client_id", "offline_token")
ERROR = re.compile(r'error="([^"]*)"')


class RecordingProxy:
    """``.url``/``.host``: where clients go; ``.seen``: the :class:`Seen` list; ``mark()``/``since(m)``
    cut it per step of a test."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.seen: list = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                proxy._forward(self)

            do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def mark(self) -> int:
        with self._lock:
            return len(self.seen)

    def since(self, mark: int) -> list:
        with self._lock:
            return list(self.seen[mark:])

    def _forward(self, h: BaseHTTPRequestHandler) -> None:
        n = int(h.headers.get("Content-Length") or 0)   # the only body is containerd's form: sized
        body = h.rfile.read(n) if n else b""
        # A list, not a dict: dockerd sends several Accept headers.
        headers = [(k, v) for k, v in h.headers.items() if k.lower() not in NOT_FORWARDED]
        conn = http.client.HTTPConnection("127.0.0.1", self.target_port, timeout=120)
        try:
            conn.putrequest(h.command, h.path, skip_host=True, skip_accept_encoding=True)
            for k, v in headers + ([("Content-Length", str(len(body)))] if body else []):
                conn.putheader(k, v)
            conn.endheaders(body or None)
            r = conn.getresponse()
            data = r.read()
            out = [(k, v) for k, v in r.getheaders() if k.lower() not in NOT_FORWARDED]
            length = r.getheader("Content-Length") if h.command == "HEAD" else str(len(data))
            status = r.status
            error = ERROR.search(r.getheader("WWW-Authenticate") or "")
        finally:
            conn.close()
        self._record(h, body, status, error.group(1) if error else "")
        h.send_response(status)
        for k, v in out:
            h.send_header(k, v)
        if length is not None:
            h.send_header("Content-Length", length)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)

    def _record(self, h: BaseHTTPRequestHandler, body: bytes, status: int, error: str) -> None:
        url = urlsplit(h.path)
        query = parse_qs(url.query, keep_blank_values=True)
        form = parse_qs(body.decode("latin-1"), keep_blank_values=True) \
            if h.command == "POST" and "form" in h.headers.get("Content-Type", "") else {}
        params = {k: " ".join(v) for src in (query, form) for k, v in src.items() if k in SHOWN}
        auth = h.headers.get("Authorization", "").split(" ", 1)[0]
        seen = Seen(h.command, url.path, tuple(sorted(query)), auth, params, tuple(sorted(form)), status, error)
        with self._lock:
            self.seen.append(seen)
