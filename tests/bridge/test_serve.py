"""The real CLI process (its own HTTP listeners), its argument checks and the BlobSource / peer seams."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from layerswarm.bridge.devstack import imagegen
from layerswarm.bridge.http.app import create_app
from layerswarm.bridge import config as bconfig
from layerswarm.bridge.format.rlimits import glibc
from layerswarm.bridge.sources.blobs import BlobResponse, OriginBlobSource, span
from tests.fixtures import run_cli, stats


@pytest.mark.slow
def test_cli_bridge_pulls_blob_and_stops_on_sigterm(origin, start_bridge):
    img = imagegen.make_image((6 << 20,), seed=b"cli")
    imagegen.push(origin.url, "library/cli", "v1", img)
    b = start_bridge("--threads", "8", upstream=origin.url)
    r = requests.get(f"{b.url}/v2/library/cli/manifests/v1", headers={"Accept": img.manifest_media_type},
                     timeout=20)
    assert r.status_code == 200 and r.headers["Server"] == "layerswarm-bridge"
    layer = img.layers[0]
    r = requests.get(f"{b.url}/v2/library/cli/blobs/{layer.digest}", timeout=30)
    assert hashlib.sha256(r.content).hexdigest() == layer.digest.hex
    # SIGTERM with a stream in flight: clean exit within seconds
    s = requests.get(f"{b.url}/v2/library/cli/blobs/{layer.digest}", stream=True, timeout=30)
    next(s.raw.stream(65536))
    t0 = time.monotonic()
    b.signal(signal.SIGTERM)
    rc = b.popen.wait(15)
    assert time.monotonic() - t0 < 10
    assert rc == 0, b.log_text()
    s.close()


def test_cli_rejects_bad_arguments(tmp_path):
    p = run_cli("bridge", "--store-dir", tmp_path, "--listen", "nope")
    assert p.returncode == 2 and "HOST:PORT" in p.stderr
    p = run_cli("bridge", "--store-dir", tmp_path, "--alias", "x")
    assert p.returncode == 2 and "NAME=URL" in p.stderr


class FileSource:
    """A stand-in for the store: serves blobs it has as files, else asks the origin."""

    def __init__(self, blobs: dict):
        self.blobs = blobs  # digest -> path
        self.origin = OriginBlobSource()

    def open(self, req):
        path = self.blobs.get(req.digest)
        if path is None:
            return self.origin.open(req)
        size = path.stat().st_size
        start, end = span(req.range, size)
        return BlobResponse(size, start, end, file=None if req.head else open(path, "rb"), source="store")


@pytest.mark.slow  # a real docker-registry origin
def test_blob_source_seam(origin, tmp_path, thread_server):
    img = imagegen.make_image((700_000, 800_000), seed=b"seam")
    imagegen.push(origin.url, "library/seam", "v1", img)
    local = img.layers[0]
    f = tmp_path / "blob"
    f.write_bytes(local.data)
    cfg = bconfig.from_args(environ={}, store_dir=str(tmp_path / "store"), default_upstream=origin.url)
    app = create_app(cfg, blob_source=FileSource({local.digest: f}))
    srv = thread_server(app)
    u = f"{srv.url}/v2/library/seam/blobs/"
    r = requests.get(u + str(local.digest), timeout=10)
    assert r.status_code == 200 and r.content == local.data
    r = requests.get(u + str(local.digest), headers={"Range": "bytes=100-199"}, timeout=10)
    assert r.status_code == 206 and r.content == local.data[100:200]
    r = requests.get(u + str(local.digest), headers={"Range": "bytes=1000-"}, timeout=10)
    assert r.status_code == 206 and r.content == local.data[1000:]
    r = requests.head(u + str(local.digest), timeout=10)
    assert r.status_code == 200 and int(r.headers["Content-Length"]) == len(local.data)
    other = img.layers[1]  # not in the "store": falls back to the origin
    r = requests.get(u + str(other.digest), timeout=10)
    assert r.status_code == 200 and r.content == other.data
    st = stats(srv)
    assert st["blob_bytes"]["store"] == len(local.data) + 100 + len(local.data) - 1000
    assert st["blob_bytes"]["origin"] == len(other.data)


def test_the_collector_leaves_start_up_objects_alone_and_runs_less_often():
    import gc

    from layerswarm.bridge.http.server import settle_garbage_collector

    before = gc.get_threshold()
    try:
        settle_garbage_collector(young=12_345)
        assert gc.get_freeze_count() > 1000          # the modules and objects made so far
        assert gc.get_threshold() == (12_345, *before[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


# A thread that reads piece-sized buffers and drops them (the swarm path), counting its page faults: with
# glibc's defaults each round's memory goes back to the kernel and is faulted in and zeroed again.
_PIECE_CHURN = """
import resource, sys, threading
from layerswarm.bridge.format.rlimits import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
faults = []
def churn():
    for _ in range(3):
        [bytearray(131072) for _ in range(4)]
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for _ in range(50):
        pieces = [bytearray(131072) for _ in range(4)]
        del pieces
    faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
t = threading.Thread(target=churn)
t.start()
t.join()
print(kept, faults[0])
"""


def _piece_churn(mode: str, env=None):
    cp = subprocess.run([sys.executable, "-c", _PIECE_CHURN, mode], capture_output=True, text=True, timeout=60,
                        env={**os.environ, **(env or {})}, check=True)
    kept, faults = cp.stdout.split()
    return kept, int(faults)


_glibc_only = pytest.mark.skipif(not glibc(), reason="mallopt thresholds are glibc's")


@pytest.mark.slow   # fresh processes: mallopt's setting is process-wide
@_glibc_only
def test_freed_piece_buffers_are_reused_not_faulted_in_again():
    _, default = _piece_churn("default")
    kept, keep = _piece_churn("keep")
    assert kept == "True"
    assert default >= 1000          # 200 pieces of 32 pages each, mostly faulted in again
    assert keep * 20 < default


@pytest.mark.slow
@_glibc_only
def test_an_operators_malloc_tuning_is_left_alone():
    assert _piece_churn("keep", {"MALLOC_TRIM_THRESHOLD_": "131072"})[0] == "False"
    assert _piece_churn("keep", {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"})[0] == "False"
