"""Fixtures for the swarm-backed mirror: a tracker, an origin and several bridges, all real processes."""
from __future__ import annotations

import re
import threading

import pytest
import requests

from tests import procs

# Generous: a loaded 2-core CI machine.
TIMEOUTS = ["--stall-timeout", "20", "--relay-timeout", "15", "--lease-ttl", "10", "--read-timeout", "20"]


class Fleet:
    def __init__(self, tmp, origin_url, tracker_url):
        self.tmp = tmp
        self.origin_url = origin_url
        self.tracker_url = tracker_url
        self.bridges = []
        self.others = []   # raw seeders etc. started by a test: killed at teardown whatever happens

    def start_bridge(self, name: str, *extra, store=None):
        port, pport = procs.free_port(), procs.free_port()
        store = store or self.tmp / f"store-{name}"
        argv = procs.layerswarm_argv(
            "bridge", "--listen", f"127.0.0.1:{port}", "--store-dir", store, "--upstream", self.origin_url,
            "--tracker", self.tracker_url, "--peer-listen", f"127.0.0.1:{pport}", "--host-id", name,
            "--tiny-blob-bytes", "65536", *TIMEOUTS, *extra)
        p = procs.Proc(argv, self.tmp / f"bridge-{name}.log", name=f"bridge-{name}")
        p.url = f"http://127.0.0.1:{port}"
        p.store = store
        p.argv_ = argv
        p.wait_http(p.url + "/v2/")
        self.bridges.append(p)
        return p

    def stats(self, bridge) -> dict:
        return requests.get(bridge.url + "/_layerswarm/stats", timeout=10).json()


def origin_blob_gets(origin) -> dict:
    """digest -> number of blob GETs the origin registry answered (from its access log)."""
    out: dict = {}
    for m in re.finditer(r'"GET /v2/[^ ]+/blobs/(sha256:[a-f0-9]{64})[^"]*" (\d{3})', origin.log_text(10 ** 8)):
        if m.group(2) in ("200", "206"):
            out[m.group(1)] = out.get(m.group(1), 0) + 1
    return out


def pull_blob(url: str, repo: str, digest, timeout: float = 180) -> bytes:
    r = requests.get(f"{url}/v2/{repo}/blobs/{digest}", timeout=timeout)
    r.raise_for_status()
    return r.content


def pull_all(bridges, repo, digests, timeout=180):
    """Every bridge GETs every digest at the same moment; returns {(bridge idx, digest): bytes or exc}."""
    results = {}
    barrier = threading.Barrier(len(bridges) * len(digests))

    def one(i, b, d):
        barrier.wait()
        try:
            results[(i, d)] = pull_blob(b.url, repo, d, timeout)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            results[(i, d)] = exc
    threads = [threading.Thread(target=one, args=(i, b, d)) for i, b in enumerate(bridges) for d in digests]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 30)
    return results


@pytest.fixture
def tracker(tmp_path, request):
    """The real tracker; ``@pytest.mark.tracker_args(...)`` adds flags (e.g. ``--quarantine-reports 1``)."""
    marker = request.node.get_closest_marker("tracker_args")
    extra = marker.args if marker else ()
    port = procs.free_port()
    p = procs.Proc(procs.layerswarm_argv("tracker", "--host", "127.0.0.1", "--port", port, "--interval", "5",
                                         "--lease-ttl", "10", *extra), tmp_path / "tracker.log", name="tracker")
    p.url = f"http://127.0.0.1:{port}"
    p.wait_http(p.url + "/healthz")
    yield p
    p.stop()


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs to use as a store directory (a disk that fills up)."""
    import subprocess
    d = tmp_path / "tmpfs-store"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(d)], check=True)
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.fixture
def proxy(origin):
    """A :class:`FaultProxy` in front of the origin (point bridges at ``proxy.url``)."""
    from tests.swarm.faultproxy import FaultProxy
    p = FaultProxy(origin.url)
    yield p
    p.close()


@pytest.fixture
def fleet(tmp_path, origin, tracker):
    f = Fleet(tmp_path, origin.url, tracker.url)
    yield f
    for p in f.others:
        p.kill()
    for b in f.bridges:
        b.stop()
    # A background thread (a fetch, a relay) must never die of an uncaught exception.
    crashed = [b.name for b in f.bridges if "Exception in thread" in b.log_text(10 ** 8)]
    assert not crashed, f"uncaught exception in a bridge thread: {crashed} (see their logs in {tmp_path})"


def pytest_configure(config):
    config.addinivalue_line("markers", "tracker_args(*flags): extra flags for the swarm tests' tracker")
