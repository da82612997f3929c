"""A loopback TCP proxy that cuts the first response to one blob GET mid-body.

Put it between a real client (dockerd) and the bridge to see what the client
does with a blob that stops half-way: dockerd resumes with
``Range: bytes=N-`` and needs a 206 back.  Every request head that passes is
recorded (``requests``) so tests can assert on what the client sent.
"""
from __future__ import annotations

import socket
import threading

from tests.httphead import LoopbackProxy


class CutProxy(LoopbackProxy):
    def __init__(self, target_port: int, cut_digest: str, cut_after: int):
        self.cut_digest = cut_digest
        self.cut_after = cut_after
        self.cuts = 0
        super().__init__(("127.0.0.1", target_port))

    def ranges_for(self, digest: str) -> list:
        return [h.get("range") for line, h in self.requests if digest in line and h.get("range")]

    def serve(self, c, line, headers, header_lines, head, opened):
        with self._lock:
            cut = (line.startswith("GET ") and f"/blobs/{self.cut_digest}" in line
                   and "range" not in headers and self.cuts == 0)
            if cut:
                self.cuts += 1
        up = socket.create_connection(self.target, timeout=60)
        opened.append(up)
        up.sendall(head)
        threading.Thread(target=self._pipe, args=(c, up), daemon=True).start()  # request body, if any
        self._respond(up, c, self.cut_after if cut else None)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    return
                dst.sendall(data)
        except OSError:
            return

    @staticmethod
    def _respond(up: socket.socket, c: socket.socket, cut_after) -> None:
        buf = b""
        header_done = False
        body = 0
        while True:
            data = up.recv(65536)
            if not data:
                return
            if cut_after is None:
                c.sendall(data)
                continue
            if not header_done:
                buf += data
                if b"\r\n\r\n" not in buf:
                    continue
                hdr, _, rest = buf.partition(b"\r\n\r\n")
                c.sendall(hdr + b"\r\n\r\n")
                header_done = True
                data = rest
            take = data[: max(0, cut_after - body)]
            c.sendall(take)
            body += len(take)
            if body >= cut_after:
                c.shutdown(socket.SHUT_RDWR)  # the connection drops mid-body
                return
