"""Fast checks of the benchmark's pieces: the bound, percentiles, wrk parsing, namespace clean-up."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import bench_rollout  # noqa: E402
import fleet  # noqa: E402

MB = 1_000_000


def test_kumar_ross_bound_terms():
    F = 150 * MB
    # origin-limited: F/u_s dominates for one host
    assert bench_rollout.kumar_ross(F, 1, 20 * MB, 40 * MB, 40 * MB) == pytest.approx(7.5)
    # with origin 20 MB/s and hosts 40 MB/s the origin term holds at every N: a flat bound
    assert bench_rollout.kumar_ross(F, 8, 20 * MB, 40 * MB, 40 * MB) == pytest.approx(7.5)
    # aggregate upload term when hosts upload little: N F / (u_s + N u)
    assert bench_rollout.kumar_ross(F, 8, 100 * MB, 100 * MB, 10 * MB) == pytest.approx(8 * 150 / 180)
    # download-limited
    assert bench_rollout.kumar_ross(F, 2, 100 * MB, 10 * MB, 100 * MB) == pytest.approx(15)


def test_percentiles():
    assert bench_rollout.pct([], 99) is None
    assert bench_rollout.pct([3.0], 50) == 3.0
    assert bench_rollout.pct([1, 2, 3, 4, 5], 50) == 3
    assert bench_rollout.pct([1, 2], 99) == pytest.approx(1.99)
    assert bench_rollout.pct([None, 2, 4], 50) == 3


def test_parse_wrk():
    out = """Running 2s test @ http://127.0.0.1:5000/x
  Latency Distribution
     50%    2.54ms
     99%   28.05ms
  2818 requests in 2.02s, 470.58MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:   1392.70
"""
    r = bench_rollout.parse_wrk(out, "u")
    assert r["requests"] == 2818
    assert r["bytes_per_s"] == pytest.approx(470.58 * 2 ** 20 / 2.02)
    assert r["p99_s"] == pytest.approx(0.02805)
    assert r["errors"] == 7
    assert bench_rollout.parse_wrk("Usage: wrk", "u")["errors"] >= 1


def needs_netns(test):
    """Root, ip and tc; slow: ``ip``/``tc`` are processes, and the host's namespaces change."""
    return pytest.mark.slow(pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"),
                                               reason="needs root, ip and tc")(test))


@needs_netns
def test_fleet_links_counters_and_cleanup():
    """Two capped hosts talk over the switch; counters move; everything is gone afterwards."""
    f = fleet.Fleet(prefix=f"lsb-{os.getpid()}-t")
    try:
        f.create()
        a = f.add_host("a", 2, 50 * MB, 50 * MB, counted_port=5999)
        b = f.add_host("b", 3, 50 * MB, 50 * MB)
        before = f.snapshot()
        fleet.sh(*b.argv("ping", "-c", "2", "-i", "0.2", "-W", "2", a.ip)) if shutil.which("ping") else \
            fleet.sh(*b.argv(sys.executable, "-c",
                             f"import socket; s=socket.socket(); s.settimeout(2)\n"
                             f"try: s.connect(('{a.ip}', 1))\nexcept OSError: pass"))
        d = fleet.Fleet.delta(before, f.snapshot())
        assert d["b"]["up_bytes"] > 0 and d["a"]["down_bytes"] > 0
        qdisc = fleet.sh("ip", "netns", "exec", a.ns, "tc", "qdisc", "show", "dev", "eth0")
        assert "htb" in qdisc
        assert "400Mbit" in fleet.sh("ip", "netns", "exec", a.ns, "tc", "class", "show", "dev", "eth0")
        assert set(f.namespaces()) == {f.switch, a.ns, b.ns}
    finally:
        f.destroy()
    assert f.namespaces() == []


@needs_netns
def test_cleanup_removes_namespaces_of_dead_runs_only():
    dead = f"lsb-{2 ** 22 + 12345}-x"  # above pid_max on most systems: never a live run
    live = f"lsb-{os.getpid()}-live"
    for ns in (dead, live):
        fleet.sh("ip", "netns", "add", ns)
    try:
        removed = fleet.cleanup()
        assert dead in removed
        assert live in fleet.list_namespaces()
    finally:
        for ns in (dead, live):
            fleet.delete_namespace(ns)
    assert not {dead, live} & set(fleet.list_namespaces())
