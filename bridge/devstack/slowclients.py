"""Slow-loris clients for the tests and benchmarks: a crowd of connections that send a request a byte at a time."""
from __future__ import annotations

import select
import socket
import threading
import time


class SlowClients:
    """``n`` connections to ``host:port`` that each send ``head`` and then one more byte every ``every`` seconds.

    A context manager; iterating it gives the sockets.  A socket the server closed stays in the crowd
    (its sends fail quietly) unless ``reconnect``: then it is replaced within a second, as an attacker's
    would be, so a server that closes incomplete requests after a while still faces ``n`` of them.
    """

    def __init__(self, host: str, port: int, n: int = 500, every: float = 10.0, head: bytes = b"GET /v2/",
                 reconnect: bool = False):
        self.address, self.n, self.every, self.head, self.reconnect = (host, port), n, every, head, reconnect
        self.socks: list = []
        self.reconnects = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drip, name="slow-loris", daemon=True)

    def __enter__(self) -> SlowClients:
        try:
            for _ in range(self.n):
                self.socks.append(self._connect())
        except BaseException:
            self.close()
            raise
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self):
        return iter(list(self.socks))

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        with self._lock:
            for s in self.socks:
                s.close()

    def held(self) -> int:
        """Connections the server has neither answered nor closed."""
        with self._lock:
            return len(self.socks) - len(self._finished())

    def _connect(self) -> socket.socket:
        s = socket.create_connection(self.address, timeout=5)
        s.sendall(self.head)
        return s

    def _finished(self) -> set:
        """Indexes of the sockets with something to read: an answer, or the server's close."""
        poll = select.poll()
        for s in self.socks:
            if s.fileno() >= 0:
                poll.register(s, select.POLLIN)
        by_fd = {s.fileno(): i for i, s in enumerate(self.socks)}
        return {by_fd[fd] for fd, _ in poll.poll(0)} | {i for i, s in enumerate(self.socks) if s.fileno() < 0}

    def _drip(self) -> None:
        # A closed connection is replaced within a second (reconnect), not at the next drip.
        step = min(self.every, 1.0) if self.reconnect else self.every
        last = time.monotonic()
        while not self._stop.wait(step):
            with self._lock:
                if self.reconnect:
                    self._replace_finished()
                if time.monotonic() - last < self.every - 0.01:
                    continue
                last = time.monotonic()
                for s in self.socks:
                    try:
                        s.sendall(b"A")
                    except OSError:
                        pass

    def _replace_finished(self) -> None:
        for i in self._finished():
            self.socks[i].close()
            try:
                self.socks[i] = self._connect()
                self.reconnects += 1
            except OSError:
                pass   # stays closed; tried again at the next step
