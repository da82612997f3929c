"""500 slow connections (a byte every 10 s) on the bridge's client port and on its fleet port: a manifest
GET and a relay GET are still answered (the latency under that load is measured by scripts/bench_slowclients.py)."""
from __future__ import annotations

import time

import pytest
import requests

from layerswarm.bridge.devstack import daemons as devstack
from layerswarm.bridge.devstack import imagegen
from layerswarm.bridge.devstack.slowclients import SlowClients
from layerswarm.bridge.format.digest import Digest
from tests.fixtures import blob_bytes

pytestmark = pytest.mark.slow

ADMIN = "slow-admin"


@pytest.fixture
def stack(tmp_path, origin):
    img = imagegen.make_image((50_000,), seed=b"slow")
    imagegen.push(origin.url, "library/slow", "v1", img)
    (tmp_path / "admin").write_text(ADMIN)
    tracker = devstack.start_tracker(tmp_path / "tracker")
    bridge = devstack.start_bridge(tmp_path / "bridge", upstream=origin.url, tracker=tracker.url,
                                   extra=["--admin-token-file", tmp_path / "admin"])
    # A layer in the bridge's store, for the relay to answer.
    data = blob_bytes(3 << 20, b"relayed")
    r = requests.post(f"{bridge.url}/_layerswarm/seed", params={"size": len(data)}, data=data, timeout=60,
                      headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code in (200, 201), r.text
    yield bridge, Digest.of_bytes(data)
    bridge.stop()
    tracker.stop()


@pytest.mark.parametrize("crowded", ["client", "fleet", "both"])
def test_requests_answered_while_500_slow_clients_hold_a_port(stack, crowded):
    bridge, relayed = stack
    client_port, fleet_port = bridge.port, int(bridge.fleet_url.rsplit(":", 1)[1])
    ports = {"client": [client_port], "fleet": [fleet_port], "both": [client_port, fleet_port]}[crowded]
    n = 500 // len(ports)
    with SlowClients("127.0.0.1", ports[0], n), SlowClients("127.0.0.1", ports[-1], n if len(ports) > 1 else 0):
        time.sleep(11)   # every slow client has dripped once
        r = requests.get(f"{bridge.url}/v2/library/slow/manifests/v1", timeout=60,
                         headers={"Accept": imagegen.MT_OCI_MANIFEST + "," + imagegen.MT_DOCKER_MANIFEST})
        assert r.status_code == 200, r.text[:200]
        r = requests.get(f"{bridge.fleet_url}/_layerswarm/relay/{relayed}", timeout=60)
        assert r.status_code == 200 and Digest.of_bytes(r.content) == relayed
        assert requests.get(f"{bridge.url}/healthz", timeout=60).status_code == 200


def test_a_request_not_complete_within_the_idle_timeout_is_closed(tmp_path):
    bridge = devstack.start_bridge(tmp_path / "bridge", upstream="http://127.0.0.1:9", extra=["--idle-timeout", "3"])
    try:
        with SlowClients("127.0.0.1", bridge.port, 3, every=1) as socks:
            t0 = time.monotonic()
            for s in socks:
                s.settimeout(30)
                try:
                    while s.recv(1 << 16):   # an error answer, if any, then the close
                        pass
                except ConnectionResetError:
                    pass   # closed with the client's last bytes unread: the kernel resets instead
            assert time.monotonic() - t0 < 15
    finally:
        bridge.stop()
