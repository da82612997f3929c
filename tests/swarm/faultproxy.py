"""A loopback HTTP proxy in front of the origin that misbehaves on blob GETs, on demand.

Every request gets ``Connection: close`` so each one is seen (and recorded in
``requests``).  Blob GET responses obey the current settings:

* ``rate``       bytes/s of body (0 = full speed): makes an origin fetch slow enough to kill things "mid";
* ``status``     answer with this status and no body (origin 5xx);
* ``hang``       send nothing at all (the read timeout must fire);
* ``stall_after`` send the headers and this many body bytes, then nothing (read timeout mid-body);
* ``cut_after``  send the headers and this many body bytes, then close (``cut_mode="close"``) or
  go silent (``"stall"``); ``cuts_left`` times.
"""
from __future__ import annotations

import socket
import threading
import time

from tests.httphead import read_request_head


class FaultProxy:
    def __init__(self, target_url: str):
        host, _, port = target_url.split("//", 1)[1].partition(":")
        self.target = (host, int(port))
        self.rate = 0
        self.status = None
        self.hang = False
        self.stall_after = None
        self.cut_after = None
        self.cuts_left = 0
        self.cut_mode = "close"
        self.requests: list = []  # (request line, {header: value})
        self.active = self.max_active = 0  # blob GETs in flight, and the most at once
        self._lock = threading.Lock()
        self._conns: list = []
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def blob_gets(self, digest) -> list:
        """Range header (or None) of every blob GET for ``digest`` that reached the proxy."""
        return [h.get("range") for line, h in self.requests
                if line.startswith("GET ") and f"/blobs/{digest}" in line]

    def close(self) -> None:
        self._stop.set()
        for s in [self._sock, *self._conns]:
            try:
                s.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                c, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(c)
            threading.Thread(target=self._handle, args=(c,), daemon=True).start()

    def _handle(self, c: socket.socket) -> None:
        up = None
        try:
            got = read_request_head(c)
            if got is None:
                return
            line, headers, header_lines, head = got
            rest = head.partition(b"\r\n\r\n")[2]
            lines = [line, *header_lines]
            with self._lock:
                self.requests.append((lines[0], headers))
            blob_get = lines[0].startswith("GET ") and "/blobs/" in lines[0]
            if blob_get and self.status:
                c.sendall(f"HTTP/1.1 {self.status} Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
                return
            if blob_get and self.hang:
                self._stop.wait(300)
                return
            kept = [l for l in lines[1:] if not l.lower().startswith(("connection:", "keep-alive:"))]
            up = socket.create_connection(self.target, timeout=60)
            up.sendall(("\r\n".join([lines[0], *kept, "Connection: close"]) + "\r\n\r\n").encode("latin-1") + rest)
            self._count(blob_get, +1)
            try:
                self._respond(up, c, blob_get)
            finally:
                self._count(blob_get, -1)
        except OSError:
            pass
        finally:
            for s in (c, up):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass

    def _count(self, blob_get: bool, n: int) -> None:
        if blob_get:
            with self._lock:
                self.active += n
                self.max_active = max(self.max_active, self.active)

    def _respond(self, up: socket.socket, c: socket.socket, blob_get: bool) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = up.recv(65536)
            if not data:
                c.sendall(buf)
                return
            buf += data
        hdr, _, body = buf.partition(b"\r\n\r\n")
        c.sendall(hdr + b"\r\n\r\n")
        limit, cut = None, False
        if blob_get:
            with self._lock:
                if self.cut_after is not None and self.cuts_left > 0:
                    self.cuts_left -= 1
                    limit, cut = self.cut_after, self.cut_mode == "close"
                elif self.stall_after is not None:
                    limit = self.stall_after
        sent = 0
        while True:
            for i in range(0, len(body), 16384):
                piece = body[i:i + 16384]
                if limit is not None and sent + len(piece) >= limit:
                    c.sendall(piece[:limit - sent])
                    if cut:
                        c.shutdown(socket.SHUT_RDWR)
                    else:
                        self._stop.wait(300)
                    return
                c.sendall(piece)
                sent += len(piece)
                if blob_get and self.rate:
                    time.sleep(len(piece) / self.rate)
            body = up.recv(65536)
            if not body:
                return
