"""Two tracker replicas on one Redis, three bridges given both: one replica dies mid-rollout.

No pull fails and each layer still leaves the origin once: metainfo, leases and
publishes fail over to the live replica (a lease taken on the dead one is in
the shared store), and libtorrent announces to the live one as well.  Killed,
the replica refuses connections; hung (SIGSTOP), it accepts them and never
answers, so calls in flight to it wait out the tracker timeout first.
"""
from __future__ import annotations

import re
import signal
import threading
import time

import pytest
import requests

from layerswarm.bridge.devstack import daemons as devstack
from layerswarm.bridge.devstack import imagegen
from layerswarm.bridge.format import layertorrent as tf
from layerswarm.bridge.format.digest import Digest
from layerswarm.bridge.format.mediatypes import DOCKER_MANIFEST
from tests.fixtures import Fleet, origin_blob_gets, stats, wait_for
from tests.swarm.helpers import REPO

pytestmark = pytest.mark.slow


@pytest.fixture
def replicas(tmp_path, redis_url):
    """Two ``layerswarm tracker`` processes sharing one real Redis."""
    made = [devstack.start_tracker(tmp_path / f"tracker-{n}",
                                   extra=("--store", redis_url, "--interval", "5", "--lease-ttl", "10"))
            for n in "ab"]
    yield made
    for t in made:
        t.signal(signal.SIGCONT)
        t.stop()


@pytest.fixture
def replica_fleet(tmp_path, proxy, replicas):
    """Bridges on the origin (behind the fault proxy, to slow a fetch down) and both replicas."""
    f = Fleet(tmp_path, proxy.url, [t.url for t in replicas])
    yield f
    f.close()
    f.assert_no_thread_died()


def pull(bridge, img, out: list) -> None:
    """A client's pull, one request after another: the manifest by tag, then every blob; appends
    (what, HTTP status or the error, digest matches, seconds)."""
    def one(what, path, want, **kw):
        t0 = time.monotonic()
        try:
            r = requests.get(f"{bridge.url}/v2/{REPO}/{path}", timeout=180, **kw)
            out.append((what, r.status_code, Digest.of_bytes(r.content) == want, time.monotonic() - t0))
        except requests.RequestException as exc:
            out.append((what, exc, False, time.monotonic() - t0))
    one("manifest", "manifests/v1", img.manifest_digest, headers={"Accept": DOCKER_MANIFEST})
    for b in img.blobs:
        one(str(b.digest), f"blobs/{b.digest}", b.digest)


@pytest.mark.parametrize("death", ["killed", "hung"])
def test_a_replica_dies_mid_rollout_no_pull_fails_each_layer_leaves_the_origin_once(replica_fleet, replicas,
                                                                                   proxy, origin, death):
    a, b = replicas
    img = imagegen.make_image((3 << 20, 2 << 20, 3 << 19), seed=b"replica-rollout")
    imagegen.push(origin.url, REPO, "v1", img)
    layers = [str(layer.digest) for layer in img.layers]
    # The default lease TTL: a renewal that first waits out the tracker timeout (10 s) on a hung
    # replica still reaches the live one before the lease lapses.
    bridges = [replica_fleet.start_bridge(f"h{i}", "--lease-ttl", "30") for i in range(3)]
    pulls: list = [[] for _ in bridges]
    proxy.rate = 512 << 10   # h0's first layer takes ~6 s from the origin: long enough to kill a under it

    first = threading.Thread(target=pull, args=(bridges[0], img, pulls[0]))
    first.start()
    wait_for(lambda: proxy.active and len(pulls[0]) >= 2, timeout=60, what="h0 fetching its first layer")
    a.signal(signal.SIGKILL if death == "killed" else signal.SIGSTOP)   # h0 holds that layer's lease, taken on a
    t_kill = time.monotonic()
    time.sleep(0.5)
    second = threading.Thread(target=pull, args=(bridges[1], img, pulls[1]))   # asks b for the lease
    t_second = time.monotonic()
    second.start()
    first.join(180)
    second.join(180)
    proxy.rate = 0
    pull(bridges[2], img, pulls[2])     # everything published by now: the swarm, found through b

    for i, got in enumerate(pulls):
        failed = [(what, status) for what, status, ok, _ in got if status != 200 or not ok]
        assert len(got) == 1 + len(img.blobs) and not failed, (f"h{i}", failed)
    gets = origin_blob_gets(origin, REPO)
    assert all(gets.get(d) == 1 for d in layers), gets
    # h1 relayed h0's first layer under the lease h0 took on the dead replica (later layers: whichever
    # of the two asked first fetched them); h2 had every layer from peers.
    fetched = [stats(x)["fetched"] for x in bridges]
    total = sum(len(layer.data) for layer in img.layers)
    assert total <= fetched[0]["origin"] + fetched[1]["origin"] < total + (1 << 20), fetched
    assert fetched[1]["relay"] >= len(img.layers[0].data) and fetched[2]["peer"] >= total, fetched
    for x in bridges:
        log = x.log_text(10 ** 8)
        assert f"calls go to tracker {b.url}" in log, x.name
        assert "lease renewal" not in log and "tracker down" not in log, x.name
    for d in layers:   # published through b, naming both replicas
        meta = tf.parse_metainfo(requests.get(f"{b.url}/metainfo/{d}", timeout=10).content, Digest.parse(d))
        assert meta.trackers == (f"{a.url}/announce", f"{b.url}/announce")

    # Figures: blob GET times around the kill, and h2's first tracker reply per torrent (a is dead).
    replies = [float(m) for m in re.findall(r"'tracker': ([\d.]+)", bridges[2].log_text(10 ** 8))]
    for i, got in enumerate(pulls):
        print(f"h{i} manifest, then blob GETs (s): {[round(s, 2) for *_, s in got]}")
    print(f"h1 started {t_second - t_kill:.1f} s after the kill; h2 first tracker reply (s): {replies}")
