"""The real `layerswarm tracker` and `layerswarm inspect` processes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import bencodepy
import requests

from tests.procs import Proc, free_port, layerswarm_argv
from tests.tracker.helpers import announce_qs, layer

ROOT = Path(__file__).resolve().parents[2]


def start_tracker(tmp: Path, *flags, name="tracker"):
    port = free_port()
    p = Proc(layerswarm_argv("tracker", "--port", port, *flags), tmp / f"{name}.log", name=name)
    url = f"http://127.0.0.1:{port}"
    p.wait_http(url + "/healthz")
    return p, url


def announce(url, ih, pid, port, **kw):
    r = requests.get(f"{url}/announce?{announce_qs(ih, pid, port, **kw)}", timeout=10)
    return bencodepy.decode(r.content)


def test_two_trackers_share_one_redis_swarm(tmp_path, redis_url):
    a, url_a = start_tracker(tmp_path, "--store", redis_url, "--workers", "2", "--threads", "4", name="a")
    b, url_b = start_tracker(tmp_path, "--store", redis_url, name="b")
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
        out = subprocess.run(layerswarm_argv("inspect", str(t.digest), "--tracker", url_a),
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        line = next(ln for ln in out.stdout.splitlines() if ln.startswith(str(t.digest)))
        assert line.split()[1:6] == [t.info_hash.hex[:16], str(t.size), "1", "1", "0"]
    finally:
        a.stop()
        b.stop()


def test_inspect_errors_are_one_line(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    out = subprocess.run(layerswarm_argv("inspect", "--tracker", dead), capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode != 0 and "unreachable" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = subprocess.run(layerswarm_argv("inspect", "sha256:nothex", "--tracker", dead), capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode != 0 and "sha256" in out.stderr and "Traceback" not in out.stderr


def test_memory_store_refuses_several_workers(tmp_path):
    out = subprocess.run(layerswarm_argv("tracker", "--port", free_port(), "--workers", "2"),
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode != 0 and "--store redis" in out.stderr


def test_publish_token_from_env(tmp_path):
    port = free_port()
    p = Proc(layerswarm_argv("tracker", "--port", port), tmp_path / "t.log", env={"LAYERSWARM_PUBLISH_TOKEN": "tok"})
    url = f"http://127.0.0.1:{port}"
    try:
        p.wait_http(url + "/healthz")
        _, t = layer(1000)
        assert requests.put(f"{url}/metainfo/{t.digest}", data=t.metainfo, timeout=10).status_code == 401
        assert requests.put(f"{url}/metainfo/{t.digest}", data=t.metainfo, timeout=10,
                            headers={"Authorization": "Bearer tok"}).status_code == 201
        # oversized query through the real server: still a bencoded failure, not an HTTP error page
        r = requests.get(f"{url}/announce?x={'a' * 6000}", timeout=10)
        assert bencodepy.decode(r.content) == {b"failure reason": b"query string too long"}
    finally:
        p.stop()


def test_bench_script_smoke(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "scripts/bench_tracker.py"), "--duration", "1",
                          "--targets", "hello,memory", "--connections", "4", "--swarms", "10",
                          "--json", str(tmp_path / "b.json")], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "announces/s" in out.stdout and (tmp_path / "b.json").exists()
