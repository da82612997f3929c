"""Fixtures for peer tests: blobs, a fake tracker, in-process peers on loopback."""
from __future__ import annotations

import hashlib

import pytest

from layerswarm.bridge.format.digest import Digest
from layerswarm.bridge.config import SessionSection, StreamSection
from layerswarm.bridge.node.peer import Peer
from tests.peer.faketracker import FakeTracker


def blob_bytes(size: int, seed: bytes = b"blob") -> bytes:
    return hashlib.shake_256(seed).digest(size)


@pytest.fixture
def fake_tracker():
    t = FakeTracker()
    t.start()
    yield t
    t.stop()


@pytest.fixture
def make_peer(tmp_path):
    peers = []

    def make(name: str, tracker_url: str, **kw) -> Peer:
        stream = kw.pop("stream", None) or StreamSection(stall_timeout=20)
        p = Peer.open(str(tmp_path / name), tracker_url, host_id=name, stream=stream,
                      session=SessionSection(peer_listen="127.0.0.1:0"), **kw)
        peers.append(p)
        return p
    yield make
    for p in peers:
        p.close()


def add(peer: Peer, data: bytes):
    return peer.add_blob([data[i:i + (1 << 20)] for i in range(0, len(data), 1 << 20)], len(data),
                         Digest.of_bytes(data))


@pytest.fixture
def tracker(tmp_path):
    """The real ``layerswarm tracker`` process on loopback; yields its base URL."""
    from tests import procs
    port = procs.free_port()
    p = procs.Proc(procs.layerswarm_argv("tracker", "--host", "127.0.0.1", "--port", port, "--interval", "5"),
                   tmp_path / "tracker.log", name="tracker")
    url = f"http://127.0.0.1:{port}"
    p.wait_http(url + "/healthz")
    p.url = url
    yield p
    p.stop()


def run_seed(*args, timeout=120):
    """``layerswarm seed`` to completion (with --exit); returns the CompletedProcess."""
    import subprocess
    from tests import procs
    return subprocess.run(procs.layerswarm_argv("seed", *args), capture_output=True, text=True, timeout=timeout)
