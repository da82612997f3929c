"""The tracker's Redis primary dies in the middle of a rollout: Sentinel promotes the replica, the tracker follows.

Real processes: a password-protected redis-server primary and its replica,
three redis-sentinel (quorum 2, passwords of their own), a two-worker tracker
on ``redis+sentinel://``, a docker-registry origin behind a slow proxy, and
three bridges pulling one image over raw HTTP.  The replica reaches the
primary through a link the test can hold, so what the primary took after the
hold is lost in the failover, as asynchronous replication can lose it.

Printed (run with ``-s``): how long announces stopped being answered, and how
long until a lost torrent was published again and every swarm was whole.
"""
from __future__ import annotations

import threading
import time
from urllib.parse import quote_from_bytes

import bencodepy
import pytest
import redis
import requests

from layerswarm.bridge.devstack import daemons as devstack
from layerswarm.bridge.devstack import imagegen
from layerswarm.bridge.format.digest import Digest
from layerswarm.tracker.storage.redis import digest_key
from tests.fixtures import Fleet, keep, stop_all, wait_for
from tests.integration.replicalink import ReplicaLink
from tests.swarm.faultproxy import FaultProxy
from tests.swarm.helpers import REPO, pull_all
from tests.tracker.helpers import bad_torrent_for, layer

pytestmark = pytest.mark.slow

SERVICE = "layerswarm"
PASSWORD, SENTINEL_PASSWORD, TOKEN = "redis-secret", "sentinel-secret", "publish-secret"
INTERVAL, SEED_INTERVAL, WAIT_TIMEOUT = 5, 10, 2


@pytest.fixture
def sentinel_store(tmp_path):
    """Primary, replica (through a ReplicaLink), three Sentinels; ``.url`` is the tracker's --store."""
    made = []
    primary = keep(made, devstack.start_redis(tmp_path / "primary", password=PASSWORD))
    link = ReplicaLink(primary.port)
    try:
        replica = keep(made, devstack.start_redis(tmp_path / "replica", password=PASSWORD, replica_of=link.port))
        sentinels = [keep(made, devstack.start_sentinel(tmp_path / f"sentinel{i}", primary.port, SERVICE, 2,
                                                        password=PASSWORD, sentinel_password=SENTINEL_PASSWORD))
                     for i in range(3)]
        asked = redis.Redis(port=sentinels[0].port, password=SENTINEL_PASSWORD)
        wait_for(lambda: (m := asked.sentinel_master(SERVICE))["num-slaves"] == 1 and m["num-other-sentinels"] == 2,
                 timeout=60, what="the Sentinels to know the replica and each other")
        wait_for(lambda: redis.Redis(port=replica.port, password=PASSWORD).info("replication")
                 ["master_link_status"] == "up", timeout=60, what="the replica to be in sync")
        members = ",".join(f"127.0.0.1:{s.port}" for s in sentinels)
        yield type("Store", (), {"primary": primary, "replica": replica, "link": link, "sentinels": sentinels,
                                 "url": f"redis+sentinel://{members}/{SERVICE}/0"})
    finally:
        link.close()
        stop_all(made)


class AnnounceProbe:
    """A peer announcing to the tracker every quarter second: when were announces answered?"""

    def __init__(self, tracker_url: str):
        self.url = tracker_url
        self.rows = []   # (sent, answered, ok)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        qs = (f"info_hash={quote_from_bytes(b'probe-swarm-00000001', safe='')}&peer_id=-PR0001-000000000001"
              "&port=7001&uploaded=0&downloaded=0&left=1&compact=1")
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                r = requests.get(f"{self.url}/announce?{qs}", timeout=30)
                ok = b"failure reason" not in r.content and b"interval" in bencodepy.decode(r.content)
            except (requests.RequestException, ValueError):
                ok = False
            self.rows.append((sent, time.monotonic(), ok))
            time.sleep(max(0.0, sent + 0.25 - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(40)

    def outage_after(self, t: float) -> tuple:
        """From ``t`` on: (longest time without an announce answered, failed announces, slowest announce);
        an announce in flight at ``t`` counts."""
        rows = [r for r in self.rows if r[1] >= t]
        answered = [t] + [r[1] for r in rows if r[2]]
        return (max(b - a for a, b in zip(answered, answered[1:])), sum(not r[2] for r in rows),
                max(r[1] - r[0] for r in rows))


def metainfo(tracker_url: str, digest) -> requests.Response:
    return requests.get(f"{tracker_url}/metainfo/{digest}", timeout=15)


def quarantine(tracker_url: str, size: int = 300_000) -> tuple:
    """Publish a poisoned torrent for a layer nobody has and report it with the publish token: (digest,
    info-hash hex, the report's response, seconds it took)."""
    _, good = layer(size)
    bad = bad_torrent_for(good.digest, good.size)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = requests.put(f"{tracker_url}/metainfo/{good.digest}", data=bad, headers=auth, timeout=15)
    assert r.status_code == 201, r.text
    ih = r.json()["info_hash"]
    t0 = time.monotonic()
    r = requests.post(f"{tracker_url}/metainfo/{good.digest}/reports", headers=auth, timeout=30,
                      json={"info_hash": ih, "host": "checker", "reason": "pieces do not match the blob"})
    return good.digest, ih, r, time.monotonic() - t0


def test_rollout_goes_on_through_a_redis_failover(tmp_path, sentinel_store, origin):
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "redis").write_text(PASSWORD + "\n")
    (secrets / "token").write_text(TOKEN + "\n")
    tracker = devstack.start_tracker(
        tmp_path / "tracker", env={"LAYERSWARM_STORE_SENTINEL_PASSWORD": SENTINEL_PASSWORD},
        extra=["--store", sentinel_store.url, "--store-password-file", secrets / "redis", "--workers", "2",
               "--interval", INTERVAL, "--seed-interval", SEED_INTERVAL, "--lease-ttl", "10",
               "--publish-token-file", secrets / "token", "--store-wait-timeout", WAIT_TIMEOUT])
    slow_origin = FaultProxy(origin.url)
    slow_origin.rate = 1 << 20   # bytes/s per blob GET: the rollout lasts seconds, the failover lands in it
    fleet = Fleet(tmp_path, slow_origin.url, tracker.url)
    probe = None
    try:
        img = imagegen.make_image((6 << 20, 4 << 20, 2 << 20), seed=b"failover-rollout")
        imagegen.push(origin.url, REPO, "v1", img)
        digests = [b.digest for b in img.blobs]
        bridges = [fleet.start_bridge(f"h{i}", "--token-file", secrets / "token") for i in range(3)]

        # A quarantine acknowledged before the failover: the tracker answered once a replica held it.
        q_digest, q_ih, r, _ = quarantine(tracker.url)
        assert r.status_code == 200 and r.json()["quarantined"] is True

        # From here on the primary's writes reach no replica: all of them are lost in the failover.
        sentinel_store.link.hold()
        _, _, r, took = quarantine(tracker.url)
        assert r.status_code == 503 and took >= WAIT_TIMEOUT - 0.1, (r.status_code, r.text, took)

        probe = AnnounceProbe(tracker.url)
        pulls = {}
        rollout = threading.Thread(target=lambda: pulls.update(pull_all(bridges, REPO, digests)))
        rollout.start()
        smallest = min(img.layers, key=lambda b: len(b.data)).digest
        first = wait_for(lambda: (r := metainfo(tracker.url, smallest)).status_code == 200 and r, timeout=120,
                         what="the first layer's torrent to be published")
        published_ih = first.headers["X-Layerswarm-Info-Hash"]
        assert rollout.is_alive(), "the rollout ended before the failover: make the origin slower"

        sentinel_store.primary.kill()
        killed = time.monotonic()
        rollout.join(300)
        assert not rollout.is_alive()
        for (i, d), got in pulls.items():   # no failed pull
            assert not isinstance(got, Exception), f"bridge h{i} {d}: {got!r}"
            assert Digest.of_bytes(got) == d

        outage, failed, slowest = probe.outage_after(killed)
        asked = redis.Redis(port=sentinel_store.sentinels[0].port, password=SENTINEL_PASSWORD)
        assert int(asked.sentinel_master(SERVICE)["port"]) == sentinel_store.replica.port
        # The torrent published just before the failover was lost with the primary; its holder gives it back
        # on its next announce.  libtorrent backs off after failed announces whatever interval the failure
        # names: 17.5 s after one, 55 s after two (tracker_backoff 250 %), and a loaded machine's failover
        # can outlast two of the store's retries, so the wait covers the second back-off with room.
        back = wait_for(lambda: (r := metainfo(tracker.url, smallest)).status_code == 200 and r,
                        timeout=SEED_INTERVAL + 55 + 45, what="the lost torrent to be published again")
        republished = time.monotonic() - killed
        assert back.headers["X-Layerswarm-Info-Hash"] == published_ih

        last = {}

        def whole():
            last["rows"] = requests.get(f"{tracker.url}/swarms", timeout=15).json()
            seeders = {r["digest"]: r["seeders"] for r in last["rows"]}
            return all(seeders.get(str(b.digest)) == 3 for b in img.layers)   # the config blob has no torrent
        try:
            wait_for(whole, timeout=2 * SEED_INTERVAL + 60, what="every swarm to list its three seeders again")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; swarms: {last.get('rows')}") from None
        swarms_whole = time.monotonic() - killed

        # The quarantine acknowledged before the failover survived it on the promoted replica.
        assert metainfo(tracker.url, q_digest).status_code == 404
        promoted = redis.Redis(port=sentinel_store.replica.port, password=PASSWORD)
        assert promoted.sismember(digest_key(q_digest, "q"), q_ih)
        print(f"\nREDIS FAILOVER: no announce answered for {outage:.1f} s after the primary died "
              f"({failed} failed, slowest {slowest:.1f} s); lost torrent published again after {republished:.1f} s; "
              f"every swarm whole after {swarms_whole:.1f} s (interval {INTERVAL} s, seed interval "
              f"{SEED_INTERVAL} s, Sentinel down-after 2 s); origin GETs per layer "
              f"{[len(slow_origin.blob_gets(b.digest)) for b in img.layers]}")
        assert failed == 0 and outage < 20
        crashed = [b.name for b in bridges if "Exception in thread" in b.log_text(10 ** 8)]
        assert not crashed, f"uncaught exception in a bridge thread: {crashed}"
    finally:
        if probe is not None:
            probe.stop()
        fleet.close()
        slow_origin.close()
        tracker.stop()
