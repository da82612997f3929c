"""500 slow connections (a byte every 10 s) do not stall the tracker: an announce is still answered.

The tracker's gevent workers drop a connection without a whole request after their keep-alive
time (5 s); the crowd replaces every dropped connection at once, as an attacker's would."""
from __future__ import annotations

import time

import bencodepy
import pytest
import requests

from layerswarm.bridge.devstack import daemons as devstack
from layerswarm.bridge.devstack.slowclients import SlowClients
from tests.tracker.helpers import announce_qs

pytestmark = pytest.mark.slow


def test_announce_answered_while_500_slow_clients_hold_connections(tmp_path):
    t = devstack.start_tracker(tmp_path / "tracker")
    try:
        port = int(t.url.rsplit(":", 1)[1])
        with SlowClients("127.0.0.1", port, head=b"GET /announce?info_hash=", reconnect=True) as crowd:
            time.sleep(11)   # every slow client has dripped once (or been replaced)
            assert crowd.held() > 400
            r = requests.get(f"{t.url}/announce?{announce_qs(b'i' * 20, b'p' * 20, 7000)}", timeout=30)
            assert r.status_code == 200 and b"interval" in bencodepy.decode(r.content)
            assert requests.get(f"{t.url}/healthz", timeout=30).status_code == 200
    finally:
        t.stop()
