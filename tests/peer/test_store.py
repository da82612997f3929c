"""The layer store: writer + followers, LRU eviction under a cap, restart records."""
from __future__ import annotations

import os
import threading
import time

import pytest

from layerswarm.bridge.format.digest import Digest
from layerswarm.bridge.format.errors import DigestMismatch, StoreFull
from layerswarm.bridge.node.store import LayerStore
from tests.fixtures import blob_bytes


def _put(store, data):
    w = store.writer(Digest.of_bytes(data), len(data))
    for i in range(0, len(data), 100_000):
        w.write(data[i:i + 100_000])
    w.commit()
    return Digest.of_bytes(data)


def test_writer_commit(tmp_path):
    st = LayerStore(tmp_path)
    data = blob_bytes(1_000_000)
    d = Digest.of_bytes(data)
    w = st.writer(d, len(data))
    w.write(data[:300_000])
    w.write(data[300_000:])
    torrent = w.finish()
    assert torrent.digest == d and torrent.size == len(data)
    w.commit(torrent.metainfo)
    assert st.path_if_present(d).read_bytes() == data and st.saved_torrent(d) == torrent.metainfo
    with st.open(d) as f:
        assert f.read(10) == data[:10]


def test_writer_mismatch_leaves_nothing(tmp_path):
    st = LayerStore(tmp_path)
    w = st.writer(Digest.of_bytes(b"x" * 10), 10)
    w.write(b"y" * 10)
    with pytest.raises(DigestMismatch):
        w.finish()
    assert not os.listdir(st.incoming_dir) and not os.listdir(st.layers_dir) and st._reserved == 0


def test_lru_eviction_under_cap(tmp_path):
    evicted = []
    st = LayerStore(tmp_path, cap_bytes=1_000_000)
    st.on_evict = evicted.append
    a = _put(st, blob_bytes(400_000, b"a"))
    b = _put(st, blob_bytes(400_000, b"b"))
    st.touch(a)  # b is now least recently used
    c = _put(st, blob_bytes(400_000, b"c"))
    assert evicted == [b] and b not in st and a in st and c in st
    assert not st.layer_path(b).exists()
    held = st.writer(Digest.of_bytes(b"y"), 900_000)   # a and c go; the space is promised to it
    assert a not in st and c not in st
    with pytest.raises(StoreFull):
        st.writer(Digest.of_bytes(b"z"), 400_000)
    held.abort()
    with pytest.raises(StoreFull):
        st.writer(Digest.of_bytes(b"z"), 2_000_000)


def test_restart_trusts_only_recorded_bytes(tmp_path):
    st = LayerStore(tmp_path)
    a = _put(st, blob_bytes(200_000, b"a"))
    b = _put(st, blob_bytes(200_000, b"b"))
    st.flush()
    # b changes behind our back (same size, new mtime): rehashed at load and dropped.
    with open(st.layer_path(b), "r+b") as f:
        f.write(b"corrupt")
    (tmp_path / "incoming" / "junk").write_bytes(b"partial")
    st2 = LayerStore(tmp_path)
    assert a in st2 and b not in st2 and st2.rehashed == [] and not os.listdir(st2.incoming_dir)


def test_eviction_stops_seeding_outside_the_lock_and_a_returning_blob_waits_for_it(tmp_path):
    st = LayerStore(tmp_path, cap_bytes=500_000)
    a = _put(st, blob_bytes(400_000, b"a"))
    seeding_stops, go_on = threading.Event(), threading.Event()

    def on_evict(d):   # like the peer: stop the torrent, wait until libtorrent let go
        seeding_stops.set()
        go_on.wait(10)
        assert st.layer_path(d).exists(), "no file is deleted under a live torrent"
    st.on_evict = on_evict
    t = threading.Thread(target=lambda: st.writer(Digest.of_bytes(b"b"), 400_000).abort())
    t.start()
    assert seeding_stops.wait(10)
    assert a not in st and st.size_of(a) is None     # the store answers while the peer stops seeding
    again = threading.Thread(target=_put, args=(st, blob_bytes(400_000, b"a")))
    st.cap = None
    again.start()                                     # the same blob arriving waits for the old files
    time.sleep(0.2)
    assert a not in st
    go_on.set()
    t.join(10)
    again.join(10)
    assert a in st and st.layer_path(a).read_bytes() == blob_bytes(400_000, b"a")


def test_a_torrent_that_will_not_stop_keeps_its_file(tmp_path):
    st = LayerStore(tmp_path, cap_bytes=500_000)
    a = _put(st, blob_bytes(400_000, b"a"))

    def stuck(d):
        raise RuntimeError("still seeding")
    st.on_evict = stuck
    st.writer(Digest.of_bytes(b"b"), 400_000).abort()
    assert a not in st and st.layer_path(a).exists()


def _bytes_on_disk(st) -> int:
    total = 0
    for d in (st.layers_dir, st.incoming_dir, st.downloads_dir):
        for name in os.listdir(d):
            try:
                total += os.stat(d / name).st_size
            except FileNotFoundError:   # deleted between the listing and the stat
                pass
    return total


def test_the_cap_holds_on_disk_under_concurrent_writers(tmp_path):
    """Eight writers at once under a 7 MB cap (their reservations fit it), evictions slowed down as
    libtorrent's are: the store's files never add up to more than the cap, and the index (written
    by every commit) ends up matching the files."""
    cap = 7_000_000
    st = LayerStore(tmp_path, cap_bytes=cap)
    st.on_evict = lambda d: time.sleep(0.02)   # the peer stops the torrent and waits for libtorrent
    peak, done, errors = [0], threading.Event(), []

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _bytes_on_disk(st))
            time.sleep(0.001)

    def writer(k):
        try:
            for i in range(6):
                _put(st, blob_bytes(300_000 + 100_000 * ((k + i) % 6), b"w%d-%d" % (k, i)))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    done.set()
    sampler.join(10)
    assert not errors, errors
    assert peak[0] <= cap, f"{peak[0]} bytes on disk under a {cap}-byte cap"
    assert st.used_bytes() <= cap and st._reserved == 0
    assert sorted(os.listdir(st.layers_dir)) == sorted(str(d) for d in st.digests())
    assert sorted(str(d) for d in LayerStore(tmp_path).digests()) == sorted(str(d) for d in st.digests())
