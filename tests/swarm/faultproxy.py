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
import time

from tests.httphead import LoopbackProxy, parse_head


class FaultProxy(LoopbackProxy):
    def __init__(self, target_url: str):
        host, _, port = target_url.split("//", 1)[1].partition(":")
        self.rate = 0
        self.status = None
        self.hang = False
        self.stall_after = None
        self.cut_after = None
        self.cuts_left = 0
        self.cut_mode = "close"
        self.active = self.max_active = 0  # blob GETs in flight, and the most at once
        super().__init__((host, int(port)))

    def blob_gets(self, digest) -> list:
        """Range header (or None) of every blob GET for ``digest`` that reached the proxy."""
        return [h.get("range") for line, h in self.requests
                if line.startswith("GET ") and f"/blobs/{digest}" in line]

    def serve(self, c, line, headers, header_lines, head, opened):
        rest = head.partition(b"\r\n\r\n")[2]
        blob_get = line.startswith("GET ") and "/blobs/" in line
        if blob_get and self.status:
            c.sendall(f"HTTP/1.1 {self.status} Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            return
        if blob_get and self.hang:
            self._stop.wait(300)
            return
        kept = [l for l in header_lines if not l.lower().startswith(("connection:", "keep-alive:"))]
        up = socket.create_connection(self.target, timeout=60)
        opened.append(up)
        up.sendall(("\r\n".join([line, *kept, "Connection: close"]) + "\r\n\r\n").encode("latin-1") + rest)
        self._count(blob_get, +1)
        finished = []

        def done() -> None:   # once: when the last body byte is sent, or the exchange ends otherwise
            if not finished:
                finished.append(True)
                self._count(blob_get, -1)
        try:
            self._respond(up, c, blob_get, done)
        finally:
            done()

    def _count(self, blob_get: bool, n: int) -> None:
        if blob_get:
            with self._lock:
                self.active += n
                self.max_active = max(self.max_active, self.active)

    def _respond(self, up: socket.socket, c: socket.socket, blob_get: bool, done) -> None:
        # A GET ends for ``active`` when its last body byte is sent: the client then gives its
        # slot back and may open the next GET while this thread still waits on the upstream.
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = up.recv(65536)
            if not data:
                c.sendall(buf)
                return
            buf += data
        hdr, _, body = buf.partition(b"\r\n\r\n")
        length = parse_head(buf)[1].get("content-length")
        length = int(length) if length is not None else None
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
                if blob_get and self.rate:
                    time.sleep(len(piece) / self.rate)
                c.sendall(piece)
                sent += len(piece)
                if length is not None and sent >= length:
                    done()
            body = up.recv(65536)
            if not body:
                return
