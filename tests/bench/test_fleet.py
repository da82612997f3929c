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


def test_raw_settings_follow_the_bridge_configuration(tmp_path):
    """raw: the bridges' own settings, --bridge-arg tuning included; rawdefault: libtorrent's defaults
    with only discovery outside the tracker off."""
    from layerswarm.bridge.config import SessionSection
    from layerswarm.bridge.node.torrent.settings import settings_pack
    raw = bench_rollout.raw_settings("bridge", str(tmp_path), [])
    assert raw == (settings_pack(SessionSection()), "posix_disk_io_constructor")
    tuned, disk = bench_rollout.raw_settings("bridge", str(tmp_path), ["--unchoke-slots", "7", "--lt-setting",
                                                                       "request_queue_time=1", "--disk-io", "pread"])
    assert tuned["unchoke_slots_limit"] == 7 and tuned["request_queue_time"] == 1
    assert disk == "pread_disk_io_constructor"
    default = bench_rollout.raw_settings("default", str(tmp_path), ["--unchoke-slots", "7"])
    assert default == ({"listen_interfaces": SessionSection().peer_listen, **bench_rollout.PRIVATE_SWARM},
                       "default_disk_io_constructor")


def test_plan_interleaves_rounds():
    """direct and cache once and only up to --measure-max-n; the others --rounds times, order rotating;
    --secure pairs alternate."""
    from types import SimpleNamespace
    a = SimpleNamespace(scenarios=["raw", "warm", "cold", "direct", "cache"], rounds=3, measure_max_n=4,
                        secure=False)
    plan = bench_rollout.Bench.plan(SimpleNamespace(a=a), 4)
    assert [k for _, k, _ in plan] == ["direct", "cache", "raw", "warm", "cold", "warm_r2", "cold_r2", "raw_r2",
                                       "cold_r3", "raw_r3", "warm_r3"]
    assert [k for _, k, _ in bench_rollout.Bench.plan(SimpleNamespace(a=a), 6)][:3] == ["raw", "warm", "cold"]
    a = SimpleNamespace(scenarios=["cold"], rounds=2, measure_max_n=4, secure=True)
    assert bench_rollout.Bench.plan(SimpleNamespace(a=a), 2) == [
        ("cold", "cold", False), ("cold", "cold_secure", True), ("cold", "cold_secure_r2", True),
        ("cold", "cold_r2", False)]


def _run(all_s, busy=50.0, **kw):
    return {"all_s": all_s, "machine_busy_pct": busy, "machine_bound": busy > 85, "ttfb_p99_s": 0.5,
            "origin_bytes_ratio": 0.0, "seeder_upload_F": 1.5, **kw}


def test_row_medians_ratios_and_computed_times():
    """Times and ratios are medians over the rounds with min–max; a ratio of two scenarios is taken
    round by round; direct above --measure-max-n is computed; one machine-bound round flags the cell."""
    row = {"n": 8, "bound_s": 10.0, "bound_warm_s": 4.0, "direct_computed_s": 80.0, "cache_computed_s": 90.0,
           "computed": ["direct"], "scenarios": {
               "raw": _run(5.0), "raw_r2": _run(6.0), "raw_r3": _run(8.0),
               "warm": _run(6.0), "warm_r2": _run(9.0, busy=90.0), "warm_r3": _run(8.0),
               "rawdefault": _run(7.0)}}
    bench_rollout.finish_row(row)
    assert row["raw_s"] == 6.0 and row["raw_s_runs"] == [5.0, 6.0, 8.0]
    assert row["raw_over_bound"] == 1.5 and row["raw_over_bound_spread"] == [1.25, 2.0]
    assert row["warm_over_raw"] == 1.2 and row["warm_over_raw_spread"] == [1.0, 1.5]   # 6/5, 9/6, 8/8
    assert row["rawdefault_over_raw"] == 1.4 and row["rawdefault_over_raw_spread"] == [1.4, 1.4]
    assert row["warm_machine_bound"] is True and row["raw_machine_bound"] is False
    assert row["cpu_busy_warm"] == 50.0 and row["ttfb_p99_raw_s"] == 0.5 and row["seeder_upload_F"] == 1.5
    assert row["direct_computed"] is True and row["direct_s"] == 80.0 and row["direct_over_bound"] == 8.0
    assert row["cache_s"] is None and row["cold_s"] is None and row["cold_over_raw"] is None
    md = bench_rollout.markdown({"config": {"layers": 3, "layer_mib": 12, "host_MBps": 10, "origin_MBps": 5,
                                            "cpus": 2, "loadavg_at_start": (1.0, 1.0, 1.0), "date": "today",
                                            "rounds": 3, "measure_max_n": 4},
                                 "F_bytes": 38e6, "results": [row], "runs": 7, "machine_bound_runs": 1})
    line = next(x for x in md.splitlines() if x.startswith("| 8"))
    assert line.startswith("| 8* |") and "8.0 s (6.0–9.0)*" in line and "6.0 s (5.0–8.0) |" in line
    assert "≈80.0 s" in line and "1.20 (1.00–1.50)" in line
    assert "1 of 7 runs were machine-bound" in md


def test_cpu_ratio_is_taken_round_by_round():
    """warm ÷ raw CPU per MB pairs each warm round with the raw round beside it (libtorrent's own cost moves
    between rounds), median and min–max; a round without a CPU reading is left out; shown in the costs table."""
    row = {"n": 2, "bound_s": 8.0, "bound_warm_s": 4.0, "direct_computed_s": None, "cache_computed_s": None,
           "computed": [], "scenarios": {
               "raw": _run(4.0, cpu_ms_per_MB=8.0), "raw_r2": _run(4.0, cpu_ms_per_MB=10.0),
               "raw_r3": _run(4.0, cpu_ms_per_MB=8.0),
               "warm": _run(4.0, cpu_ms_per_MB=10.0), "warm_r2": _run(4.0, cpu_ms_per_MB=12.0),
               "warm_r3": _run(4.0, cpu_ms_per_MB=None)}}
    bench_rollout.finish_row(row)
    assert row["cpu_warm_over_raw"] == 1.225 and row["cpu_warm_over_raw_spread"] == [1.2, 1.25]   # 10/8, 12/10
    assert row["cpu_ms_per_MB_warm"] == 11.0 and row["cpu_ms_per_MB_raw"] == 8.0   # medians of their own rounds
    assert row["cpu_cold_over_raw"] is None
    md = bench_rollout.markdown({"config": {"layers": 3, "layer_mib": 12, "host_MBps": 10, "origin_MBps": 5,
                                            "cpus": 2, "loadavg_at_start": (1.0, 1.0, 1.0), "date": "today",
                                            "rounds": 3, "measure_max_n": 4},
                                 "F_bytes": 38e6, "results": [row], "runs": 6, "machine_bound_runs": 0})
    costs = [x for x in md.splitlines() if x.startswith("| 2 |")][1]
    assert "| 8.00 / 11.00 / — | 1.23 (1.20–1.25) |" in costs
