"""Peers in one process on loopback against the real tracker app: publish, seed, stream, verify."""
from __future__ import annotations

import time

import pytest

from layerswarm.bridge.format.digest import Digest
from layerswarm.bridge.format.errors import DigestMismatch, SwarmError, TorrentConflict
import requests

from layerswarm.bridge.format import layertorrent as tf
from layerswarm.bridge.format.layertorrent import parse_metainfo
from layerswarm.bridge.node.stream import stripe_priorities
from layerswarm.bridge.node.trackerclient import TrackerClient
from tests.fixtures import LocalTracker, add_blob as add, blob_bytes, run_cli, wait_for


@pytest.mark.parametrize("disk_io", ["posix", "pread", "mmap"])
def test_seed_then_stream_from_swarm(local_tracker, make_peer, disk_io, monkeypatch):
    """Every disk back-end: posix's verified pieces are read from the file (none through libtorrent), the
    others' through read_piece."""
    from layerswarm.bridge.node.torrent.session import Torrent
    asked = []
    read_piece = Torrent.read_piece
    monkeypatch.setattr(Torrent, "read_piece", lambda t, p: (asked.append(p), read_piece(t, p))[1])
    data = blob_bytes(5_000_000)
    d = Digest.of_bytes(data)
    seeder = make_peer("seeder", local_tracker.url, session={"disk_io": disk_io})
    info = add(seeder, data)
    assert info.source == "own"
    assert requests.get(f"{local_tracker.url}/metainfo/{d}", timeout=10).status_code == 200
    leech = make_peer("leech", local_tracker.url, session={"disk_io": disk_io})
    s = leech.stream(d)
    dl = s.dl
    out = b"".join(s)
    assert out == data and s.yielded == len(data)
    assert leech.store.path_if_present(d).read_bytes() == data
    assert any(x.digest == d for x in leech.seeding())
    assert dl._from_file == (disk_io == "posix") and dl.reads >= dl.n
    assert (asked == []) == (disk_io == "posix")


def test_a_new_download_takes_piece_0_first_then_every_piece_even_with_no_reader(local_tracker, make_peer):
    """The first-piece gate: piece 0 (and the last piece, so the torrent never looks finished) wanted
    at first, then every piece; a download nobody reads (prefetch) still completes — with piece 0
    alone wanted libtorrent called the torrent finished, dropped the seeder and stalled."""
    data = blob_bytes(3_000_000, b"gate")   # 12 pieces
    d = Digest.of_bytes(data)
    seeder = make_peer("seeder", local_tracker.url)
    add(seeder, data)
    leech = make_peer("leech", local_tracker.url)
    dl = leech.download(d)
    assert dl.complete.wait(30) and dl.verified
    assert leech.store.path_if_present(d).read_bytes() == data
    assert "piece0" in dl._marks and dl._gated is False
    assert leech.downloading(d) is None   # done: a request reads the store, no download to join


def test_an_open_gate_wants_every_piece_with_piece_0_still_first(local_tracker, make_peer, tmp_path):
    data = blob_bytes(3_000_000, b"gate open")   # 23 pieces; no peer has them: nothing arrives
    h = tf.PieceHasher(len(data))
    h.update(data)
    meta = tf.build_metainfo(h.digest(), len(data), h.pieces())
    t = make_peer("alone", local_tracker.url).session.add(meta.metainfo, tmp_path, first_piece_only=True)
    assert t._h.get_piece_priorities() == [7] + [0] * 21 + [1]
    t.prioritize(stripe_priorities(t.num_pieces, None, 3))
    assert t._h.get_piece_priorities() == [7] + [4] * 22


def test_leechers_starting_together_take_the_stripes_of_their_arrival(local_tracker, make_peer, tmp_path):
    """Each download's rank is the tracker's leecher count in the reply to its first announce, minus
    itself: three hosts asking before anyone seeds get ranks 0, 1, 2 and those stripes' priorities in
    libtorrent, then download the layer from the seeder and each other."""
    data = blob_bytes(3_000_000, b"stripes")
    d = Digest.of_bytes(data)
    seeder = make_peer("seeder", local_tracker.url)
    blob = tmp_path / "blob"
    blob.write_bytes(data)
    torrent = tf.torrent_for_file(blob, [local_tracker.url + "/announce"], expect=d)
    assert TrackerClient(local_tracker.url).put_metainfo(torrent)
    leeches = [make_peer(f"leech{i}", local_tracker.url) for i in range(3)]
    dls = []
    for i, leech in enumerate(leeches):   # one after the other: each announce counted before the next
        dls.append(leech.download(d))
        wait_for(lambda: dls[-1].torrent.leechers_announced() == i + 1, timeout=10,
                 what=f"leech{i}'s announce reply")
    time.sleep(0.5)   # the first piece gate (nothing arrives: nobody seeds yet)
    for dl in dls:
        dl.poll()     # what a waiting reader does
    assert all(not dl._gated for dl in dls)
    assert [dl.rank for dl in dls] == [0, 1, 2]
    for dl in dls:
        assert dl.torrent._h.get_piece_priorities() == stripe_priorities(dl.n, dl.rank, 3)
    assert add(seeder, data).info_hash == torrent.info_hash.hex
    for leech, dl in zip(leeches, dls):
        assert dl.complete.wait(60) and dl.verified
        assert leech.store.path_if_present(d).read_bytes() == data


def test_a_torrent_of_the_earlier_piece_length_published_first_is_the_one_every_host_uses(local_tracker, make_peer,
                                                                                          tmp_path):
    """A fleet upgraded host by host: an old host published the layer in 256 KiB pieces; a new host
    holding the bytes checks them in that piece length and seeds that torrent, and a new host
    downloads it: one swarm per layer.  A published torrent whose pieces do not match stays refused."""
    data = blob_bytes(3_000_000, b"upgrade")
    d = Digest.of_bytes(data)
    blob = tmp_path / "blob"
    blob.write_bytes(data)
    legacy = tf.torrent_for_file(blob, [local_tracker.url + "/announce"], expect=d, plen=tf.LEGACY_MIN_PIECE)
    assert TrackerClient(local_tracker.url).put_metainfo(legacy)
    seeder = make_peer("seeder", local_tracker.url)
    info = add(seeder, data)
    assert (info.source, info.info_hash) == ("published", legacy.info_hash.hex)
    leech = make_peer("leech", local_tracker.url)
    assert b"".join(leech.stream(d)) == data
    assert parse_metainfo(leech.store.saved_torrent(d), d).info_hash == legacy.info_hash

    other = blob_bytes(3_000_000, b"upgrade, forged")
    od = Digest.of_bytes(other)
    blob.write_bytes(other[:-1] + b"x")   # the forger's bytes: its last piece's hash is wrong
    forged = tf.build_metainfo(od, len(other), tf.torrent_for_file(blob, plen=tf.LEGACY_MIN_PIECE).pieces,
                               plen=tf.LEGACY_MIN_PIECE)
    assert TrackerClient(local_tracker.url).put_metainfo(forged)
    with pytest.raises(TorrentConflict, match="do not match"):
        add(seeder, other)
    assert od not in seeder.store


def test_a_peer_announces_to_each_of_its_trackers_and_to_no_other(make_peer):
    a, b = LocalTracker(), LocalTracker()   # separate stores here: each one's counts show who announced to it
    data = blob_bytes(2_000_000, b"two trackers")
    d = Digest.of_bytes(data)
    seeder = make_peer("seeder", [a.url, b.url])
    ih = add(seeder, data).info_hash

    def counts(t):
        return TrackerClient(t.url).scrape([ih]).get(ih, {}).get("complete", 0)
    wait_for(lambda: counts(a) == 1 and counts(b) == 1, timeout=30, what="the seeder at both trackers")
    torrent = parse_metainfo(seeder.store.saved_torrent(d), d)
    assert torrent.trackers == (a.url + "/announce", b.url + "/announce")
    # a host given only b downloads the seeder's torrent (which names a too) and announces to b only
    leech = make_peer("leech", b.url)
    assert b"".join(leech.stream(d, metainfo=torrent)) == data
    wait_for(lambda: counts(b) == 2, timeout=30, what="the new seeder at b")
    assert counts(a) == 1


@pytest.mark.tracker_config(interval=2, seed_interval=3)
def test_a_seeder_publishes_again_a_torrent_the_tracker_lost(local_tracker, make_peer):
    """The tracker's store lost a torrent (a failover before replication, a restart): the tracker
    asks the layer's seeders for it in their announce replies, and a seeder gives its own back."""
    data = blob_bytes(2_000_000, b"lost")
    d = Digest.of_bytes(data)
    seeder = make_peer("seeder", local_tracker.url, session={"min_announce_interval": 1})
    info = add(seeder, data)
    url = f"{local_tracker.url}/metainfo/{d}"
    local_tracker.app.extensions["layerswarm"].store.drop_metainfo(d, "1")   # forgotten by the tracker
    assert requests.get(url, timeout=10).status_code == 404
    t0 = time.monotonic()
    r = wait_for(lambda: (r := requests.get(url, timeout=10)).status_code == 200 and r, timeout=30,
                 what="the seeder to publish its torrent again")
    assert r.headers["X-Layerswarm-Info-Hash"] == info.info_hash
    assert time.monotonic() - t0 < 3 + 5   # the next seeder announce (seed interval 3 s) asked for it


@pytest.mark.slow
def test_a_seeder_refused_while_the_store_was_down_comes_back_soon_and_gives_back_the_lost_torrent(make_peer,
                                                                                                   tmp_path):
    """The tracker's Redis goes away and comes back empty (a restart without persistence).  A seeder's
    announce in between is refused ("storage unavailable") with the time to retry: libtorrent comes back
    after its backoff (17.5 s for a first failure), not its default of 30 minutes for a failure that
    names none, and the tracker's "unpublished" warning has the seeder give its torrent back."""
    from layerswarm.bridge.devstack import daemons as devstack
    store = devstack.start_redis(tmp_path / "redis")
    tracker = LocalTracker(store=store.url, store_retry=0, interval=2, seed_interval=3)
    try:
        data = blob_bytes(2_000_000, b"store down")
        d = Digest.of_bytes(data)
        seeder = make_peer("seeder", tracker.url, session={"min_announce_interval": 1})
        info = add(seeder, data)
        url = f"{tracker.url}/metainfo/{d}"
        assert requests.get(url, timeout=10).status_code == 200

        metrics = tracker.app.extensions["layerswarm"].metrics.registry   # /metrics needs the store

        def refused():
            return metrics.get_sample_value("layerswarm_tracker_failures_total", {"endpoint": "announce"}) == 1
        store.stop()
        wait_for(refused, timeout=20, what="the seeder's announce to be refused")
        refused_at = time.monotonic()
        store = devstack.start_redis(tmp_path / "redis-again", port=store.port)   # empty
        assert requests.get(url, timeout=10).status_code == 404
        r = wait_for(lambda: (r := requests.get(url, timeout=10)).status_code == 200 and r, timeout=40,
                     what="the seeder to announce again and publish its torrent")
        assert r.headers["X-Layerswarm-Info-Hash"] == info.info_hash
        assert time.monotonic() - refused_at < 35
    finally:
        tracker.stop()
        store.stop()


def test_libtorrent_announces_each_torrent_on_the_interval_handed_to_it(make_peer):
    """One session, two torrents: the one seeded comes back on the seed interval, the download on the
    short one (libtorrent keeps an interval per torrent and tracker)."""
    from layerswarm.bridge.devstack.threadserver import ThreadServer
    from layerswarm.tracker.app import create_app
    from tests.tracker.helpers import layer
    seen = []
    app = create_app({"interval": 2, "seed_interval": 5})
    inner = app.wsgi_app

    def record(environ, start_response):
        if environ["PATH_INFO"].startswith("/announce"):
            seen.append((time.monotonic(), "left=0&" in environ["QUERY_STRING"]))
        return inner(environ, start_response)
    app.wsgi_app = record
    tracker = ThreadServer(app)
    try:
        peer = make_peer("host", tracker.url, session={"min_announce_interval": 1})
        add(peer, blob_bytes(1_000_000, b"interval"))
        _, nobody_seeds = layer(1_000_000)
        peer.download(nobody_seeds.digest, nobody_seeds)
        assert peer.downloading(nobody_seeds.digest).info_hash == nobody_seeds.info_hash   # requests join it
        time.sleep(13)
    finally:
        tracker.stop()

    def gaps(seeder):   # between re-announces (the first one after "started" may come early)
        times = [t for t, s in seen if s == seeder][1:]
        return [b - a for a, b in zip(times, times[1:])]
    assert gaps(True) and all(4 <= g <= 7 for g in gaps(True)), gaps(True)
    assert len(gaps(False)) >= 3 and all(1.5 <= g <= 3.5 for g in gaps(False)), gaps(False)


def test_stream_from_offset(local_tracker, make_peer):
    data = blob_bytes(3_000_000, b"off")
    d = Digest.of_bytes(data)
    add(make_peer("seeder", local_tracker.url), data)
    leech = make_peer("leech", local_tracker.url)
    assert b"".join(leech.stream(d, offset=1_234_567)) == data[1_234_567:]


def test_a_reader_tells_the_hash_of_what_it_gave_out_as_its_download_hashed_it(local_tracker, make_peer):
    """What a whole answer continued from the origin is checked from (sources/swarm.py), instead of
    hashing every piece a second time: the download's whole-blob hash at the reader's position."""
    data = blob_bytes(3_000_000, b"prefix")
    d = Digest.of_bytes(data)
    add(make_peer("seeder", local_tracker.url), data)
    leech = make_peer("leech", local_tracker.url)
    s = leech.stream(d)
    it = iter(s)
    got = next(it) + next(it)
    v = s.sent_prefix(len(got))
    assert v.size == len(got) and v.actual() == Digest.of_bytes(got)
    assert s.sent_prefix(len(got) - 1) is None      # not a piece boundary
    assert s.sent_prefix(len(got) + 1) is None      # not given out yet
    rest = b"".join(it)
    assert got + rest == data and s.sent_prefix(len(data)).matches()
    stored = leech.stream(d)                           # from the store now
    assert b"".join(stored) == data and stored.sent_prefix(1000).actual() == Digest.of_bytes(data[:1000])
    assert leech.stream(d, offset=10).sent_prefix(0) is None   # a range is not a whole answer


def test_a_reader_behind_its_download_sends_the_pieces_read_for_it_in_one_chunk(local_tracker, make_peer):
    """Pieces already read for a reader go out with the piece before them (one write, one wake-up)."""
    data = blob_bytes(3_000_000, b"runs")
    d = Digest.of_bytes(data)
    add(make_peer("seeder", local_tracker.url), data)
    leech = make_peer("leech", local_tracker.url)
    s = leech.stream(d)
    plen = s.dl.lt.piece_length
    it = iter(s)
    first = next(it)                      # asks for pieces 0..prefetch
    deadline = time.monotonic() + 30
    while len(s.dl._bufs[s._token]) < s.dl.cfg.prefetch and time.monotonic() < deadline:
        time.sleep(0.05)                  # the pieces after the one sent are read for the reader meanwhile
    second = next(it)
    assert len(first) % plen == 0 and len(second) >= s.dl.cfg.prefetch * plen
    assert first + second + b"".join(it) == data


def test_stall_without_peers_raises_swarm_error(local_tracker, make_peer, tmp_path):
    data = blob_bytes(2_000_000, b"stall")
    d = Digest.of_bytes(data)
    seeder = make_peer("seeder", local_tracker.url)
    add(seeder, data)
    seeder.close()  # the only seeder is gone: metainfo published, nobody to fetch from
    leech = make_peer("leech", local_tracker.url, stall_timeout=2)
    s = leech.stream(d)
    t0 = time.monotonic()
    with pytest.raises(SwarmError, match="stalled"):
        b"".join(s)
    assert time.monotonic() - t0 < 10 and s.yielded == 0


def test_restart_seeds_without_recheck(local_tracker, make_peer, tmp_path):
    from layerswarm.bridge.node.torrent import alerts as ev
    data = blob_bytes(2_000_000, b"restart")
    d = Digest.of_bytes(data)
    first = make_peer("host", local_tracker.url)
    add(first, data)
    first.close()
    again = make_peer("host", local_tracker.url)
    states = []
    again.session.dispatcher.subscribe(str(d), lambda e: e.kind == ev.STATE and states.append(e.data["state"]))
    infos = again.seed_stored()
    assert [(i.digest, i.source) for i in infos] == [(d, "record")]
    assert again.store.rehashed == []
    time.sleep(1.0)
    assert not any("checking" in s for s in states), states
    assert again.session.get(str(d)).status()["is_seeding"]
    leech = make_peer("leech", local_tracker.url)
    assert b"".join(leech.stream(d)) == data


def test_eviction_stops_seeding(local_tracker, make_peer):
    p = make_peer("small", local_tracker.url, cache_max=5_000_000)
    a = blob_bytes(2_000_000, b"ea")
    add(p, a)
    add(p, blob_bytes(2_000_000, b"eb"))
    add(p, blob_bytes(2_000_000, b"ec"))
    da = Digest.of_bytes(a)
    assert da not in p.store and p.session.get(str(da)) is None
    assert da not in {s.digest for s in p.seeding()} and len(p.seeding()) == 2


@pytest.mark.tracker_config(quarantine_reports=1)
def test_poisoned_torrent_raises_digest_mismatch_and_reports(local_tracker, make_peer, tmp_path):
    from layerswarm.bridge.format import layertorrent as tf
    real = blob_bytes(1_000_000, b"real")
    evil = blob_bytes(1_000_000, b"evil")
    d = Digest.of_bytes(real)
    h = tf.PieceHasher(len(evil))
    h.update(evil)
    poisoned = tf.build_metainfo(d, len(evil), h.pieces(), [local_tracker.url + "/announce"])
    meta_url = f"{local_tracker.url}/metainfo/{d}"
    assert requests.put(meta_url, data=poisoned.metainfo, timeout=10).status_code == 201
    bad = make_peer("bad", local_tracker.url)
    (bad.store.layers_dir / str(d)).write_bytes(evil)  # the evil seeder serves pieces that match the torrent
    bad.session.add(poisoned.metainfo, bad.store.layers_dir, seed_mode=True, trackers=[local_tracker.url + "/announce"])
    leech = make_peer("victim", local_tracker.url)
    s = leech.stream(d)
    with pytest.raises(DigestMismatch):
        for _ in s:
            pass
    assert s.yielded < len(evil)  # the last piece is withheld: no clean end
    deadline = time.monotonic() + 5
    while list(leech.store.downloads_dir.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert d not in leech.store and not list(leech.store.downloads_dir.iterdir())
    # One report quarantines: the victim reported exactly the published (poisoned) torrent.
    while requests.get(meta_url, timeout=10).status_code != 404 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert requests.get(meta_url, timeout=10).status_code == 404
    assert requests.put(meta_url, data=poisoned.metainfo, timeout=10).status_code == 409


def test_seed_via_bridge_admin_endpoint(local_tracker, make_peer, thread_server, tmp_path):
    import flask
    from layerswarm.bridge.http import admin
    p = make_peer("bridge", local_tracker.url)
    app = flask.Flask("t")
    app.register_blueprint(admin.make_blueprint(p))
    srv = thread_server(app)
    data = blob_bytes(700_000, b"viabridge")
    f = tmp_path / "blob"
    f.write_bytes(data)
    r = run_cli("seed", f, "--tracker", local_tracker.url, "--bridge", srv.url)
    assert r.returncode == 0, r.stderr
    d = Digest.of_bytes(data)
    assert str(d) in r.stdout and d in p.store and d in {s.digest for s in p.seeding()}


def test_admin_token_reaches_the_admin_views(local_tracker, tmp_path):
    """``layerswarm bridge --admin-token T``: admin views answer 401 without it, and nothing is stored."""
    from tests.fixtures import bridge_app
    app = bridge_app("--store-dir", tmp_path / "store", "--tracker", local_tracker.url,
                     "--peer-listen", "127.0.0.1:0", "--admin-token", "s3cret")
    peer = app.extensions["layerswarm"].peer
    try:
        c = app.test_client()
        data = blob_bytes(300_000, b"admin")
        d = Digest.of_bytes(data)
        url = f"/_layerswarm/seed?size={len(data)}&digest={d}"
        assert c.post(url, data=data).status_code == 401
        assert c.post(url, data=data, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert d not in peer.store and not peer.seeding()
        assert c.get("/_layerswarm/status").status_code == 401
        assert c.get(f"/_layerswarm/layers/{d}").status_code == 401
        for open_path in ("/healthz", "/metrics", "/_layerswarm/stats"):
            assert c.get(open_path).status_code == 200, open_path
        r = c.post(url, data=data, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 201, r.get_json()
        assert d in peer.store
        assert c.get("/_layerswarm/status", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    finally:
        peer.close()
