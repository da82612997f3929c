"""One storage contract, one suite, every backend (memory and a real redis-server)."""
from __future__ import annotations

import dataclasses
import os
import time

import pytest

from layerswarm.bridge.format.digest import Digest, InfoHash
from layerswarm.tracker.protocol import AnnounceRequest, pack_addr
from layerswarm.tracker.storage import open_store
from layerswarm.tracker.storage.base import (CONFLICT, CREATED, EXISTS, REJECTED, UNQUARANTINED, LeaseTableFull, Limits,
                                             MetainfoRecord)
from layerswarm.tracker.storage.redis import swarm_keys
from tests.fixtures import STORE_BACKENDS, store_url

NOW = 1_000_000.0
TTL = 120.0


def req(ih: bytes, n: int, left: int = 10, event: str = "", numwant: int = 50, ip="127.0.0.1") -> AnnounceRequest:
    return AnnounceRequest(info_hash=ih, peer_id=b"-T0001-%013d" % n, addr=pack_addr(ip, 10000 + n),
                           left=left, uploaded=0, downloaded=0, event=event, numwant=numwant, compact=True,
                           no_peer_id=False)


def ih() -> bytes:
    return os.urandom(20)


def test_announce_hands_others_never_self(tracker_store):
    h = ih()
    peers, counts, _ = tracker_store.announce(req(h, 1, event="started"), TTL, NOW)
    assert peers == [] and (counts.complete, counts.incomplete) == (0, 1)
    peers, counts, _ = tracker_store.announce(req(h, 2, event="started"), TTL, NOW)
    assert [(p[:20], a) for p, a in peers] == [(b"-T0001-%013d" % 1, pack_addr("127.0.0.1", 10001))]
    assert (counts.complete, counts.incomplete) == (0, 2)
    # re-announce does not duplicate
    peers, counts, _ = tracker_store.announce(req(h, 2), TTL, NOW + 1)
    assert len(peers) == 1 and counts.incomplete == 2


def test_seeders_get_only_leechers(tracker_store):
    h = ih()
    for n in range(5):
        tracker_store.announce(req(h, n, left=0), TTL, NOW)
    tracker_store.announce(req(h, 100, left=5), TTL, NOW)
    peers, counts, _ = tracker_store.announce(req(h, 6, left=0), TTL, NOW)
    assert [p[:20] for p, _ in peers] == [b"-T0001-%013d" % 100]
    assert (counts.complete, counts.incomplete) == (6, 1)
    peers, _, _ = tracker_store.announce(req(h, 101, left=5), TTL, NOW)
    assert len(peers) == 7  # a leecher gets seeders and the other leecher


def test_numwant_bounds_reply_in_large_swarm(tracker_store):
    h = ih()
    for n in range(300):
        tracker_store.announce(req(h, n), TTL, NOW)
    peers, counts, _ = tracker_store.announce(req(h, 999, numwant=30), TTL, NOW)
    assert len(peers) == 30 and len(set(peers)) == 30 and counts.incomplete == 301
    assert all(p[:20] != b"-T0001-%013d" % 999 for p, _ in peers)
    peers, _, _ = tracker_store.announce(req(h, 999, numwant=0), TTL, NOW)
    assert peers == []


def test_stopped_and_completed(tracker_store):
    h = ih()
    tracker_store.announce(req(h, 1, event="started"), TTL, NOW)
    tracker_store.announce(req(h, 2, event="started"), TTL, NOW)
    _, c, _ = tracker_store.announce(req(h, 1, left=0, event="completed"), TTL, NOW)
    assert (c.complete, c.incomplete, c.downloaded) == (1, 1, 1)
    _, c, _ = tracker_store.announce(req(h, 1, left=0, event="completed"), TTL, NOW)  # repeated: counted once
    assert c.downloaded == 1
    peers, c, _ = tracker_store.announce(req(h, 2, event="stopped"), TTL, NOW)
    assert peers == [] and (c.complete, c.incomplete) == (1, 0)
    assert tracker_store.scrape([h], NOW)[h].downloaded == 1
    # a known leecher stopping with nothing left completed too (aria2c --seed-time=0 does this)
    tracker_store.announce(req(h, 3, event="started"), TTL, NOW)
    _, c, _ = tracker_store.announce(req(h, 3, left=0, event="stopped"), TTL, NOW)
    assert c.downloaded == 2 and c.complete == 1
    _, c, _ = tracker_store.announce(req(h, 4, left=0, event="started"), TTL, NOW)  # a seeder from the start did not
    assert c.downloaded == 2


def test_a_replayed_peer_id_from_another_address_cannot_remove_a_seeder(tracker_store):
    h = ih()
    tracker_store.announce(req(h, 1, left=0, event="started"), TTL, NOW)
    _, c, _ = tracker_store.announce(req(h, 1, left=0, event="stopped", ip="127.0.0.66"), TTL, NOW)
    assert c.complete == 1
    peers, _, _ = tracker_store.announce(req(h, 2), TTL, NOW)
    assert [p[:20] for p, _ in peers] == [b"-T0001-%013d" % 1]


def test_peers_expire_after_ttl(tracker_store):
    h = ih()
    tracker_store.announce(req(h, 1), TTL, NOW)
    tracker_store.announce(req(h, 2), TTL, NOW + 100)
    peers, c, _ = tracker_store.announce(req(h, 3), TTL, NOW + TTL + 1)  # peer 1 is gone, peer 2 is not
    assert [p[:20] for p, _ in peers] == [b"-T0001-%013d" % 2] and c.incomplete == 2
    assert tracker_store.scrape([h], NOW + TTL + 200)[h].incomplete == 0


def test_each_peer_expires_after_its_own_ttl(tracker_store):
    """Seeders are handed a long interval, downloads a short one: a seeder announced first must not keep
    later downloads alive, and a download's short TTL must not cut the seeder's."""
    h, long_ttl = ih(), 15 * TTL
    tracker_store.announce(req(h, 1, left=0), long_ttl, NOW)
    tracker_store.announce(req(h, 2), TTL, NOW + 10)
    tracker_store.announce(req(h, 3), TTL, NOW + 20)
    got = tracker_store.scrape([h], NOW + 10 + TTL + 1)[h]
    assert (got.complete, got.incomplete) == (1, 1)           # download 2 expired behind the seeder
    peers, c, _ = tracker_store.announce(req(h, 4), TTL, NOW + 5 * TTL)
    assert [p[:20] for p, _ in peers] == [b"-T0001-%013d" % 1] and (c.complete, c.incomplete) == (1, 1)
    assert tracker_store.scrape([h], NOW + long_ttl + 1)[h].complete == 0


def test_announces_say_whether_the_torrent_is_published(tracker_store):
    d, h = Digest.of_bytes(os.urandom(8)), ih()
    assert tracker_store.announce(req(h, 1, left=0), TTL, NOW)[2] is False
    r = dataclasses.replace(rec(d, h.hex()), published_at=NOW)
    assert tracker_store.put_metainfo(r)[0] == CREATED
    assert tracker_store.announce(req(h, 1, left=0), TTL, NOW + 1)[2] is True
    tracker_store.drop_metainfo(d, "1")
    assert tracker_store.announce(req(h, 1, left=0), TTL, NOW + 2)[2] is False
    assert tracker_store.put_metainfo(r)[0] == CREATED   # a seeder gave it back
    assert tracker_store.announce(req(h, 2, left=0), TTL, NOW + 3)[2] is True
    assert tracker_store.report(d, InfoHash.from_hex(h.hex()), "h1", True, 3)
    assert tracker_store.announce(req(h, 2, left=0), TTL, NOW + 4)[2] is False
    # published before anyone announced: the first seeder already hears it is published
    d2, h2 = Digest.of_bytes(os.urandom(8)), ih()
    assert tracker_store.put_metainfo(dataclasses.replace(rec(d2, h2.hex()), published_at=NOW))[0] == CREATED
    assert tracker_store.announce(req(h2, 1, left=0), TTL, NOW + 5)[2] is True


def test_scrape_and_swarms(tracker_store):
    a, b, unknown = ih(), ih(), ih()
    tracker_store.announce(req(a, 1, left=0), TTL, NOW)
    tracker_store.announce(req(b, 1), TTL, NOW)
    tracker_store.announce(req(b, 2), TTL, NOW)
    got = tracker_store.scrape([a, b, unknown], NOW)
    assert (got[a].complete, got[b].incomplete, got[unknown].incomplete) == (1, 2, 0)
    everything = tracker_store.scrape(None, NOW)
    assert a in everything and b in everything
    sw = {s.info_hash: s for s in tracker_store.swarms(NOW)}
    assert sw[b].leechers == 2 and sw[a].seeders == 1 and sw[a].last_announce == NOW


SSL_KIND = "2:" + "ca" * 16   # SSL torrents of some fleet CA (layertorrent.torrent_kind)


def rec(d: Digest, ih_hex: str, kind: str = "1") -> MetainfoRecord:
    return MetainfoRecord(digest=d, info_hash=InfoHash.from_hex(ih_hex), size=10, format=int(kind[0]), kind=kind,
                          data=b"torrent-" + ih_hex.encode(), published_at=NOW)


def test_metainfo_first_write_wins_and_quarantine(tracker_store):
    d = Digest.of_bytes(os.urandom(8))
    good, bad = "aa" * 20, "bb" * 20
    assert tracker_store.put_metainfo(rec(d, bad)) == (CREATED, InfoHash.from_hex(bad))
    assert tracker_store.put_metainfo(rec(d, bad))[0] == EXISTS
    assert tracker_store.put_metainfo(rec(d, good)) == (CONFLICT, InfoHash.from_hex(bad))
    assert tracker_store.get_metainfo(d, "1").data == b"torrent-" + bad.encode()
    assert (d, "1", InfoHash.from_hex(bad), 10) in tracker_store.list_metainfo()
    # reports about another torrent change nothing; two distinct hosts quarantine (threshold 2)
    assert tracker_store.report(d, InfoHash.from_hex(good), "h1", False, 2) is False
    assert tracker_store.report(d, InfoHash.from_hex(bad), "h1", False, 2) is False
    assert tracker_store.report(d, InfoHash.from_hex(bad), "h1", False, 2) is False  # same host again
    assert tracker_store.get_metainfo(d, "1") is not None
    assert tracker_store.report(d, InfoHash.from_hex(bad), "h2", False, 2) is True
    assert tracker_store.get_metainfo(d, "1") is None and all(m[0] != d for m in tracker_store.list_metainfo())
    assert tracker_store.put_metainfo(rec(d, bad))[0] == REJECTED  # never again
    assert tracker_store.put_metainfo(rec(d, good))[0] == CREATED


def test_trusted_report_quarantines_at_once(tracker_store):
    d = Digest.of_bytes(os.urandom(8))
    tracker_store.put_metainfo(rec(d, "cc" * 20))
    assert tracker_store.report(d, InfoHash.from_hex("cc" * 20), "ops", True, 100) is True
    assert tracker_store.get_metainfo(d, "1") is None


def test_a_publish_that_lifts_the_quarantine_serves_the_torrent_again(tracker_store):
    d = Digest.of_bytes(os.urandom(8))
    wrongly, bad = InfoHash.from_hex("dd" * 20), InfoHash.from_hex("ee" * 20)
    tracker_store.put_metainfo(rec(d, bad.hex))
    assert tracker_store.report(d, bad, "ops", True, 2) is True
    tracker_store.put_metainfo(rec(d, wrongly.hex))
    assert tracker_store.report(d, wrongly, "h1", False, 2) is False
    assert tracker_store.report(d, wrongly, "ops", True, 2) is True     # two torrents quarantined for d
    assert tracker_store.put_metainfo(rec(d, wrongly.hex))[0] == REJECTED
    assert tracker_store.put_metainfo(rec(d, wrongly.hex), lift_quarantine=True) == (UNQUARANTINED, wrongly)
    assert tracker_store.get_metainfo(d, "1").data == b"torrent-" + wrongly.hex.encode()
    assert (d, "1", wrongly, 10) in tracker_store.list_metainfo()
    assert tracker_store.put_metainfo(rec(d, wrongly.hex))[0] == EXISTS
    assert tracker_store.put_metainfo(rec(d, bad.hex))[0] == REJECTED  # the other one stays quarantined
    # reports count from zero: h1's report went with the quarantine
    assert tracker_store.report(d, wrongly, "h2", False, 2) is False
    assert tracker_store.report(d, wrongly, "h3", False, 2) is True
    assert tracker_store.put_metainfo(rec(d, wrongly.hex))[0] == REJECTED


def test_lifting_a_quarantine_while_another_torrent_holds_the_digest_changes_nothing(tracker_store):
    d = Digest.of_bytes(os.urandom(8))
    old, new = InfoHash.from_hex("ab" * 20), InfoHash.from_hex("cd" * 20)
    tracker_store.put_metainfo(rec(d, old.hex))
    assert tracker_store.report(d, old, "ops", True, 2) is True
    assert tracker_store.put_metainfo(rec(d, new.hex))[0] == CREATED
    assert tracker_store.put_metainfo(rec(d, old.hex), lift_quarantine=True) == (CONFLICT, new)
    assert tracker_store.get_metainfo(d, "1").info_hash == new
    assert tracker_store.report(d, new, "ops", True, 2) is True
    assert tracker_store.put_metainfo(rec(d, old.hex))[0] == REJECTED   # still quarantined


def test_a_digest_holds_one_torrent_per_kind_and_a_report_finds_its_kind(tracker_store):
    d = Digest.of_bytes(os.urandom(8))
    open_ih, ssl_ih = InfoHash.from_hex("a1" * 20), InfoHash.from_hex("b2" * 20)
    assert tracker_store.put_metainfo(rec(d, open_ih.hex)) == (CREATED, open_ih)
    assert tracker_store.put_metainfo(rec(d, ssl_ih.hex, SSL_KIND)) == (CREATED, ssl_ih)
    assert tracker_store.put_metainfo(rec(d, "c3" * 20, SSL_KIND)) == (CONFLICT, ssl_ih)   # first of its kind wins
    assert tracker_store.get_metainfo(d, "1").data == b"torrent-" + open_ih.hex.encode()
    got = tracker_store.get_metainfo(d, SSL_KIND)
    assert (got.info_hash, got.kind, got.format) == (ssl_ih, SSL_KIND, 2)
    assert tracker_store.get_metainfo(d, "2:" + "00" * 16) is None
    listed = {m for m in tracker_store.list_metainfo() if m[0] == d}
    assert listed == {(d, "1", open_ih, 10), (d, SSL_KIND, ssl_ih, 10)}
    # a report quarantines the torrent with its info-hash, whichever kind; the other stays
    assert tracker_store.report(d, ssl_ih, "ops", True, 2) is True
    assert tracker_store.get_metainfo(d, SSL_KIND) is None and tracker_store.get_metainfo(d, "1") is not None
    assert tracker_store.put_metainfo(rec(d, ssl_ih.hex, SSL_KIND))[0] == REJECTED
    assert tracker_store.put_metainfo(rec(d, "c3" * 20, SSL_KIND))[0] == CREATED
    # a dropped kind goes alone; the digest goes with its last torrent
    tracker_store.drop_metainfo(d, "1")
    assert tracker_store.get_metainfo(d, "1") is None and tracker_store.get_metainfo(d, SSL_KIND) is not None
    tracker_store.drop_metainfo(d, SSL_KIND)
    tracker_store.drop_metainfo(d, SSL_KIND)   # dropping what is gone is fine
    assert all(m[0] != d for m in tracker_store.list_metainfo())
    assert tracker_store.put_metainfo(rec(d, open_ih.hex)) == (CREATED, open_ih)


def test_manifests_immutable(tracker_store):
    d = Digest.of_bytes(b"{}")
    assert tracker_store.get_manifest(d) is None
    assert tracker_store.put_manifest(d, "application/vnd.oci.image.manifest.v1+json", b"{}") is True
    assert tracker_store.put_manifest(d, "text/plain", b"{}") is False
    assert tracker_store.get_manifest(d) == ("application/vnd.oci.image.manifest.v1+json", b"{}")


def test_lease_holder_relay_tree(tracker_store):
    d = Digest.of_bytes(os.urandom(8))
    import time
    now = time.time()  # Redis lease keys expire by wall clock
    url = "http://{}:5000".format
    assert tracker_store.acquire_lease(d, "a", url("a"), 30, 2, now)["role"] == "holder"
    src = {}
    for h in "bcdefg":
        ans = tracker_store.acquire_lease(d, h, url(h), 30, 2, now)
        assert ans["role"] == "relay"
        src[h] = ans["source"]["host"]
        assert ans["source"]["url"] == url(src[h])
    # each new relay streams from the open node that uploads least (ties: the shallowest), within two
    # levels of a breadth-first tree's depth: here every node sends the layer once but a, sent twice
    # once the others sat too deep (a breadth-first tree: a<-b,c ; b<-d,e ; c<-f,g)
    assert src == {"b": "a", "c": "b", "d": "c", "e": "d", "f": "a", "g": "f"}
    assert tracker_store.acquire_lease(d, "e", url("e"), 30, 2, now)["source"]["host"] == "d"  # stable answer
    assert tracker_store.acquire_lease(d, "a", url("a"), 30, 2, now)["role"] == "holder"


def test_lease_trees_of_layers_asked_together_spread_the_uploads(tracker_store):
    """A fleet asks for an image's layers at once: arrival order alone would build the same
    breadth-first tree for every layer, so a, b and c would each send 3 layers twice (6 uploads) while
    the rest send nothing. Counting each host's uploads across live trees spreads them."""
    import time
    now = time.time()
    layers = [Digest.of_bytes(os.urandom(8)) for _ in range(3)]
    uploads: dict = {}
    for h in "abcdefgh":
        for d in layers:
            ans = tracker_store.acquire_lease(d, h, f"http://{h}", 30, 2, now)
            if ans["role"] == "relay":
                uploads[ans["source"]["host"]] = uploads.get(ans["source"]["host"], 0) + 1
    assert sum(uploads.values()) == 3 * 7
    assert max(uploads.values()) == 4 and len(uploads) == 6, uploads


def test_lease_uploads_count_while_their_lease_lives(tracker_store):
    """Host a uploads in lease x; in lease y a newcomer picks between the holder h and a (each
    sending once): h while x counts (tie: the shallower), a once x's upload ended (its holder or the
    relay released it, or it expired)."""
    import time
    now = time.time()

    def newcomer_source(end_x) -> str:
        x, y = Digest.of_bytes(os.urandom(8)), Digest.of_bytes(os.urandom(8))
        a, b, h = (f"{n}{x.hex[:8]}" for n in "abh")   # hosts of their own: loads add up across trees
        tracker_store.acquire_lease(x, a, "http://a", 30, 2, now)
        tracker_store.acquire_lease(x, b, "http://b", 30, 2, now)          # a -> b in x
        tracker_store.acquire_lease(y, h, "http://h", 60, 2, now)
        assert tracker_store.acquire_lease(y, a, "http://a", 60, 2, now)["source"]["host"] == h
        at = end_x(x, a, b)
        return tracker_store.acquire_lease(y, b, "http://b", 60, 2, at)["source"]["host"][0]

    assert newcomer_source(lambda x, a, b: now) == "h"
    assert newcomer_source(lambda x, a, b: tracker_store.renew_lease(x, a, 60, now) and now + 31) == "h"
    assert newcomer_source(lambda x, a, b: tracker_store.release_lease(x, a, now) and now) == "a"
    assert newcomer_source(lambda x, a, b: tracker_store.release_lease(x, b, now) and now) == "a"
    assert newcomer_source(lambda x, a, b: now + 31) == "a"


def test_lease_renew_release_expire(tracker_store):
    d = Digest.of_bytes(os.urandom(8))
    import time
    now = time.time()
    tracker_store.acquire_lease(d, "a", "http://a", 30, 3, now)
    assert tracker_store.renew_lease(d, "a", 30, now + 10) is True
    assert tracker_store.renew_lease(d, "b", 30, now + 10) is False
    tracker_store.acquire_lease(d, "b", "http://b", 30, 3, now)
    assert tracker_store.release_lease(d, "b", now) is True  # a relay leaves
    assert tracker_store.release_lease(d, "a", now) is True  # holder gone: next asker holds it
    assert tracker_store.acquire_lease(d, "b", "http://b", 30, 3, now)["role"] == "holder"
    # expired lease (holder crashed): a new requester becomes the holder
    assert tracker_store.acquire_lease(d, "c", "http://c", 30, 3, now + 31)["role"] == "holder"
    assert tracker_store.renew_lease(d, "b", 30, now + 32) is False


def test_concurrent_lease_and_publish_have_one_winner(tracker_store):
    """Races resolved in the tracker_store (Lua / WATCH on Redis, the lock in memory)."""
    import time
    from concurrent.futures import ThreadPoolExecutor
    d = Digest.of_bytes(os.urandom(8))
    now = time.time()
    with ThreadPoolExecutor(8) as pool:
        roles = list(pool.map(lambda i: tracker_store.acquire_lease(d, f"h{i}", f"http://h{i}", 30, 2, now)["role"],
                              range(24)))
        assert roles.count("holder") == 1
        results = list(pool.map(lambda i: tracker_store.put_metainfo(rec(d, "%040x" % (i + 1)))[0], range(16)))
        assert results.count(CREATED) == 1 and results.count(CONFLICT) == 15


SMALL = Limits(max_swarms=3, idle_swarm_ttl=50, max_torrents=2, max_manifests=2, max_leases=2, max_relays=2,
               max_reports=2, max_report_hosts=3)


@pytest.fixture(params=STORE_BACKENDS)
def small(request):
    """A store of each backend with tiny limits: what outsiders (or a token holder) can grow is bounded."""
    s = open_store(store_url(request), SMALL)
    yield s
    s.close()


def test_swarms_are_bounded_and_idle_counters_expire(small):
    hashes = [ih() for _ in range(5)]
    for i, h in enumerate(hashes):
        small.announce(req(h, i, left=0, event="completed"), TTL, NOW + i)
    listed = {s.info_hash for s in small.swarms(NOW + 5)}
    assert listed == set(hashes[2:])          # the least recently announced went first
    # completed counters of a swarm whose peers left expire after idle_swarm_ttl
    small.announce(req(hashes[4], 4, left=0, event="stopped"), TTL, NOW + 6)
    later = NOW + 6 + TTL + SMALL.idle_swarm_ttl + 1
    assert hashes[4] not in {s.info_hash for s in small.swarms(later)}


def test_torrents_manifests_and_reports_are_bounded(small):
    digests = [Digest.of_bytes(os.urandom(8)) for _ in range(3)]
    for i, d in enumerate(digests):   # published one after another: the first is the oldest
        r = rec(d, f"{i + 1:02x}" * 20)
        assert small.put_metainfo(dataclasses.replace(r, published_at=NOW + i))[0] == CREATED
    assert small.get_metainfo(digests[0], "1") is None and small.get_metainfo(digests[2], "1") is not None
    assert len(small.list_metainfo()) == 2
    bodies = [os.urandom(16) for _ in range(3)]
    for b in bodies:
        assert small.put_manifest(Digest.of_bytes(b), "application/vnd.oci.image.manifest.v1+json", b)
    assert small.get_manifest(Digest.of_bytes(bodies[0])) is None
    assert small.get_manifest(Digest.of_bytes(bodies[2]))[1] == bodies[2]
    # report records: bounded in number and in hosts per record; quarantine still works
    d = digests[2]
    published = small.get_metainfo(d, "1").info_hash
    for n in range(5):
        small.report(Digest.of_bytes(os.urandom(8)), InfoHash.from_hex("ee" * 20), f"h{n}", False, 99)
    for n in range(10):
        assert small.report(d, published, f"host{n}", False, 99) is False   # 3 hosts remembered at most
    assert small.report(d, published, "ops", True, 99) is True


def test_leases_bounded_new_ones_refused_and_relay_trees_capped(small):
    d1, d2, d3 = (Digest.of_bytes(os.urandom(8)) for _ in range(3))
    now = time.time()  # Redis lease keys expire by wall clock
    assert small.acquire_lease(d1, "a", "http://a", 30, 2, now)["role"] == "holder"
    assert small.acquire_lease(d2, "a", "http://a", 30, 2, now)["role"] == "holder"
    with pytest.raises(LeaseTableFull):
        small.acquire_lease(d3, "a", "http://a", 30, 2, now)
    assert small.acquire_lease(d1, "b", "http://b", 30, 2, now)["role"] == "relay"   # existing lease: fine
    assert small.acquire_lease(d1, "c", "http://c", 30, 2, now)["role"] == "relay"
    assert small.acquire_lease(d1, "d", "http://d", 30, 2, now) == {"role": "origin"}  # tree full
    # expired leases free their slots
    assert small.acquire_lease(d3, "a", "http://a", 30, 2, now + 31)["role"] == "holder"


@pytest.mark.slow
def test_redis_swarm_keys_live_as_long_as_their_longest_lived_peer(redis_url):
    """Redis also drops a swarm's keys by EXPIRE: a download's short TTL must not shorten a seeder's."""
    s = open_store(redis_url)
    h = ih()
    s.announce(req(h, 1, left=0), 3600, time.time())
    s.announce(req(h, 2), 60, time.time())
    seeders, leechers, expiries, counters = swarm_keys(h.hex())
    ttls = [s.r.ttl(k) for k in (seeders, expiries, counters)]
    assert all(t > 3500 for t in ttls), ttls
    assert 0 < s.r.ttl(leechers) <= 60   # the downloads alone
    s.close()


def test_relay_loads_are_bounded_by_live_leases(small):
    """What a lease tree adds to the relay loads goes with the lease: released, or expired (on Redis
    the load key expires with its last lease; in memory the sweep drops it)."""
    now = time.time()
    d1, d2 = Digest.of_bytes(os.urandom(8)), Digest.of_bytes(os.urandom(8))
    small.acquire_lease(d1, "a", "http://a", 30, 2, now)
    small.acquire_lease(d1, "b", "http://b", 30, 2, now)
    small.acquire_lease(d2, "a", "http://a", 5, 2, now)
    small.acquire_lease(d2, "c", "http://c", 5, 2, now)
    if hasattr(small, "r"):
        from layerswarm.tracker.storage.redis import relay_key
        assert small.r.zcard(relay_key("a")) == 2 and 0 < small.r.pttl(relay_key("a")) <= 30_000
        small.release_lease(d1, "a", now)
        assert small.r.zcard(relay_key("a")) == 1   # the key outlives it by at most 25 s: bounded
        small.release_lease(d2, "c", now)
        assert not small.r.exists(relay_key("a"))
    else:
        assert small._relay_load(["a"], now) == {"a": 2}
        small.release_lease(d1, "a", now)
        small.scrape(None, now + 6)   # a sweep: d2's upload expired
        assert small._relaying == {}
