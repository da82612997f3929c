"""Bytes a swarm reader lets the download write to its client's socket, from the thread that verified them.

A streamed answer otherwise costs two thread hand-offs a piece: the alert thread
hands each verified piece to the reader's thread, which wakes up to write it.  When
the listener pumps an answer straight to a plain TCP socket (http/wsgi.py), it
offers that socket in the request's :class:`SocketSlot`.  A whole-blob swarm reader
(node/readers.py) then arms a :class:`SocketSink` on it, and the download's hash
cursor writes each piece as it hashes it, without blocking and never the last one
(that waits for the whole-blob verdict).  The reader's thread wakes only when the
socket is full, the last piece is due, or for its stall checks; it then yields a
:class:`Sent` marker (counted like bytes, never written again) and what the socket
did not take.
"""
from __future__ import annotations

import os
import socket

SLOT_KEY = "layerswarm.socket"   # the WSGI environ key of a request's SocketSlot (plain TCP listeners only)


class SocketSlot:
    """One request's socket, once the listener pumps the body to it itself (``fd``; None before, or never)."""

    __slots__ = ("fd",)

    def __init__(self) -> None:
        self.fd: int | None = None


class Sent:
    """``n`` bytes of the body that are on the socket already: counted as sent, not written again."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"Sent({self.n})"


class SocketSink:
    """The writing side: its own duplicate of the offered socket (the listener closes its own), written with
    MSG_DONTWAIT so the writing thread never waits for a client, whatever the socket's mode.  While
    ``armed`` it takes piece ``next``; ``sent`` counts the bytes it wrote since it was armed; ``rest`` is
    the tail of a piece the socket did not take, which the reader's thread sends."""

    def __init__(self, fd: int) -> None:
        self._sock: socket.socket | None = socket.socket(fileno=os.dup(fd))
        self.armed = False
        self.next = 0
        self.sent = 0
        self.rest: bytes | None = None

    def arm(self, piece: int) -> None:
        self.armed, self.next, self.sent, self.rest = True, piece, 0, None

    def push(self, buf: bytes) -> bool:
        """Write piece ``next``; False, disarmed with the unsent tail in ``rest``, when the socket did not
        take it all (full; or failed, and the reader's own write of the rest meets the error)."""
        try:
            n = self._sock.send(buf, socket.MSG_DONTWAIT)
        except OSError:   # BlockingIOError: a slow client; anything else is reported by the reader's write
            n = 0
        self.sent += n
        self.next += 1
        if n == len(buf):
            return True
        self.rest = buf[n:]
        self.armed = False
        return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
