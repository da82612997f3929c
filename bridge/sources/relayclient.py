"""Client of other bridges' relay endpoint: stream a blob they are fetching, from an offset.

``GET <url>/_layerswarm/relay/<digest>?offset=N`` answers the bytes from N
on and the whole blob's size in ``X-Layerswarm-Size``.  Relays whose bytes
once failed the digest (or who lied about the size) are remembered and never
asked again.  A relay that trickles is dropped: over every ``relay_timeout``
window it must send at least ``min_rate`` bytes per second, and the whole
rest within ``relay_timeout`` + rest / ``min_rate`` seconds.
"""
from __future__ import annotations

import socket
import ssl
import threading
import time
from typing import Iterator

import requests

from layerswarm.bridge.format.digest import Digest
from layerswarm.bridge.format.errors import UpstreamError

CHUNK = 1 << 20
# A read waits until this much has arrived (SO_RCVLOWAT), or the rest of the blob when that is less: a
# relay's bytes come through shaped links a few packets at a time, and every read costs this host a
# file write, a hash update and a wake-up of its readers (and of the relay's children) whatever its size.
# Not the first read: the blob's first bytes go on at once (each hop of a relay chain would otherwise add
# LOW_WATER at the relay's rate to its clients' first byte).  Plain TCP only: over TLS a read returns one
# record whatever the socket holds.
LOW_WATER = 64 << 10
SIZE_HEADER = "X-Layerswarm-Size"
RELAY_PATH = "/_layerswarm/relay/"


class RelayClient:
    def __init__(self, connect_timeout: float, relay_timeout: float, min_rate: int = 0, clock=time.monotonic,
                 tls=None):
        """``tls``: the host's FleetTLS in secure fleet mode (relays are other hosts' fleet listeners)."""
        self.connect_timeout = connect_timeout
        self.relay_timeout = relay_timeout   # no bytes this long -> the read fails (fail over)
        self.min_rate = min_rate             # bytes/s over each relay_timeout window (0: no floor)
        self.clock = clock
        self._lock = threading.Lock()
        self._bad: set = set()
        self._http = requests.Session()
        # Per request, not on the session: requests lets REQUESTS_CA_BUNDLE override a session's verify.
        self._tls_options = tls.requests_options() if tls is not None else {}

    def open(self, url: str, digest: Digest, offset: int) -> tuple:
        """(blob size, iterator of the bytes from ``offset``); UpstreamError when the relay cannot serve."""
        try:
            r = self._http.get(f"{url.rstrip('/')}{RELAY_PATH}{digest}", params={"offset": offset},
                               stream=True, timeout=(self.connect_timeout, self.relay_timeout), **self._tls_options)
        except requests.RequestException as exc:
            raise UpstreamError(f"relay unreachable: {exc.__class__.__name__}") from None
        if r.status_code != 200:
            r.close()
            raise UpstreamError(f"relay answered {r.status_code}")
        try:
            size = int(r.headers[SIZE_HEADER])
        except (KeyError, ValueError):
            r.close()
            raise UpstreamError("relay answer without a size") from None
        # The overall deadline: the whole rest at the floor rate, plus one window of slack.
        deadline = (self.clock() + self.relay_timeout + max(0, size - offset) / self.min_rate
                    if self.min_rate else None)
        return size, self._body(r, deadline, max(0, size - offset))

    def is_bad(self, url: str) -> bool:
        with self._lock:
            return url in self._bad

    def mark_bad(self, urls) -> None:
        """Their bytes failed the digest: never use them again."""
        with self._lock:
            self._bad.update(urls)

    def _body(self, r, deadline: float | None, left: int | None = None) -> Iterator[bytes]:
        """The relay's bytes as they arrive (``read1``: a trickle cannot hide in a long read), after the first
        read in reads of at least LOW_WATER bytes (or the ``left`` bytes still to come) when the socket can
        be told so."""
        window, floor = self.relay_timeout, self.min_rate * self.relay_timeout
        started, got = self.clock(), 0
        low_water = _LowWater(r, left)
        try:
            while True:
                chunk = r.raw.read1(CHUNK)
                if not chunk:
                    return
                low_water.after_read(len(chunk))
                got += len(chunk)
                yield chunk
                now = self.clock()
                if deadline is not None and now > deadline:
                    raise UpstreamError("relay missed its overall deadline")
                if now - started >= window:
                    if got < floor:
                        raise UpstreamError(f"relay too slow: {got} bytes in {now - started:.0f}s")
                    started, got = now, 0
        finally:
            low_water.reset()
            r.close()


class _LowWater:
    """SO_RCVLOWAT on a response's socket, set after each read for the next: min(LOW_WATER, what is left to
    come); the first read keeps the kernel's default.  A relay that sends less than that within
    relay_timeout fails the read, as a silent one does."""

    def __init__(self, r, left: int | None):
        sock = getattr(getattr(r.raw, "connection", None), "sock", None)
        plain = isinstance(sock, socket.socket) and not isinstance(sock, ssl.SSLSocket)
        self.sock = sock if plain and left is not None else None
        self.left = left or 0
        self.set_to = 1   # the kernel's default

    def after_read(self, n: int) -> None:
        self.left -= n
        self._set(max(1, min(LOW_WATER, self.left)))

    def reset(self) -> None:
        """The kernel's default again, whatever becomes of the connection."""
        self._set(1)

    def _set(self, want: int) -> None:
        if self.sock is None or want == self.set_to:
            return
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)
            self.set_to = want
        except OSError:   # closed under us: the read reports it
            self.sock = None
