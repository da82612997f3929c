"""Disk health with a real small disk: a full store fails readiness (``/readyz``, a gauge), never liveness."""
from __future__ import annotations

import errno

import pytest
import requests

from tests.fixtures import stats, wait_for
from tests.swarm.helpers import get, push_layer

pytestmark = pytest.mark.slow

MB = 1 << 20


def _gauge(bridge, name: str) -> float:
    for line in requests.get(bridge.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not on /metrics")


def _fill(path) -> None:
    """Write ``path`` until the filesystem is full."""
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * (64 << 10))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


def test_a_full_disk_fails_readiness_while_liveness_and_serving_go_on(small_disk, fleet, origin):
    b = fleet.start_bridge("h0", "--disk-free-min", "2M", store=small_disk)
    r = requests.get(b.url + "/readyz", timeout=10)
    assert r.status_code == 200 and r.json()["ready"], r.text
    assert _gauge(b, "layerswarm_bridge_ready") == 1 and _gauge(b, "layerswarm_bridge_store_free_bytes") > 2 * MB

    _fill(small_disk / "filler")   # something else on the host filled the disk
    r = requests.get(b.url + "/readyz", timeout=10)
    assert r.status_code == 503 and not r.json()["ready"] and "below the floor" in r.json()["problems"][0], r.text
    assert _gauge(b, "layerswarm_bridge_ready") == 0 and _gauge(b, "layerswarm_bridge_store_free_bytes") < 2 * MB
    assert requests.get(b.url + "/healthz", timeout=10).status_code == 200   # alive: no restart loop
    blob = push_layer(origin.url, 3 * MB, b"full-disk")
    status, body, err = get(b.url, blob.digest)                            # and still serving
    assert err is None and status == 200 and len(body) == len(blob.data)
    assert stats(b)["blob_bytes"]["origin"] == len(blob.data)

    (small_disk / "filler").unlink()
    wait_for(lambda: requests.get(b.url + "/readyz", timeout=10).status_code == 200, 10, "ready again")
    assert _gauge(b, "layerswarm_bridge_ready") == 1
