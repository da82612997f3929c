"""A loopback TCP proxy a Redis replica reaches its primary through, which can stop the primary's stream.

Redis replicates asynchronously: a write the primary acknowledged can be lost
when it fails before its replicas got it.  On loopback that window is far too
short to hit on purpose, so a test puts this link between the replica and the
primary and calls :meth:`hold`: from then on nothing the primary sends is read
(the replica sees a quiet but open link, its acknowledgements still pass), so
every later write exists on the primary only, until the primary is killed.
"""
from __future__ import annotations

import socket
import threading


class ReplicaLink:
    def __init__(self, primary_port: int):
        self.primary_port = primary_port
        self.held = threading.Event()
        self._socks: list = []
        self._listen = socket.socket()
        self._listen.bind(("127.0.0.1", 0))
        self._listen.listen(8)
        self.port = self._listen.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self) -> None:
        """Stop passing what the primary sends on (for good: a stream with a gap is no stream)."""
        self.held.set()

    def close(self) -> None:
        for s in [self._listen, *self._socks]:
            try:
                s.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while True:
            try:
                replica, _ = self._listen.accept()
                primary = socket.create_connection(("127.0.0.1", self.primary_port), timeout=5)
            except OSError:
                return
            primary.settimeout(None)
            self._socks += [replica, primary]
            threading.Thread(target=self._pump, args=(replica, primary, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(primary, replica, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_primary: bool) -> None:
        try:
            while True:
                if from_primary and self.held.is_set():
                    threading.Event().wait()   # never read again: the bytes stay with the primary
                data = src.recv(65536)
                if not data:
                    break
                if from_primary and self.held.is_set():
                    continue   # read before the hold, arrived after it: dropped too
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
