"""Host budgets with real processes: concurrent origin fetches capped whatever their reason."""
from __future__ import annotations

import threading
import time

import pytest

from layerswarm.bridge.format.digest import Digest
from tests.fixtures import origin_blob_gets
from tests.swarm.helpers import get, push_layer

pytestmark = pytest.mark.slow

MB = 1 << 20


def _all(url, blobs) -> list:
    out = [None] * len(blobs)

    def one(i):
        out[i] = get(url, blobs[i].digest)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(blobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    return out


def test_origin_fetches_are_capped_with_the_tracker_up(fleet, origin, proxy):
    """Three cold layers at once, --origin-fetches 1: one origin fetch at a time, each layer fetched once."""
    blobs = [push_layer(origin.url, 3 * MB, b"cap-%d" % i, tag=f"c{i}") for i in range(3)]
    fleet.origin_url = proxy.url
    proxy.rate = 6 * MB
    b = fleet.start_bridge("h0", "--origin-fetches", "1")
    for (status, body, err), blob in zip(_all(b.url, blobs), blobs):
        assert err is None and status == 200 and Digest.of_bytes(body) == blob.digest
    assert proxy.max_active == 1, proxy.max_active
    assert all(origin_blob_gets(origin).get(str(x.digest)) == 1 for x in blobs)


def test_a_request_past_the_cap_waits_then_gets_429(start_bridge, origin, proxy):
    """A plain mirror (private layers take this path too): the second GET waits for the first-byte
    timeout, then answers 429 with Retry-After instead of piling onto the origin."""
    slow, other = (push_layer(origin.url, 4 * MB, b"cap-slow", tag="slow"),
                   push_layer(origin.url, 1 * MB, b"cap-other", tag="other"))
    proxy.rate = MB // 4     # the first GET holds the only slot ~16 s
    b = start_bridge("--origin-fetches", "1", "--connect-timeout", "1", "--read-timeout", "2", upstream=proxy.url)
    first = threading.Thread(target=get, args=(b.url, slow.digest))
    first.start()
    while proxy.active == 0:
        time.sleep(0.05)
    t0 = time.monotonic()
    status, body, err = get(b.url, other.digest)
    waited = time.monotonic() - t0
    assert status == 429 and b"TOOMANYREQUESTS" in body, (status, body[:200])
    assert 7 <= waited < 20, waited           # first-byte timeout: read 2 + connect 1 + 5
    assert proxy.max_active == 1
    proxy.rate = 0
    first.join(60)
