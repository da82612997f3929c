"""Faults on the origin/relay path, with real processes: every pull ends with the right digest
(or a clear error in bounded time when the origin itself is down), and no partial or wrong blob
is ever served as complete or left in a store.

The origin sits behind a :class:`FaultProxy` (tests/swarm/faultproxy.py) that throttles blob
bodies so faults can be injected "mid-fetch", or answers 5xx, hangs, stalls or cuts.
"""
from __future__ import annotations

import signal
import threading
import time

import pytest
import requests

from layerswarm.bridge.format.digest import Digest
from tests.fixtures import origin_blob_gets, stats, wait_for
from tests.swarm.helpers import assert_store_clean, fetched, get, push_layer, store_files

pytestmark = pytest.mark.slow

MB = 1 << 20
RATE = 2 * MB  # throttled origin: an 8 MiB layer takes ~4 s


def _bg(fn, *args):
    out = {}
    t = threading.Thread(target=lambda: out.update(r=fn(*args)), daemon=True)
    t.start()
    out["thread"] = t
    return out


def _result(job, timeout=120):
    job["thread"].join(timeout)
    assert "r" in job, "client did not finish"
    return job["r"]


def _ok(result, blob):
    status, body, err = result
    assert err is None and status == 200, (status, len(body), err)
    assert Digest.of_bytes(body) == blob.digest


def _gets(origin, blob) -> int:
    return origin_blob_gets(origin).get(str(blob.digest), 0)


# -- 2. the lease holder dies mid-fetch ------------------------------------
@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
def test_lease_holder_killed_mid_fetch_relays_fail_over(fleet, origin, proxy, how):
    """SIGKILL: the relay connections reset at once; SIGSTOP (a hung host): the relay timeout fires."""
    blob = push_layer(origin.url, 8 * MB, b"holder-" + how.encode())
    fleet.origin_url = proxy.url
    proxy.rate = RATE
    h0, h1, h2 = (fleet.start_bridge(f"h{i}", "--relay-timeout", "3") for i in range(3))
    first = _bg(get, h0.url, blob.digest)
    wait_for(lambda: fetched(h0, "origin") > MB, 30, "the holder fetching")
    jobs = [_bg(get, b.url, blob.digest) for b in (h1, h2)]
    # Both must be following the holder before it dies (a loaded CI starts them slowly).
    wait_for(lambda: fetched(h1, "relay") > 0 and fetched(h2, "relay") > 0, 30, "relays following the holder")
    t0 = time.monotonic()
    h0.signal(getattr(signal, how))
    for j in jobs:
        _ok(_result(j), blob)
    took = time.monotonic() - t0
    h0.kill()
    status, body, err = _result(first)
    assert err is not None and Digest.of_bytes(body) != blob.digest  # its client was cut, never served wrong
    # The holder's children go on from the origin; a host relaying from one of them (the tracker puts
    # h2 under h1 when h0 already uploads) may keep following it: every byte came once, from one of the two.
    got = [stats(b)["fetched"] for b in (h1, h2)]
    for f, b in zip(got, (h1, h2)):
        assert f["relay"] > 0 and f["relay"] + f["origin"] == len(blob.data), f
        assert_store_clean(b.store, [blob.digest])
    assert got[0]["origin"] > 0 or got[1]["origin"] > 0, got
    # The holder's partial GET plus at most one ranged continuation per relay.
    ranges = [r for r in proxy.blob_gets(blob.digest) if r]
    assert 1 <= len(ranges) <= 2 and all(r.startswith("bytes=") and r.endswith("-") for r in ranges), ranges
    assert _gets(origin, blob) <= 3
    assert took < 3 + 15, took
    print(f"holder {how}: relays done {took:.1f}s later")


# -- 3. the tracker dies mid-rollout -----------------------------------------
def test_tracker_killed_mid_rollout(fleet, origin, proxy, tracker):
    blob = push_layer(origin.url, 8 * MB, b"tracker-killed")
    fleet.origin_url = proxy.url
    proxy.rate = RATE
    bridges = [fleet.start_bridge(f"h{i}") for i in range(3)]
    jobs = [_bg(get, b.url, blob.digest) for b in bridges]
    wait_for(lambda: sum(fetched(b, "relay") for b in bridges) > MB, 30, "relays under way")
    tracker.kill()
    for j in jobs:
        _ok(_result(j), blob)
    assert _gets(origin, blob) == 1  # relays need no tracker once the tree is set up
    got = [stats(b)["fetched"] for b in bridges]
    assert sum(f["origin"] for f in got) == len(blob.data) and sum(f["relay"] for f in got) == 2 * len(blob.data)
    for b in bridges:
        assert_store_clean(b.store, [blob.digest])
    # A bridge arriving with the tracker down goes to the origin (jittered, capped) and is right.
    late = fleet.start_bridge("late")
    _ok(get(late.url, blob.digest), blob)
    assert _gets(origin, blob) == 2 and fetched(late, "origin") == len(blob.data)
    assert_store_clean(late.store, [blob.digest])


def test_tracker_down_caps_concurrent_origin_fetches(fleet, origin, proxy, tracker):
    blobs = [push_layer(origin.url, 3 * MB, b"slots-%d" % i, tag=f"s{i}") for i in range(3)]
    fleet.origin_url = proxy.url
    proxy.rate = 6 * MB
    b = fleet.start_bridge("h0", "--origin-slots", "1")
    tracker.kill()
    t0 = time.monotonic()
    jobs = [_bg(get, b.url, x.digest) for x in blobs]
    for j, x in zip(jobs, blobs):
        _ok(_result(j), x)
    assert proxy.max_active == 1, proxy.max_active
    for x in blobs:
        assert _gets(origin, x) == 1
    assert_store_clean(b.store, [x.digest for x in blobs])
    print(f"tracker down, 1 origin slot: 3 x 3 MiB in {time.monotonic() - t0:.1f}s")


def test_silent_tracker_costs_one_timeout_not_one_per_request(fleet, origin, tracker):
    blobs = [push_layer(origin.url, 2 * MB, b"silent-tracker-%d" % i, tag=f"t{i}") for i in range(3)]
    b = fleet.start_bridge("h0", "--connect-timeout", "2")  # tracker timeout = connect timeout + 5
    tracker.signal(signal.SIGSTOP)  # connections are accepted by the kernel, never answered
    try:
        t0 = time.monotonic()
        _ok(get(b.url, blobs[0].digest), blobs[0])
        first = time.monotonic() - t0
        t0 = time.monotonic()
        for x in blobs[1:]:
            _ok(get(b.url, x.digest), x)
        rest = time.monotonic() - t0
    finally:
        tracker.signal(signal.SIGCONT)
    assert first < 7 + 10 and rest < 2 * 5, (first, rest)
    assert_store_clean(b.store, [x.digest for x in blobs])
    print(f"silent tracker: first pull {first:.1f}s, next two {rest:.1f}s")


# -- 4. origin faults --------------------------------------------------------
def test_origin_5xx_is_a_quick_clear_error_and_nothing_is_cached(fleet, origin, proxy):
    blob = push_layer(origin.url, 3 * MB, b"origin-5xx")
    fleet.origin_url = proxy.url
    b = fleet.start_bridge("h0")
    proxy.status = 500
    t0 = time.monotonic()
    status, body, err = get(b.url, blob.digest)
    took = time.monotonic() - t0
    assert status == 502 and b"errors" in body and took < 10, (status, body[:200], took)
    assert_store_clean(b.store, [])
    proxy.status = None
    _ok(get(b.url, blob.digest), blob)
    assert_store_clean(b.store, [blob.digest])


def test_origin_silent_answers_504_within_the_read_timeout(fleet, origin, proxy):
    blob = push_layer(origin.url, 3 * MB, b"origin-hang")
    fleet.origin_url = proxy.url
    b = fleet.start_bridge("h0", "--read-timeout", "3")
    proxy.hang = True
    t0 = time.monotonic()
    status, body, err = get(b.url, blob.digest)
    took = time.monotonic() - t0
    assert status == 504 and took < 3 * 3, (status, body[:200], took)
    assert_store_clean(b.store, [])
    print(f"silent origin: 504 after {took:.1f}s (read timeout 3s)")


def test_origin_down_for_a_cold_layer_fails_fast_and_clean(fleet, origin, proxy):
    """Before the first byte: a clear 5xx; mid-blob: a cut connection (never a short 200 body)."""
    a = push_layer(origin.url, 6 * MB, b"origin-down-a")
    b_ = push_layer(origin.url, 6 * MB, b"origin-down-b", tag="v2")
    fleet.origin_url = proxy.url
    proxy.rate = RATE
    br = fleet.start_bridge("h0")
    job = _bg(get, br.url, a.digest)
    wait_for(lambda: fetched(br, "origin") > MB, 30, "the fetch under way")
    t0 = time.monotonic()
    origin.kill()
    status, body, err = _result(job)
    mid = time.monotonic() - t0
    assert err is not None and len(body) < len(a.data) and mid < 10, (status, len(body), err, mid)
    t0 = time.monotonic()
    status, body, err = get(br.url, b_.digest)
    cold = time.monotonic() - t0
    assert status in (502, 503) and b"errors" in body and cold < 10, (status, body[:200], cold)
    assert_store_clean(br.store, [])
    print(f"origin down: mid-blob cut after {mid:.1f}s, cold answer {status} after {cold:.1f}s")


@pytest.mark.parametrize("mode", ["close", "stall"])
def test_origin_cut_or_stalled_mid_blob_is_resumed_with_range(fleet, origin, proxy, mode):
    blob = push_layer(origin.url, 6 * MB, b"origin-cut-" + mode.encode())
    fleet.origin_url = proxy.url
    b = fleet.start_bridge("h0", "--read-timeout", "3")
    proxy.cut_after, proxy.cuts_left, proxy.cut_mode = 2 * MB, 1, mode
    t0 = time.monotonic()
    _ok(get(b.url, blob.digest), blob)
    took = time.monotonic() - t0
    gets = proxy.blob_gets(blob.digest)
    assert len(gets) == 2 and gets[0] is None and gets[1].startswith("bytes=") and int(gets[1][6:-1]) >= MB, gets
    assert fetched(b, "origin") == len(blob.data)
    assert_store_clean(b.store, [blob.digest])
    if mode == "stall":
        assert took < 3 * 4, took
    print(f"origin {mode} mid-blob: resumed with {gets[1]}, done in {took:.1f}s")


# -- 7. a bridge killed mid-download and restarted on the same store --------
def test_bridge_killed_mid_fetch_restarts_clean(fleet, origin, proxy):
    blob = push_layer(origin.url, 8 * MB, b"restart")
    fleet.origin_url = proxy.url
    proxy.rate = RATE
    b = fleet.start_bridge("h0")
    job = _bg(get, b.url, blob.digest)
    wait_for(lambda: fetched(b, "origin") > 2 * MB, 30, "fetch under way")
    b.kill()
    status, body, err = _result(job)
    assert err is not None and len(body) < len(blob.data)
    assert store_files(b.store)["incoming"], "expected a partial in incoming/ to test the restart with"
    proxy.rate = 0
    b2 = fleet.start_bridge("h0", store=b.store)
    assert not store_files(b2.store)["incoming"] and not store_files(b2.store)["layers"]  # partial dropped
    _ok(get(b2.url, blob.digest), blob)
    assert_store_clean(b2.store, [blob.digest])


# -- 8. the store's disk is full (small_disk: an 8 MiB tmpfs, fixtures) --------
def test_disk_full_store_passes_origin_bytes_through(small_disk, fleet, origin):
    blob = push_layer(origin.url, 12 * MB, b"disk-full")
    b = fleet.start_bridge("h0", store=small_disk)
    _ok(get(b.url, blob.digest), blob)
    assert_store_clean(small_disk, [])
    _ok(get(b.url, blob.digest), blob)  # and again: still right, still nothing partial
    assert_store_clean(small_disk, [])
    s = stats(b)
    assert s["blob_bytes"]["origin"] == 2 * len(blob.data) and s["blob_bytes"]["store"] == 0, s
    assert 2 <= _gets(origin, blob) <= 4  # per pull: the fetch that hit ENOSPC + the ranged rest
    small = push_layer(origin.url, 2 * MB, b"fits", tag="v2")
    _ok(get(b.url, small.digest), small)  # the store still works for what fits
    assert_store_clean(small_disk, [small.digest])


# -- 9. a client leaving mid-stream ---------------------------------------------
def test_client_leaving_does_not_stop_the_fetch(fleet, origin, proxy):
    blob = push_layer(origin.url, 8 * MB, b"client-leaves")
    fleet.origin_url = proxy.url
    proxy.rate = RATE
    b = fleet.start_bridge("h0")
    with requests.get(f"{b.url}/v2/library/app/blobs/{blob.digest}", stream=True, timeout=60) as r:
        assert r.status_code == 200
        got = r.raw.read(MB)
        assert got == blob.data[:MB]
    wait_for(lambda: str(blob.digest) in store_files(b.store)["layers"], 60, "the fetch to finish")
    _ok(get(b.url, blob.digest), blob)
    s = stats(b)
    assert s["blob_bytes"]["store"] == len(blob.data) and s["fetched"]["origin"] == len(blob.data)
    assert _gets(origin, blob) == 1
    assert_store_clean(b.store, [blob.digest])


# -- a relay source sending wrong bytes --------------------------------------------
class _EvilRelay:
    """Takes the lease for a digest at the tracker and relays flipped bytes to whoever asks."""

    def __init__(self, data: bytes):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import parse_qs, urlsplit
        evil = bytes(b ^ 0x33 for b in data)
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits += 1
                offset = int(parse_qs(urlsplit(self.path).query).get("offset", ["0"])[0])
                body = evil[offset:]
                self.send_response(200)
                self.send_header("X-Layerswarm-Size", str(len(evil)))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_relay_sending_wrong_bytes_is_cut_and_not_used_again(fleet, origin, tracker):
    blob = push_layer(origin.url, 3 * MB, b"evil-relay")
    evil = _EvilRelay(blob.data)
    try:
        r = requests.post(f"{tracker.url}/leases/{blob.digest}", timeout=10,
                          json={"host": "evil", "url": evil.url, "ttl": 60})
        assert r.status_code == 201 and r.json()["role"] == "holder", r.text
        b = fleet.start_bridge("h0")
        status, body, err = get(b.url, blob.digest)
        assert evil.hits >= 1 and err is not None and len(body) < len(blob.data), (status, len(body), err)
        assert_store_clean(b.store, [])
        # The lease still names the evil relay; this bridge no longer believes it.
        _ok(get(b.url, blob.digest), blob)
        assert _gets(origin, blob) == 1 and fetched(b, "origin") == len(blob.data)
        assert_store_clean(b.store, [blob.digest])
    finally:
        evil.close()
