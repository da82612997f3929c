"""The swarm source's decisions, in-process: store, swarm, lease holder, relay, origin fallbacks."""
from __future__ import annotations

import threading

import pytest

from layerswarm.bridge.format.digest import Digest
from layerswarm.bridge.format.directsend import SocketSlot
from layerswarm.bridge.format.errors import DigestMismatch, StoreFull, SwarmError, UpstreamError
from layerswarm.bridge.format.names import ByteRange
from dataclasses import replace

from tests.fixtures import wait_for
from tests.sources.fakes import FakeRelays, FakeSwarm, Host, blob, torrent

SIZE = 600_000


def test_store_hit_asks_nobody(tmp_path):
    d, data = blob(SIZE)
    h = Host(tmp_path, {d: data})
    w = h.store.writer(d, len(data))
    w.write(data)
    w.commit()
    res, body = h.get(d, ByteRange(10, 99))
    assert res.source == "store" and body == data[10:100]
    assert h.tracker.calls == [] and h.origin.requests == []


def test_published_torrent_is_streamed_from_the_swarm(tmp_path):
    d, data = blob(SIZE)
    h = Host(tmp_path, {d: data}, swarm=FakeSwarm(data))
    h.tracker.published[d] = torrent(data)
    res, body = h.get(d)
    assert res.source == "peer" and body == data
    assert h.tracker.names() == ["get_metainfo"] and h.origin.requests == []
    assert h.metrics.bytes == {"peer": len(data)}
    _, body = h.get(d, ByteRange(1000, 1999))   # a range starts the stream at its offset
    assert body == data[1000:2000] and h.swarm.calls[-1] == (d, 1000)


def test_only_a_whole_answer_lets_the_swarm_write_to_the_clients_socket(tmp_path):
    """A range from byte 0 that ends early is cut at its end here: the stream never gets the socket."""
    d, data = blob(SIZE)
    h = Host(tmp_path, {d: data}, swarm=FakeSwarm(data))
    h.tracker.published[d] = torrent(data)
    slot = SocketSlot()
    for rng in (None, ByteRange(0, SIZE - 1), ByteRange(0, 999), ByteRange(1000, None)):
        _, body = h.get(d, rng, socket=slot)
        assert body == data[rng.start if rng else 0:(rng.end + 1) if rng and rng.end is not None else SIZE]
    assert h.swarm.sockets == [slot, slot, None, None]


def test_a_request_joins_the_download_running_here_without_asking_the_tracker(tmp_path):
    """A prefetched layer: the client's request needs no second metainfo request (one per layer per host)."""
    d, data = blob(SIZE)
    other_d, other = blob(SIZE, b"other")
    running = {d: torrent(data)}
    h = Host(tmp_path, {d: data, other_d: other}, swarm=FakeSwarm(data), downloading=running.get)
    h.tracker.published[other_d] = torrent(other)
    res, body = h.get(d)
    assert res.source == "peer" and body == data and h.swarm.calls == [(d, 0)]
    assert h.tracker.calls == [] and h.origin.requests == []
    h.get(other_d)                                  # nothing running for it: the tracker is asked
    assert h.tracker.names() == ["get_metainfo"]


def test_lease_holder_fetches_from_the_origin_stores_publishes_and_releases(tmp_path):
    d, data = blob(SIZE)
    h = Host(tmp_path, {d: data})
    res, body = h.get(d)
    assert res.source == "origin" and body == data
    h.wait_idle(d)
    assert h.store.size_of(d) == len(data) and h.published == [d]
    assert h.tracker.names() == ["get_metainfo", "lease", "release_lease"]
    assert h.origin.requests == [(d, None, False)]
    res, _ = h.get(d)
    assert res.source == "store"


def test_the_client_has_its_last_bytes_once_the_blob_hashed_right_before_it_is_made_durable(tmp_path,
                                                                                          monkeypatch):
    """The fsync of the fetched blob (and the torrent, the publish) come after the client's answer: a
    slow disk at the end of a rollout delays the store, not the pull; a failure there keeps nothing."""
    from layerswarm.bridge.node.store import LayerWriter
    d, data = blob(SIZE)
    h = Host(tmp_path, {d: data})
    durable = threading.Event()
    finish = LayerWriter.finish

    def slow_finish(self, trackers=()):
        assert durable.wait(10), "the answer waited for the fsync"
        return finish(self, trackers)
    monkeypatch.setattr(LayerWriter, "finish", slow_finish)
    got = []
    client = threading.Thread(target=lambda: got.append(h.get(d)))
    client.start()
    client.join(5)
    assert got and got[0][1] == data            # whole and verified while finish() still waits
    assert h.store.size_of(d) is None and h.published == []
    durable.set()
    h.wait_idle(d)
    assert h.store.size_of(d) == len(data) and h.published == [d]


def test_a_blob_that_cannot_be_made_durable_is_answered_but_not_kept(tmp_path, monkeypatch):
    from layerswarm.bridge.node.store import LayerWriter

    def full(self, trackers=()):
        self.verify()
        self.abort()
        raise StoreFull("disk full (test)")
    monkeypatch.setattr(LayerWriter, "finish", full)
    d, data = blob(SIZE)
    h = Host(tmp_path, {d: data})
    res, body = h.get(d)
    h.wait_idle(d)
    assert body == data and h.store.size_of(d) is None and h.published == []
    monkeypatch.undo()
    res, body = h.get(d)                        # the next request fetches it again
    h.wait_idle(d)
    assert body == data and h.store.size_of(d) == len(data)


def test_tiny_blob_keeps_its_lease_so_late_bridges_relay_from_us(tmp_path):
    d, data = blob(500)   # below tiny_bytes: no torrent will ever say where it is
    h = Host(tmp_path, {d: data})
    _, body = h.get(d)
    h.wait_idle(d)
    assert body == data and h.store.size_of(d) == 500 and h.published == []
    assert "release_lease" not in h.tracker.names()


def test_relay_source_then_the_origin_when_the_relay_fails_mid_blob(tmp_path):
    d, data = blob(SIZE)
    h = Host(tmp_path, {d: data}, relays=FakeRelays(data))
    h.tracker.lease_answer = {"role": "relay", "source": {"url": "http://holder.invalid"}}
    res, body = h.get(d)
    assert body == data and res.source == "relay" and h.origin.requests == [(d, None, True)]  # a HEAD: the size
    h.wait_idle(d)
    assert h.store.size_of(d) == len(data) and "release_lease" not in h.tracker.names()

    d2, data2 = blob(SIZE, b"cut")
    h2 = Host(tmp_path / "2", {d2: data2}, relays=FakeRelays(data2, fail_at=250_000))
    h2.tracker.lease_answer = h.tracker.lease_answer
    res, body = h2.get(d2)
    h2.wait_idle(d2)
    assert body == data2 and h2.store.size_of(d2) == len(data2)
    assert h2.origin.requests == [(d2, None, True), (d2, 200_000, False)]   # continued at the bytes written so far
    assert h2.metrics.bytes == {"relay": 200_000, "origin": len(data2) - 200_000}
    assert h2.metrics.fallbacks == ["relay"]


def test_relay_with_wrong_bytes_is_cut_and_never_asked_again(tmp_path):
    d, data = blob(SIZE)
    bad, reading = bytes(len(data)), threading.Event()
    h = Host(tmp_path, {d: data}, relays=FakeRelays(data, bad_bytes=bad, hold_last=reading))
    h.tracker.lease_answer = {"role": "relay", "source": {"url": "http://liar.invalid"}}
    body = iter(h.source.open(h.request(d)).body)
    first = next(body)
    assert 0 < len(first) < len(data) and first == bad[:len(first)]   # the client has wrong bytes already...
    reading.set()
    with pytest.raises(DigestMismatch):           # ...so the answer is cut, never ends cleanly
        for _ in body:
            pass
    h.wait_idle(d)
    assert h.store.size_of(d) is None and h.relays.is_bad("http://liar.invalid")
    _, body = h.get(d)                            # same relay offered again: the origin instead
    assert body == data and len(h.relays.opened) == 1 and h.origin.requests[-1] == (d, None, False)


def test_a_relay_lying_about_the_size_is_blamed_and_the_origin_serves(tmp_path):
    d, data = blob(SIZE)
    h = Host(tmp_path, {d: data}, relays=FakeRelays(data + b"x" * 10_000_000))   # claims far more
    h.tracker.lease_answer = {"role": "relay", "source": {"url": "http://huge.invalid"}}
    res, body = h.get(d)
    h.wait_idle(d)
    assert body == data and h.relays.is_bad("http://huge.invalid")
    assert h.origin.requests == [(d, None, True), (d, None, False)] and h.metrics.bytes == {"origin": len(data)}


def test_tracker_down_goes_to_the_origin_then_backs_off(tmp_path):
    now = [1000.0]
    d, data = blob(SIZE)
    h = Host(tmp_path, {d: data}, clock=lambda: now[0])
    h.tracker.failing = h.tracker.ALL
    res, body = h.get(d)
    h.wait_idle(d)
    assert body == data and res.source == "origin" and h.tracker.names() == ["get_metainfo"]
    assert h.store.size_of(d) == len(data) and h.published == []   # no tracker: nothing published
    d2, data2 = blob(SIZE, b"second")
    h.origin.blobs[d2] = data2
    _, body = h.get(d2)                                         # within the back-off: tracker not asked
    h.wait_idle(d2)
    assert body == data2 and h.tracker.names() == ["get_metainfo"]
    now[0] += h.cfg.swarm.tracker_backoff + 1                         # back-off over: asked again
    d3, data3 = blob(SIZE, b"third")
    h.origin.blobs[d3] = data3
    h.tracker.failing = set()
    _, body = h.get(d3)
    h.wait_idle(d3)
    assert body == data3 and h.tracker.names() == ["get_metainfo", "get_metainfo", "lease", "release_lease"]


def test_tracker_failing_on_the_lease_falls_back_to_the_origin(tmp_path):
    d, data = blob(SIZE)
    h = Host(tmp_path, {d: data})
    h.tracker.failing = {"lease"}
    res, body = h.get(d)
    h.wait_idle(d)
    assert body == data and h.store.size_of(d) == len(data) and h.backoff.down()
    assert h.tracker.names() == ["get_metainfo", "lease"] and h.published == []  # kept locally, no torrent


def test_swarm_stall_mid_stream_continues_from_the_origin_at_the_offset(tmp_path):
    d, data = blob(SIZE)
    h = Host(tmp_path, {d: data}, swarm=FakeSwarm(data, fail_at=350_000))
    h.tracker.published[d] = torrent(data)
    res, body = h.get(d)
    assert body == data and res.source == "origin"
    assert h.origin.requests == [(d, 350_000, False)] and h.swarm.closed == 1
    _, body = h.get(d, ByteRange(100_000, 499_999))    # a range continues at its own offset too
    assert body == data[100_000:500_000] and h.origin.requests[-1] == (d, 450_000, False)


def test_swarm_unusable_before_the_first_byte_fetches_instead(tmp_path):
    d, data = blob(SIZE)
    h = Host(tmp_path, {d: data}, swarm=_raising(SwarmError("no peers (fake)")))
    h.tracker.published[d] = torrent(data)
    res, body = h.get(d)
    h.wait_idle(d)
    # With a torrent published the fetch goes straight to the origin (no lease to wait for).
    assert body == data and h.tracker.names() == ["get_metainfo"] and h.store.size_of(d) == len(data)


def test_poisoned_torrent_cuts_the_answer_and_is_not_used_again(tmp_path):
    d, data = blob(SIZE)
    swarm = FakeSwarm(data, fail_at=SIZE - 1000, fail=DigestMismatch("whole blob does not match (fake)"))
    h = Host(tmp_path, {d: data}, swarm=swarm)
    h.tracker.published[d] = torrent(data)
    res, body = h.get(d)
    assert isinstance(body, DigestMismatch) and h.origin.requests == []   # a cut, no origin patch-up
    assert h.metrics.mismatches == ["peer"]
    res, body = h.get(d)
    assert body == data and len(swarm.calls) == 1       # the same torrent is not streamed again


def test_wrong_bytes_from_the_swarm_after_a_stall_are_caught_by_the_whole_blob_hash(tmp_path):
    d, data = blob(SIZE)
    bad = bytearray(data)
    bad[10] ^= 1
    h = Host(tmp_path, {d: data}, swarm=FakeSwarm(data, fail_at=300_000, bad=bytes(bad)))
    h.tracker.published[d] = torrent(data)
    res, body = h.get(d)
    assert isinstance(body, DigestMismatch)
    assert h.metrics.fallbacks == ["peer"] and h.metrics.mismatches == ["assembled"]


def _counting_hashers(monkeypatch) -> list:
    made = []
    real = Digest.hasher
    monkeypatch.setattr(Digest, "hasher", lambda self: made.append(self) or real(self))
    return made


def test_a_stream_that_verifies_itself_is_not_hashed_again(tmp_path, monkeypatch):
    made = _counting_hashers(monkeypatch)
    d, data = blob(SIZE)
    h = Host(tmp_path, {d: data}, swarm=FakeSwarm(data, verifies=True))
    h.tracker.published[d] = torrent(data)
    res, body = h.get(d)
    assert body == data and res.source == "peer" and made == [] and h.swarm.prefixes == []


def test_a_verifying_stream_continued_from_the_origin_is_checked_from_what_it_sent(tmp_path, monkeypatch):
    made = _counting_hashers(monkeypatch)
    d, data = blob(SIZE)
    h = Host(tmp_path, {d: data}, swarm=FakeSwarm(data, fail_at=350_000, verifies=True))
    h.tracker.published[d] = torrent(data)
    res, body = h.get(d)
    assert body == data and res.source == "origin" and h.origin.requests == [(d, 350_000, False)]
    assert h.swarm.prefixes == [350_000] and made == [d]     # the prefix's hash, then the origin's rest
    bad = bytearray(data)
    bad[10] ^= 1
    h = Host(tmp_path / "bad", {d: data}, swarm=FakeSwarm(data, fail_at=300_000, bad=bytes(bad), verifies=True))
    h.tracker.published[d] = torrent(data)
    res, body = h.get(d)
    assert isinstance(body, DigestMismatch) and h.metrics.mismatches == ["assembled"]


def test_a_verifying_stream_failing_before_its_first_byte_is_answered_by_the_origin(tmp_path):
    d, data = blob(SIZE)
    h = Host(tmp_path, {d: data}, swarm=FakeSwarm(data, fail_at=0, verifies=True, prefix_known=False))
    h.tracker.published[d] = torrent(data)
    res, body = h.get(d)
    assert body == data and res.source == "origin" and h.swarm.prefixes == []   # nothing sent: nothing to check


def test_a_stall_after_bytes_that_cannot_be_checked_cuts_the_answer(tmp_path):
    d, data = blob(SIZE)
    h = Host(tmp_path, {d: data}, swarm=FakeSwarm(data, fail_at=300_000, verifies=True, prefix_known=False))
    h.tracker.published[d] = torrent(data)
    res, body = h.get(d)
    assert isinstance(body, SwarmError) and "cannot be checked" in str(body)
    assert h.origin.requests == [] and h.swarm.prefixes == [300_000]   # no unchecked origin patch-up


def test_head_never_starts_a_download(tmp_path):
    d, data = blob(SIZE)
    h = Host(tmp_path, {d: data}, swarm=FakeSwarm(data))
    h.tracker.published[d] = torrent(data)
    res = h.source.open(h.request(d, head=True))
    assert res.size == len(data) and res.body is None and res.file is None
    assert h.origin.requests == [(d, None, True)] and h.swarm.calls == [] and h.tracker.calls == []
    assert h.source.active_fetch(d) is None


def test_concurrent_requests_share_one_fetch(tmp_path):
    d, data = blob(SIZE)
    h = Host(tmp_path, {d: data})
    gate = threading.Event()
    real_open = h.origin.open

    def slow_open(req):
        gate.wait(5)
        return real_open(req)
    h.origin.open = slow_open
    out = []
    threads = [threading.Thread(target=lambda: out.append(h.get(d)[1])) for _ in range(3)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(10)
    assert out == [data] * 3 and h.tracker.names().count("lease") == 1 and len(h.origin.requests) == 1


def _raising(exc):
    def swarm(digest, offset, meta, socket=None):
        raise exc
    return swarm


def test_origin_failing_before_the_first_byte_answers_from_the_plain_origin(tmp_path):
    d, data = blob(SIZE)
    h = Host(tmp_path, {d: data})
    calls = []
    real_open = h.origin.open

    def flaky(req):
        calls.append(req)
        if len(calls) <= 3:        # the fetch's three attempts
            raise UpstreamError("origin down (fake)")
        return real_open(req)
    h.origin.open = flaky
    res, body = h.get(d)
    assert body == data and len(calls) == 4 and h.store.size_of(d) is None


def test_tracker_down_origin_fetches_take_turns_in_the_origin_slots(tmp_path):
    blobs = dict(blob(SIZE, b"slot%d" % i) for i in range(3))
    h = Host(tmp_path, blobs, origin_slots=1)
    h.tracker.failing = h.tracker.ALL
    h.backoff.failed()
    lock, running, most = threading.Lock(), [0], [0]
    real_open = h.origin.open

    def counted(req):   # the slot is held from the origin request until the fetch is stored
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        res = real_open(req)

        def body(inner):
            yield from inner
            with lock:
                running[0] -= 1
        res.body = body(res.body)
        return res
    h.origin.open = counted
    out = {}
    threads = [threading.Thread(target=lambda d=d: out.__setitem__(d, h.get(d)[1])) for d in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert out == blobs and most[0] == 1 and h.tracker.calls == []


def test_prefetch_starts_cold_fetches_and_swarm_downloads_within_its_bound(tmp_path):
    cold = [blob(SIZE, f"cold{i}".encode()) for i in range(3)]
    hot_d, hot = blob(SIZE, b"hot")
    downloads = []
    h = Host(tmp_path, {**dict(cold), hot_d: hot}, prefetch_layers=3, download=lambda d, t: downloads.append(d))
    h.tracker.published[hot_d] = torrent(hot)
    h.source.prefetch([h.request(hot_d)] + [h.request(d) for d, _ in cold])
    wait_for(lambda: not h.source._prefetching, timeout=10, what="prefetches handed over")
    for d, _ in cold[:2]:
        h.wait_idle(d)
        assert h.store.size_of(d) == SIZE
    assert downloads == [hot_d]                       # a published layer: the shared swarm download
    assert h.store.size_of(cold[2][0]) is None        # beyond --prefetch-layers
    assert h.metrics.prefetches == 3
    # A layer of a repository that may not be shared, or one already stored: nothing at all.
    before = list(h.tracker.calls)
    h.source.prefetch([replace(h.request(cold[2][0]), shareable=False), h.request(cold[0][0])])
    wait_for(lambda: not h.source._prefetching, timeout=10, what="prefetch queue empty")
    assert h.tracker.calls == before and h.store.size_of(cold[2][0]) is None


def test_a_layer_that_may_not_be_shared_goes_from_the_origin_to_the_client_only(tmp_path):
    """Open mode, a private repository: no metainfo, no lease, no store, no torrent."""
    d, data = blob(SIZE)
    h = Host(tmp_path, {d: data})
    res = h.source.open(replace(h.request(d), shareable=False))
    assert b"".join(res.body) == data and res.source == "origin"
    assert h.tracker.calls == [] and h.store.size_of(d) is None and h.published == []
    assert h.source.active_fetch(d) is None
