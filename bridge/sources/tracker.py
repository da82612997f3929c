"""The tracker as the swarm source sees it: metainfo and leases behind a back-off.

The client fails over between the tracker's replicas itself (node/trackerclient.py),
so a failure here means no replica answered.  Then every call is skipped for
``backoff`` seconds, so a silent (blackholed) tracker costs one timeout, not
one per request.
"""
from __future__ import annotations

import logging
import time

from layerswarm.bridge.format.digest import Digest
from layerswarm.bridge.format.errors import TrackerUnavailable

log = logging.getLogger("layerswarm.swarm")


class TrackerBackoff:
    """Wraps a TrackerClient's ``get_metainfo`` and lease calls; a failure starts the back-off."""

    def __init__(self, client, backoff: float, clock=time.monotonic):
        self.client = client
        self.backoff = backoff
        self._clock = clock
        self._retry_at = 0.0

    def down(self) -> bool:
        """True for ``backoff`` seconds after every replica failed."""
        return self._clock() < self._retry_at

    def failed(self) -> None:
        self._retry_at = self._clock() + self.backoff

    def metainfo(self, d: Digest) -> tuple:
        """(the published torrent or None, tracker down?)."""
        if self.down():
            return None, True
        try:
            return self.client.get_metainfo(d), False
        except TrackerUnavailable as exc:
            log.warning("tracker unavailable (%s): %s goes to the origin", exc, d)
            self.failed()
            return None, True

    def lease(self, d: Digest, url: str, ttl: float) -> dict:
        return self._call(self.client.lease, d, url, ttl)

    def renew_lease(self, d: Digest, ttl: float) -> None:
        self._call(self.client.renew_lease, d, ttl)

    def release_lease(self, d: Digest) -> None:
        self._call(self.client.release_lease, d)

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except TrackerUnavailable:
            self.failed()
            raise
