"""Client of other bridges' relay endpoint: stream a blob they are fetching, from an offset.

``GET <url>/_layerswarm/relay/<digest>?offset=N`` answers the bytes from N
on and the whole blob's size in ``X-Layerswarm-Size``.  Relays whose bytes
once failed the digest are remembered and never asked again.
"""
from __future__ import annotations

import threading
from typing import Iterator

import requests

from layerswarm.bridge.format.digest import Digest
from layerswarm.bridge.format.errors import UpstreamError

CHUNK = 1 << 20
SIZE_HEADER = "X-Layerswarm-Size"
RELAY_PATH = "/_layerswarm/relay/"


class RelayClient:
    def __init__(self, connect_timeout: float, relay_timeout: float):
        self.connect_timeout = connect_timeout
        self.relay_timeout = relay_timeout   # no bytes this long -> the read fails (fail over)
        self._lock = threading.Lock()
        self._bad: set = set()

    def open(self, url: str, digest: Digest, offset: int) -> tuple:
        """(blob size, iterator of the bytes from ``offset``); UpstreamError when the relay cannot serve."""
        r = requests.get(f"{url.rstrip('/')}{RELAY_PATH}{digest}", params={"offset": offset},
                         stream=True, timeout=(self.connect_timeout, self.relay_timeout))
        if r.status_code != 200:
            r.close()
            raise UpstreamError(f"relay answered {r.status_code}")
        try:
            size = int(r.headers[SIZE_HEADER])
        except (KeyError, ValueError):
            r.close()
            raise UpstreamError("relay answer without a size") from None
        return size, _body(r)

    def is_bad(self, url: str) -> bool:
        with self._lock:
            return url in self._bad

    def mark_bad(self, urls) -> None:
        """Their bytes failed the digest: never use them again."""
        with self._lock:
            self._bad.update(urls)


def _body(r) -> Iterator[bytes]:
    try:
        yield from r.iter_content(CHUNK)
    finally:
        r.close()
