"""Reading an HTTP request head off a raw socket, for the tests' misbehaving proxies."""
from __future__ import annotations

import socket


def read_request_head(c: socket.socket):
    """(request line, {lower-case header: value}, header lines, raw head bytes incl. any body start),
    or None when the client closed first."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = c.recv(65536)
        if not chunk:
            return None
        head += chunk
    lines = head.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    headers = {}
    for h in lines[1:]:
        k, _, v = h.partition(":")
        headers[k.strip().lower()] = v.strip()
    return lines[0], headers, lines[1:], head
