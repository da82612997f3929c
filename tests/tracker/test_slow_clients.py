"""500 slow connections (a byte every few seconds) do not stall the tracker: an announce is still answered."""
from __future__ import annotations

import socket
import threading
import time

import bencodepy
import pytest
import requests

from layerswarm.bridge.devstack import daemons as devstack
from tests.tracker.helpers import announce_qs

pytestmark = pytest.mark.slow

SLOW = 500


def _slowloris(host: str, port: int, n: int, stop: threading.Event) -> list:
    """``n`` connections that each send a request head one byte at a time, every few seconds."""
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(b"GET /announce?info_hash=")
        socks.append(s)

    def drip():
        while not stop.wait(3):
            for s in socks:
                try:
                    s.sendall(b"A")
                except OSError:
                    pass
    threading.Thread(target=drip, daemon=True).start()
    return socks


def test_announce_answered_while_500_slow_clients_hold_connections(tmp_path):
    t = devstack.start_tracker(tmp_path / "tracker")
    stop = threading.Event()
    socks = []
    try:
        port = int(t.url.rsplit(":", 1)[1])
        socks = _slowloris("127.0.0.1", port, SLOW, stop)
        time.sleep(1)
        t0 = time.monotonic()
        r = requests.get(f"{t.url}/announce?{announce_qs(b'i' * 20, b'p' * 20, 7000)}", timeout=30)
        assert r.status_code == 200 and b"interval" in bencodepy.decode(r.content)
        assert requests.get(f"{t.url}/healthz", timeout=30).status_code == 200
        assert time.monotonic() - t0 < 30
    finally:
        stop.set()
        for s in socks:
            s.close()
        t.stop()
