"""Faults on the swarm path, with real processes: a seeder dying mid-transfer, a peer serving
corrupt pieces, a poisoned torrent.  Plus the request shapes every path must get right:
tiny blobs, HEAD, Range on store / relay-following / swarm.

Raw seeders: tests/swarm/ltseed.py (libtorrent, optional upload cap that also applies to
loopback peers) and aria2c with ``--bt-seed-unverified`` (sends whatever bytes its file holds).
"""
from __future__ import annotations

import re
import time

import pytest
import requests

from layerswarm.bridge.format import layertorrent as tf
from tests.fixtures import free_port, stats, wait_for
from tests.swarm.helpers import assert_store_clean, fetched, get, push_layer, start_ltseed, store_files
from tests.swarm.test_faults import MB, _bg, _gets, _ok, _result

pytestmark = pytest.mark.slow


def _published(tracker, digest):
    r = requests.get(f"{tracker.url}/metainfo/{digest}", timeout=10)
    return r.content if r.status_code == 200 else None


def _tracker_reports(tracker) -> float:
    text = requests.get(f"{tracker.url}/metrics", timeout=10).text
    return sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith("layerswarm_tracker_reports_total"))


def _warm(fleet, origin, tracker, size, seed):
    """A layer pulled once through bridge ``src`` (published, seeded), then ``src`` stopped.

    Returns (blob, torrent bytes, path of the verified file) for raw seeders to use.
    """
    blob = push_layer(origin.url, size, seed)
    src = fleet.start_bridge("src")
    _ok(get(src.url, blob.digest), blob)
    torrent = wait_for(lambda: _published(tracker, blob.digest), 30, "the torrent to be published")
    src.stop()
    return blob, torrent, src.store / "layers" / str(blob.digest)


def _seeder_sent(seeder) -> int:
    """Payload bytes a raw seeder (tests/swarm/ltseed.py) has uploaded, from its once-a-second log line.

    "Mid download" is measured here, not by the bytes a bridge served: rarest-first fills the blob out
    of order and the stream waits for the gaps, so with one 1 MB/s seeder the client may get piece 0
    early and the rest at the very end."""
    sent = re.findall(r"^uploaded (\d+) ", seeder.log_text(10 ** 6), re.M)
    return int(sent[-1]) if sent else 0


# -- 1. the only seeder dies mid-transfer ---------------------------------------
def test_seeder_killed_mid_transfer_continues_from_origin(fleet, origin, tracker, tmp_path):
    blob, torrent, path = _warm(fleet, origin, tracker, 8 * MB, b"seeder-killed")
    seeder = start_ltseed(fleet, "good", torrent, str(blob.digest), path.read_bytes(), rate=MB)
    # Stall timeout with room for a loaded CI machine: the swarm must get going before it fires.
    b = fleet.start_bridge("h1", "--stall-timeout", "12")
    job = _bg(get, b.url, blob.digest)
    wait_for(lambda: _seeder_sent(seeder) > 2 * MB, 60, "bytes from the swarm")
    t0 = time.monotonic()
    seeder.kill()
    _ok(_result(job), blob)
    took = time.monotonic() - t0
    s = stats(b)
    assert 0 < s["fetched"]["peer"] < len(blob.data) and s["blob_bytes"]["origin"] > 0, s
    assert s["blob_bytes"]["peer"] + s["blob_bytes"]["origin"] == len(blob.data), s
    assert _gets(origin, blob) == 2  # the warm-up, then one ranged continuation
    assert took < 12 + 20, took
    print(f"seeder killed: origin continuation done {took:.1f}s later (stall timeout 12s)")
    # The next request does not wait for the dead swarm again.
    t0 = time.monotonic()
    _ok(get(b.url, blob.digest), blob)
    assert time.monotonic() - t0 < 10
    assert not store_files(b.store)["layers"] or store_files(b.store)["layers"] == [str(blob.digest)]


# -- 5. a peer serving corrupt pieces ---------------------------------------------
def _aria2_seed(fleet, torrent: bytes, name: str, data: bytes):
    d = fleet.tmp / "aria-bad"
    d.mkdir()
    (d / name).write_bytes(data)
    (d / "t.torrent").write_bytes(torrent)
    p = fleet.start(["aria2c", "--bt-seed-unverified=true", "--check-integrity=false", "--seed-time=30",
                     f"--dir={d}", "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
                     "--enable-peer-exchange=false", f"--listen-port={free_port()}",
                     "--console-log-level=notice", "--summary-interval=1", d / "t.torrent"],
                    "aria2c-bad", ready=lambda log: "SEED" in log or "seeding" in log.lower())
    return p


@pytest.mark.parametrize("good_rate", [0, 2 * MB], ids=["good-fast", "good-slow"])
def test_corrupt_peer_never_reaches_the_client(fleet, origin, tracker, tmp_path, good_rate):
    """A peer sending flipped bytes: libtorrent rejects its pieces by hash.

    Found here: when the good seeder is slower, pieces mix blocks from both, libtorrent
    takes trust from both and drops the good seeder too; the stream then stalls and the
    bridge continues from the origin within the stall timeout.  Either way the client
    gets the right digest and at most one more (ranged) origin GET happens.
    """
    blob, torrent, path = _warm(fleet, origin, tracker, 8 * MB, b"corrupt-peer")
    meta = tf.parse_metainfo(torrent, blob.digest)
    bad = bytearray(blob.data)
    for p in range(meta.num_pieces):  # one flipped byte in every piece
        bad[p * meta.piece_length + 17] ^= 0xFF
    bad_seeder = _aria2_seed(fleet, torrent, str(blob.digest), bytes(bad))
    good = start_ltseed(fleet, "good", torrent, str(blob.digest), path.read_bytes(), rate=good_rate)
    wait_for(lambda: requests.get(f"{tracker.url}/swarms", timeout=5).json()[0]["seeders"] >= 2, 30,
             "both seeders announced")
    b = fleet.start_bridge("h1", "--stall-timeout", "5")
    t0 = time.monotonic()
    _ok(get(b.url, blob.digest), blob)
    took = time.monotonic() - t0
    s = stats(b)
    assert s["blob_bytes"]["peer"] + s["blob_bytes"]["origin"] == len(blob.data), s
    assert s["fetched"]["origin"] == 0 and _gets(origin, blob) <= 2
    assert took < 5 + 20, took
    assert store_files(b.store)["layers"] in ([], [str(blob.digest)])
    if store_files(b.store)["layers"]:
        assert_store_clean(b.store, [blob.digest])
    print(f"corrupt peer ({good_rate=}): {took:.1f}s, {s['blob_bytes']['peer']} bytes from peers, "
          f"{s['blob_bytes']['origin']} from the origin, "
          f"{b.log_text(10 ** 6).count('failed its hash check')} hash failures")
    bad_seeder.kill()
    good.kill()


# -- 6. a poisoned torrent published for a real digest -------------------------------
@pytest.mark.parametrize("quarantined", [
    pytest.param(True, marks=pytest.mark.tracker_args("--quarantine-reports", "1"), id="one-report-quarantines"),
    pytest.param(False, marks=pytest.mark.tracker_args("--quarantine-reports", "3"), id="still-published"),
])
def test_poisoned_torrent_is_cut_reported_and_the_next_pull_is_right(fleet, origin, tracker, tmp_path, quarantined):
    blob = push_layer(origin.url, 6 * MB, b"poison-real")
    evil = bytes(b ^ 0x5A for b in blob.data)
    h = tf.PieceHasher(len(evil))
    h.update(evil)
    poisoned = tf.build_metainfo(blob.digest, len(evil), h.pieces(), [tracker.url + "/announce"])
    r = requests.put(f"{tracker.url}/metainfo/{blob.digest}", data=poisoned.metainfo, timeout=10,
                     headers={"Content-Type": "application/x-bittorrent"})
    assert r.status_code == 201, r.text
    evil_seeder = start_ltseed(fleet, "evil", poisoned.metainfo, str(blob.digest), evil)
    b = fleet.start_bridge("h1")
    status, body, err = get(b.url, blob.digest)
    assert err is not None and len(body) < len(blob.data), (status, len(body))  # cut, never complete
    assert_store_clean(b.store, [])
    wait_for(lambda: _tracker_reports(tracker) >= 1, 20, "the bridge's report")
    if not quarantined:  # one untrusted report is not enough: this bridge remembers the bad torrent itself
        assert _published(tracker, blob.digest) == poisoned.metainfo
        _ok(get(b.url, blob.digest), blob)
        assert _gets(origin, blob) == 1 and stats(b)["fetched"]["origin"] == len(blob.data)
        assert_store_clean(b.store, [blob.digest])
        evil_seeder.kill()
        return
    wait_for(lambda: _published(tracker, blob.digest) is None, 20, "the torrent quarantined")
    # The next request gets the real bytes from the origin, and publishes the real torrent.
    _ok(get(b.url, blob.digest), blob)
    assert _gets(origin, blob) == 1
    assert_store_clean(b.store, [blob.digest])
    real = wait_for(lambda: _published(tracker, blob.digest), 20, "the real torrent published")
    assert tf.parse_metainfo(real, blob.digest).info_hash != poisoned.info_hash
    evil_seeder.kill()


# -- 7. killed mid swarm download, restarted on the same store ----------------------
def test_bridge_killed_mid_swarm_download_resumes_clean(fleet, origin, tracker, tmp_path):
    blob, torrent, path = _warm(fleet, origin, tracker, 8 * MB, b"restart-swarm")
    seeder = start_ltseed(fleet, "good", torrent, str(blob.digest), path.read_bytes(), rate=MB)
    b = fleet.start_bridge("h1")
    job = _bg(get, b.url, blob.digest)
    wait_for(lambda: _seeder_sent(seeder) > 2 * MB, 40, "bytes from the swarm")
    b.kill()
    status, body, err = _result(job)
    assert err is not None and len(body) < len(blob.data)
    b2 = fleet.start_bridge("h1", store=b.store)
    assert not store_files(b2.store)["layers"]
    _ok(get(b2.url, blob.digest), blob)  # the partial is rechecked, never trusted
    assert _gets(origin, blob) == 1
    assert_store_clean(b2.store, [blob.digest])
    seeder.kill()


# -- 8. no room in the store on the swarm path ----------------------------------------
def test_disk_full_during_swarm_download_continues_from_origin(small_disk, fleet, origin, tracker):
    blob = push_layer(origin.url, 12 * MB, b"swarm-disk-full")
    src = fleet.start_bridge("src")
    _ok(get(src.url, blob.digest), blob)
    wait_for(lambda: _published(tracker, blob.digest), 30, "the torrent to be published")
    b = fleet.start_bridge("h1", store=small_disk)
    _ok(get(b.url, blob.digest), blob)
    assert_store_clean(small_disk, [])
    _ok(get(b.url, blob.digest), blob)
    assert_store_clean(small_disk, [])


def test_store_cap_too_small_for_a_swarm_blob_goes_to_origin(fleet, origin, tracker):
    blob = push_layer(origin.url, 6 * MB, b"swarm-cap")
    src = fleet.start_bridge("src")
    _ok(get(src.url, blob.digest), blob)
    wait_for(lambda: _published(tracker, blob.digest), 30, "the torrent to be published")
    b = fleet.start_bridge("h1", "--cache-max", "4M")
    _ok(get(b.url, blob.digest), blob)
    _check_206(_range(b.url, blob.digest, MB), blob.data, MB)
    assert_store_clean(b.store, [])


# -- tiny blobs, HEAD, Range on every path ------------------------------------------
def test_tiny_blob_gets_no_torrent_and_head_starts_nothing(fleet, origin, tracker):
    big = push_layer(origin.url, 3 * MB, b"head")
    tiny = push_layer(origin.url, 20_000, b"tiny", tag="tiny")
    b = fleet.start_bridge("h0")
    r = requests.head(f"{b.url}/v2/library/app/blobs/{big.digest}", timeout=30)
    assert r.status_code == 200 and int(r.headers["Content-Length"]) == len(big.data)
    time.sleep(1)
    assert _gets(origin, big) == 0 and stats(b)["fetched"]["origin"] == 0
    assert_store_clean(b.store, [])
    _ok(get(b.url, tiny.digest), tiny)
    assert_store_clean(b.store, [tiny.digest])
    time.sleep(1)
    assert _published(tracker, tiny.digest) is None
    r = requests.head(f"{b.url}/v2/library/app/blobs/{tiny.digest}", timeout=30)
    assert r.status_code == 200 and int(r.headers["Content-Length"]) == len(tiny.data)
    # No torrent points late bridges at it: the holder keeps its lease, they relay from its store.
    late = fleet.start_bridge("late")
    _ok(get(late.url, tiny.digest), tiny)
    assert _gets(origin, tiny) == 1 and fetched(late, "relay") == len(tiny.data)


def _range(url, digest, start, end=None):
    hdr = {"Range": f"bytes={start}-{'' if end is None else end}"}
    return get(url, digest, hdr)


def _check_206(result, data, start, end=None):
    status, body, err = result
    end = len(data) - 1 if end is None else end
    assert err is None and status == 206, (status, len(body), err)
    assert body == data[start:end + 1]


def test_range_on_store_relay_following_and_swarm(fleet, origin, proxy, tracker):
    blob = push_layer(origin.url, 8 * MB, b"ranges")
    data = blob.data
    fleet.origin_url = proxy.url
    proxy.rate = 2 * MB
    h0, h1 = fleet.start_bridge("h0"), fleet.start_bridge("h1")
    whole = _bg(get, h0.url, blob.digest)                       # h0 holds the lease
    wait_for(lambda: fetched(h0, "origin") > MB, 30, "the holder fetching")
    following = _bg(_range, h0.url, blob.digest, 3 * MB, 5 * MB)  # follows the holder's own fetch
    relayed = _bg(_range, h1.url, blob.digest, 5 * MB + 7)         # h1 relays from h0
    _ok(_result(whole), blob)
    _check_206(_result(following), data, 3 * MB, 5 * MB)
    _check_206(_result(relayed), data, 5 * MB + 7)
    assert fetched(h1, "relay") == len(data) and _gets(origin, blob) == 1
    # From the store, and from the swarm on a fresh bridge.
    _check_206(_range(h0.url, blob.digest, 123, 456), data, 123, 456)
    _check_206(_range(h0.url, blob.digest, len(data) - 10), data, len(data) - 10)
    wait_for(lambda: _published(tracker, blob.digest), 30, "the torrent published")
    h2 = fleet.start_bridge("h2")
    _check_206(_range(h2.url, blob.digest, 2 * MB + 3, 6 * MB), data, 2 * MB + 3, 6 * MB)
    assert stats(h2)["blob_bytes"]["peer"] == 4 * MB - 2 and stats(h2)["fetched"]["origin"] == 0
    assert _gets(origin, blob) == 1
    assert status_416(h0.url, blob.digest, len(data))


def status_416(url, digest, size) -> bool:
    r = requests.get(f"{url}/v2/library/app/blobs/{digest}", headers={"Range": f"bytes={size}-"}, timeout=30)
    return r.status_code == 416
