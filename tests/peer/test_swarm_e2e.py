"""A real swarm on loopback: ``layerswarm seed`` + peers + aria2c through the real tracker."""
from __future__ import annotations

import hashlib
import signal
import subprocess
import threading
import time

import pytest
import requests

from layerswarm.bridge.format.digest import Digest
from layerswarm.bridge.devstack import daemons as devstack
from tests.fixtures import blob_bytes, free_port

pytestmark = pytest.mark.slow
SIZE = 64 << 20


def _start_seeder(tmp_path, tracker_url, store, *sources, tag="seeder"):
    p = devstack.Daemon(devstack.layerswarm_argv("seed", *sources, "--tracker", tracker_url, "--store-dir", store,
                                                 "--listen", f"127.0.0.1:{free_port()}"), tmp_path / f"{tag}.log",
                        name=tag)
    p.wait_until(lambda: "Ctrl-C to stop" in p.log_text(), what="seeding")
    return p


def test_seeder_three_peers_aria2c_and_restart(tracker, make_peer, tmp_path):
    data = blob_bytes(SIZE, b"e2e")
    d = Digest.of_bytes(data)
    src = tmp_path / "layer.bin"
    src.write_bytes(data)
    store = tmp_path / "seeder-store"
    seeder = _start_seeder(tmp_path, tracker.url, store, src)
    assert str(d) in seeder.log_text() and "own" in seeder.log_text()

    # Three peers fetch the layer at once, streaming.
    peers = [make_peer(f"peer{i}", tracker.url) for i in range(3)]
    results, errors = {}, []

    def fetch(i, peer):
        try:
            s = peer.stream(d)
            h, first_early = hashlib.sha256(), None
            for chunk in s:
                if first_early is None:
                    first_early = not s.dl.complete.is_set()
                h.update(chunk)
            results[i] = (h.hexdigest(), s.yielded, first_early)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=fetch, args=(i, p)) for i, p in enumerate(peers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not errors, errors
    assert all(r[0] == d.hex and r[1] == SIZE for r in results.values()) and len(results) == 3
    assert any(r[2] for r in results.values()), "no reader saw its first byte before the download completed"
    for p in peers:
        assert p.store.path_if_present(d) is not None

    # aria2c, a stock BitTorrent client, with the torrent from the tracker.
    meta = requests.get(f"{tracker.url}/metainfo/{d}", timeout=5)
    assert meta.status_code == 200
    tfile = tmp_path / "layer.torrent"
    tfile.write_bytes(meta.content)
    out = tmp_path / "aria"
    r = subprocess.run(["aria2c", "--seed-time=0", f"--dir={out}", "--enable-dht=false", "--enable-dht6=false",
                        "--bt-enable-lpd=false", "--enable-peer-exchange=false", "--console-log-level=warn",
                        "--summary-interval=0", f"--listen-port={free_port()}", "--bt-stop-timeout=90",
                        str(tfile)], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert hashlib.sha256((out / str(d)).read_bytes()).hexdigest() == d.hex

    # Restart the seeder with only the store: it seeds from its record, no recheck,
    # and is the only source for a fresh peer.
    for p in peers:
        p.close()
    t0 = time.monotonic()
    seeder.signal(signal.SIGTERM)
    seeder.popen.wait(15)
    assert seeder.popen.returncode == 0 and time.monotonic() - t0 < 10
    seeder = _start_seeder(tmp_path, tracker.url, store, tag="seeder2")
    row = [l for l in seeder.log_text().splitlines() if l.startswith(str(d))]
    assert row and row[0].rstrip().endswith("record"), seeder.log_text()
    fresh = make_peer("fresh", tracker.url)
    assert hashlib.sha256(b"".join(fresh.stream(d))).hexdigest() == d.hex
    seeder.stop()
