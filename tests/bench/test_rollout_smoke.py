"""The rollout benchmark end to end on a tiny fleet (N=3, 3 x 2 MiB, high caps): no timing assertions.

Checks that the harness runs every scenario (plain libtorrent sessions included), that every
blob every host pulled was verified, that the JSON has the documented fields
with sane values, that a plot is written, and that no namespace, tc rule or
process is left behind.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bench_rollout.py"
sys.path.insert(0, str(ROOT / "scripts"))

import fleet  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (ip netns, tc)"),
    pytest.mark.skipif(not all(shutil.which(t) for t in ("ip", "tc", "docker-registry")),
                       reason="needs iproute2 and docker-registry"),
]

N = 3
SCENARIOS = ("raw", "rawdefault", "warm", "cold", "direct", "cache")
ROW_FIELDS = ("n", "bound_s", "bound_warm_s", "scenarios", "seeder_upload_F", "warm_over_raw",
              "machine_busy_pct_before",
              *(f"{k}_{s}" for s in SCENARIOS for k in ("origin_bytes_ratio", "cpu_busy")),
              *(f"{s}_{k}" for s in SCENARIOS for k in ("s", "over_bound", "machine_bound")),
              *(f"ttfb_p99_{s}_s" for s in SCENARIOS))
SCENARIO_FIELDS = ("all_s", "p50_s", "p99_s", "ttfb_p99_s", "origin_bytes_ratio", "verified", "blobs_verified",
                   "blobs_expected", "per_host_s", "machine_busy_pct", "machine_bound", "seeder_upload_F")


def _leftover_processes(marker: str) -> list:
    left = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmd:
                left.append(f"{d}: {cmd[:200]}")
    return left


def test_rollout_smoke(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    out_json, out_png, out_md = tmp_path / "r.json", tmp_path / "r.png", tmp_path / "r.md"
    argv = [sys.executable, str(SCRIPT), "--n", str(N), "--layers", "3", "--layer-mib", "2",
            "--host-mbps", "200", "--origin-mbps", "100", "--rounds", "1", "--timeout", "180", "--deadline", "840",
            "--start-timeout", "120", "--serve-mib", "4", "--serve-seconds", "1", "--serve-rounds", "1",
            "--clients", "64", "--burst-mib", "1", "--workdir", str(work),
            "--json", str(out_json), "--png", str(out_png), "--markdown", str(out_md)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    d = json.loads(out_json.read_text())

    # clean-up: no namespace of this run, no process started from its scratch dir, scratch dir gone
    prefix = d["config"]["prefix"]
    assert fleet.list_namespaces(prefix + "-") == []
    assert _leftover_processes(str(work)) == []
    assert list(work.iterdir()) == []

    F = d["F_bytes"]
    assert 3 * 2 * 2 ** 20 <= F < 3 * 2 * 2 ** 20 * 1.02
    assert len(d["results"]) == 1
    row = d["results"][0]
    for k in ROW_FIELDS:
        assert k in row, k
    assert row["n"] == N
    assert row["bound_s"] == pytest.approx(max(F / 100e6, F / 200e6, N * F / (100e6 + N * 200e6)), rel=1e-2)
    assert 0 < row["bound_warm_s"] <= row["bound_s"] * 2

    assert set(row["scenarios"]) == set(SCENARIOS)
    for scenario in SCENARIOS:
        sc = row["scenarios"][scenario]
        for k in SCENARIO_FIELDS:
            assert k in sc, (scenario, k)
        assert sc["verified"] is True, (scenario, sc.get("errors"))
        # plain sessions get the layers (torrents), clients the config blob too
        assert sc["blobs_verified"] == sc["blobs_expected"] == N * (3 if scenario.startswith("raw") else 4)
        assert sc["errors"] == []
        assert 0 <= sc["machine_busy_pct"] <= 100 and row[f"cpu_busy_{scenario}"] == sc["machine_busy_pct"]
        assert isinstance(sc["machine_bound"], bool)
        assert 0 < row[f"{scenario}_s"] < 180
        assert 0 < sc["p50_s"] <= sc["p99_s"] <= sc["all_s"] + 1e-3
        assert sc["ttfb_p99_s"] is not None and sc["ttfb_p99_s"] >= 0
        assert set(sc["per_host_s"]) == {f"h{i}" for i in range(1, N + 1)}
        assert sc["origin_bytes_ratio"] is not None and sc["origin_bytes_ratio"] >= 0
        if scenario in ("cold", "warm", "raw", "rawdefault"):
            assert sc["rss_anon_peak_kib"] > 1000  # a Python process with libraries: at least a few MB
            assert sc["cpu_ms_per_MB"] > 0
            assert sum(sc["delivered_MB_by_source"].values()) == pytest.approx(N * F / 1e6, rel=0.01)
        if scenario in ("warm", "raw", "rawdefault"):
            # every layer byte starts on the seeder: it sent each at least once, and nothing came from the origin
            assert sc["seeder_upload_F"] >= 0.9, scenario
            assert sc["origin_bytes_ratio"] < 0.05, scenario
    raw = row["scenarios"]["raw"]
    assert raw["delivered_MB_by_source"].keys() == {"peer"} and raw["cpu_s"]["per_process"].keys() >= {"h1", "seeder"}
    assert row["seeder_upload_F"] == pytest.approx(row["scenarios"]["warm"]["seeder_upload_F"], abs=1e-3)
    assert row["warm_over_raw"] == pytest.approx(row["warm_s"] / row["raw_s"], rel=0.01)
    assert row["scenarios"]["warm"]["delivered_MB_by_source"]["peer"] > 0
    # the serving processes' CPU by kind of thread (OS thread names): libtorrent's and the bridge's own
    warm_threads = row["scenarios"]["warm"]["cpu_s"]["servers_by_thread"]
    assert warm_threads["libtorrent"] > 0 and {"lt-alerts", "client-app", "client-loop", "(rest)"} <= set(warm_threads)
    assert sum(warm_threads.values()) == pytest.approx(row["scenarios"]["warm"]["cpu_s"]["servers"], abs=0.1)
    assert raw["cpu_s"]["servers_by_thread"]["libtorrent"] > 0
    assert row["cpu_ms_per_MB_by_thread_warm"]["libtorrent"] > 0
    # direct: every host fetched F from the origin; counters minus header overhead must say so
    assert row["origin_bytes_ratio_direct"] == pytest.approx(N, rel=0.03)
    # a pull-through cache fetches each blob at least once
    assert row["origin_bytes_ratio_cache"] >= 0.97
    assert d["verified"] is True

    if shutil.which("wrk"):
        assert d["serving"]["registry_MBps"] > 0 and d["serving"]["bridge_MBps"] > 0
    assert d["concurrency"]["cold"]["clients"] == 64
    assert "errors" in d["concurrency"]["cold"] and "p99_s" in d["concurrency"]["cached"]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = out_md.read_text()
    assert "| N |" in md and f"| {N}" in md and "warm ÷ raw" in md and "machine-bound" in md
    assert "cold/bound" in p.stdout and "warm/raw" in p.stdout


def test_interrupted_run_cleans_up(tmp_path):
    """SIGTERM in the middle of a rollout: exit 130, partial JSON, no namespace or process left."""
    import signal
    import time
    work = tmp_path / "work"
    work.mkdir()
    out_json = tmp_path / "r.json"
    argv = [sys.executable, str(SCRIPT), "--n", "2", "--scenarios", "direct", "--layers", "3", "--layer-mib", "8",
            "--host-mbps", "4", "--origin-mbps", "2", "--no-serving", "--timeout", "120", "--deadline", "300",
            "--workdir", str(work), "--json", str(out_json)]
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as err:
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
        try:
            deadline = time.monotonic() + 240
            while "N=2 direct ..." not in log.read_text() and time.monotonic() < deadline and p.poll() is None:
                time.sleep(0.2)
            time.sleep(2)  # clients are pulling through the capped origin now (~25 s at 2 MB/s)
            assert p.poll() is None, log.read_text()[-3000:]
            assert fleet.list_namespaces(f"lsb-{p.pid}-")
            p.send_signal(signal.SIGTERM)
            rc = p.wait(60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert rc == 130, log.read_text()[-3000:]
    assert fleet.list_namespaces(f"lsb-{p.pid}-") == []
    assert _leftover_processes(str(work)) == []
    d = json.loads(out_json.read_text())
    assert any("interrupted" in e for e in d["errors"])
    assert d["results"] and d["results"][0]["n"] == 2 and d["results"][0]["direct_s"] is None


def test_secure_rollout_smoke(tmp_path):
    """--secure: cold and warm in both fleet modes, paired in one run, two rounds; the secure runs
    really are secure (bridges in secure mode, layers from relays over HTTPS or SSL peers), every run
    starts from empty stores, and the JSON carries the secure ÷ open ratios with CPU and machine-busy
    figures.  Beside them: raw in two rounds (medians and spreads of round-by-round ratios), and direct
    computed, not run, above --measure-max-n."""
    work = tmp_path / "work"
    work.mkdir()
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    argv = [sys.executable, str(SCRIPT), "--n", "2", "--layers", "2", "--layer-mib", "2", "--host-mbps", "200",
            "--origin-mbps", "100", "--scenarios", "raw,cold,warm,direct", "--measure-max-n", "1", "--secure",
            "--rounds", "2", "--no-serving", "--timeout", "120",
            "--deadline", "600", "--start-timeout", "120", "--workdir", str(work), "--json", str(out_json),
            "--markdown", str(out_md)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=700, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    d = json.loads(out_json.read_text())
    assert fleet.list_namespaces(d["config"]["prefix"] + "-") == []
    assert _leftover_processes(str(work)) == []
    assert d["verified"] is True and d["config"]["secure"] is True
    row = d["results"][0]
    assert set(row["scenarios"]) == {f"{s}{m}{r}" for s in ("cold", "warm") for m in ("", "_secure")
                                     for r in ("", "_r2")} | {"raw", "raw_r2"}
    F = d["F_bytes"]
    assert row["direct_computed"] is True and row["direct_s"] == pytest.approx(2 * F / (100e6 * 1448 / 1514), rel=0.01)
    times = [row["scenarios"][k]["all_s"] for k in ("raw", "raw_r2")]
    assert row["raw_s"] == pytest.approx(sum(times) / 2, abs=1e-3) and row["raw_s_runs"] == times
    per_round = sorted(row["scenarios"][w]["all_s"] / row["scenarios"][r]["all_s"]
                       for w, r in (("warm", "raw"), ("warm_r2", "raw_r2")))
    assert row["warm_over_raw_spread"] == pytest.approx(per_round, abs=1e-3)
    assert row["warm_over_raw"] == pytest.approx(sum(per_round) / 2, abs=1e-3)
    for s in ("cold", "warm"):
        for key, mode in ((s, "open"), (f"{s}_secure", "secure"), (f"{s}_r2", "open"), (f"{s}_secure_r2", "secure")):
            sc = row["scenarios"][key]
            assert sc["verified"] is True and sc["errors"] == [], (key, sc.get("errors"))
            assert sc["fleet_mode"] == mode
            stats = sc["bridge_stats"]
            assert {st["fleet_mode"] for st in stats.values()} == {mode}, stats
            # every host got the layers, and not all of them from the origin
            assert sum(st["fetched"]["peer"] + st["fetched"]["relay"] for st in stats.values()) > 2 * 2 ** 20
            assert 0 <= sc["machine_busy_pct"] <= 100 and isinstance(sc["machine_bound"], bool)
            assert sc["cpu_s"]["servers"] > 0 and sc["cpu_s"]["per_process"]["tracker"] >= 0
        # a round-2 run starts cold too: its bridges took the layers from the origin or the seeder
        for key in (f"{s}_secure", f"{s}_r2", f"{s}_secure_r2"):
            assert row["scenarios"][key]["origin_bytes_ratio"] == pytest.approx(
                row["scenarios"][s]["origin_bytes_ratio"], abs=0.02), key
        summary = row["secure"][s]
        assert len(summary["rounds"]) == 2
        assert summary["time_ratio"] > 0 and summary["cpu_ratio"] > 0
        assert row[f"{s}_secure_over_open"] == summary["time_ratio"]
        assert row[f"{s}_secure_s"] > 0 and isinstance(row[f"{s}_machine_bound"], bool)
    assert "secure ÷ open" in out_md.read_text()
    assert "cold secure/open" in p.stdout
