"""Reading an HTTP request head off a raw socket, for the tests' misbehaving proxies."""
from __future__ import annotations

import socket
import threading


def read_request_head(c: socket.socket):
    """(request line, {lower-case header: value}, header lines, raw head bytes incl. any body start),
    or None when the client closed first."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = c.recv(65536)
        if not chunk:
            return None
        head += chunk
    line, headers, lines = parse_head(head)
    return line, headers, lines, head


def parse_head(head: bytes):
    """(start line, {lower-case header: value}, header lines) of an HTTP request or response head."""
    lines = head.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    headers = {}
    for h in lines[1:]:
        k, _, v = h.partition(":")
        headers[k.strip().lower()] = v.strip()
    return lines[0], headers, lines[1:]


class LoopbackProxy:
    """A TCP proxy on 127.0.0.1 in front of ``target`` (host, port): accepts connections, reads each
    request head, records it in ``requests`` and hands the connection to ``serve`` (subclasses decide
    how to misbehave); closes both sockets afterwards."""

    def __init__(self, target: tuple):
        self.target = target
        self.requests: list = []  # (request line, {header: value})
        self._lock = threading.Lock()
        self._conns: list = []
        self._stop = threading.Event()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def serve(self, c: socket.socket, line: str, headers: dict, header_lines: list, head: bytes,
              opened: list) -> None:
        """Answer one request; sockets it opens go in ``opened`` and are closed with ``c``."""
        raise NotImplementedError

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
        opened = [c]
        try:
            got = read_request_head(c)
            if got is None:
                return
            line, headers, header_lines, head = got
            with self._lock:
                self.requests.append((line, headers))
            self.serve(c, line, headers, header_lines, head, opened)
        except OSError:
            pass
        finally:
            for s in opened:
                try:
                    s.close()
                except OSError:
                    pass
