"""Peers in one process on loopback against a fake tracker: publish, seed, stream, verify."""
from __future__ import annotations

import time

import pytest

from bridge.digest import Digest
from bridge.errors import DigestMismatch, SwarmError
from bridge.stream import StreamConfig
from tests.peer.conftest import add, blob_bytes


def test_seed_then_stream_from_swarm(fake_tracker, make_peer):
    data = blob_bytes(5_000_000)
    d = Digest.of_bytes(data)
    seeder = make_peer("seeder", fake_tracker.url)
    info = add(seeder, data)
    assert info.source == "own" and str(d) in fake_tracker.metainfo
    leech = make_peer("leech", fake_tracker.url)
    s = leech.stream(d)
    out = b"".join(s)
    assert out == data and s.yielded == len(data)
    assert leech.store.path_if_present(d).read_bytes() == data
    assert any(x.digest == d for x in leech.seeding())


def test_stream_from_offset(fake_tracker, make_peer):
    data = blob_bytes(3_000_000, b"off")
    d = Digest.of_bytes(data)
    add(make_peer("seeder", fake_tracker.url), data)
    leech = make_peer("leech", fake_tracker.url)
    assert b"".join(leech.stream(d, offset=1_234_567)) == data[1_234_567:]


def test_stall_without_peers_raises_swarm_error(fake_tracker, make_peer, tmp_path):
    data = blob_bytes(2_000_000, b"stall")
    d = Digest.of_bytes(data)
    seeder = make_peer("seeder", fake_tracker.url)
    add(seeder, data)
    seeder.close()  # the only seeder is gone: metainfo published, nobody to fetch from
    leech = make_peer("leech", fake_tracker.url, stream=StreamConfig(stall_timeout=2))
    s = leech.stream(d)
    t0 = time.monotonic()
    with pytest.raises(SwarmError, match="stalled"):
        b"".join(s)
    assert time.monotonic() - t0 < 10 and s.yielded == 0
