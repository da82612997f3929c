"""The `layerswarm tracker` and `layerswarm inspect` commands: real processes (slow) and in-process runs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import bencodepy
import pytest
import requests

from layerswarm.bridge.devstack import daemons as devstack
from tests.fixtures import free_port, run_cli
from tests.tracker.helpers import announce_qs, layer

ROOT = Path(__file__).resolve().parents[2]


def announce(url, ih, pid, port, **kw):
    r = requests.get(f"{url}/announce?{announce_qs(ih, pid, port, **kw)}", timeout=10)
    return bencodepy.decode(r.content)


@pytest.mark.slow
def test_two_trackers_share_one_redis_swarm(tmp_path, redis_url):
    a = devstack.start_tracker(tmp_path / "a", extra=("--store", redis_url, "--workers", "2", "--connections", "64"))
    b = devstack.start_tracker(tmp_path / "b", extra=("--store", redis_url))
    url_a, url_b = a.url, b.url
    try:
        _, t = layer()
        ih = t.info_hash.raw
        assert announce(url_a, ih, b"A" * 20, 7001, left=0, event="started")[b"peers"] == b""
        r = announce(url_b, ih, b"B" * 20, 7002, event="started")
        assert r[b"peers"] == bytes([127, 0, 0, 1]) + (7001).to_bytes(2, "big")
        assert (r[b"complete"], r[b"incomplete"]) == (1, 1)
        # metainfo published on one replica is served and enforced by the other
        assert requests.put(f"{url_a}/metainfo/{t.digest}", data=t.metainfo, timeout=10).status_code == 201
        assert requests.get(f"{url_b}/metainfo/{t.digest}", timeout=10).content == t.metainfo
        rows = requests.get(f"{url_b}/swarms", timeout=10).json()
        assert any(r["digest"] == str(t.digest) and r["seeders"] == 1 and r["leechers"] == 1 for r in rows)
        # inspect against the other replica prints the swarm
        out = subprocess.run(devstack.layerswarm_argv("inspect", str(t.digest), "--tracker", url_a),
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        line = next(ln for ln in out.stdout.splitlines() if ln.startswith(str(t.digest)))
        assert line.split()[1:6] == [t.info_hash.hex[:16], str(t.size), "1", "1", "0"]
    finally:
        a.stop()
        b.stop()


def test_inspect_errors_are_one_line():
    dead = f"http://127.0.0.1:{free_port()}"
    out = run_cli("inspect", "--tracker", dead)
    assert out.returncode != 0 and "unreachable" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = run_cli("inspect", "sha256:nothex", "--tracker", dead)
    assert out.returncode != 0 and "sha256" in out.stderr and "Traceback" not in out.stderr


def test_memory_store_refuses_several_workers():
    out = run_cli("tracker", "--port", free_port(), "--workers", "2")
    assert out.returncode != 0 and "--store redis" in out.stderr


@pytest.mark.slow
def test_publish_token_from_env(tmp_path):
    p = devstack.start_tracker(tmp_path, env={"LAYERSWARM_PUBLISH_TOKEN": "tok"})
    url = p.url
    try:
        _, t = layer(1000)
        assert requests.put(f"{url}/metainfo/{t.digest}", data=t.metainfo, timeout=10).status_code == 401
        assert requests.put(f"{url}/metainfo/{t.digest}", data=t.metainfo, timeout=10,
                            headers={"Authorization": "Bearer tok"}).status_code == 201
        # oversized query through the real server: still a bencoded failure, not an HTTP error page
        r = requests.get(f"{url}/announce?x={'a' * 6000}", timeout=10)
        assert bencodepy.decode(r.content) == {b"failure reason": b"query string too long"}
    finally:
        p.stop()


@pytest.mark.slow
@pytest.mark.parametrize("mix", ["burst", "steady"])
def test_bench_script_smoke(tmp_path, mix):
    out = subprocess.run([sys.executable, str(ROOT / "scripts/bench_tracker.py"), "--duration", "1", "--mix", mix,
                          "--targets", "hello,memory,redis", "--redis-workers", "1", "--connections", "4",
                          "--swarms", "10", "--population", "100", "--rounds", "2", "--json", str(tmp_path / "b.json")],
                         capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "announces/s" in out.stdout and "median ratio to hello-world" in out.stdout
    rounds = json.loads((tmp_path / "b.json").read_text())["rounds"]
    assert [sorted(r) for r in rounds] == [["hello", "memory", "redis x1"]] * 2
    for r in rounds:
        assert r["memory"]["requests"] > 0 and r["memory"]["server_cpu_ms_each"] > 0
        assert r["redis x1"]["redis_cpu_ms_each"] is not None and r["memory"]["redis_cpu_ms_each"] is None


@pytest.mark.slow
def test_memory_bench_smoke(tmp_path):
    """Peers announced, listed, then gone once their TTL passed; memory reported for both stores."""
    out = subprocess.run([sys.executable, str(ROOT / "scripts/bench_tracker_memory.py"), "--peers", "400",
                          "--swarms", "40", "--interval", "2", "--seed-interval", "3", "--json", str(tmp_path / "m.json")],
                         capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    results = json.loads((tmp_path / "m.json").read_text())["results"]
    assert [r["store"] for r in results] == ["memory", "redis"]
    for r in results:
        assert r["load"]["failures"] == 0
        assert r["after_load"]["peers_listed"] == 400 and r["after_expiry"]["peers_listed"] == 0
        assert r["after_load"]["tracker_rss_anon_kib"] > 0
    redis_run = results[1]
    assert redis_run["after_load"]["redis_keys"] > redis_run["after_expiry"]["redis_keys"] == 0
