"""The tracker benchmark's mTLS part end to end, briefly: no timing assertions.

Every measurement (plain and mTLS announces, keep-alive and a connection each, handshakes alone,
at the tracker and a bridge's fleet listener) completes requests without an error or a refused
announce, the mTLS ones over TLS, and the summary has the ratios the README quotes.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_tracker_bench_tls_smoke(tmp_path):
    out_json = tmp_path / "t.json"
    p = subprocess.run([sys.executable, str(ROOT / "scripts/bench_tracker.py"), "--targets", "", "--swarms", "10",
                        "--tls", "--tls-duration", "1", "--tls-connections", "2", "--tls-procs", "1",
                        "--json", str(out_json)], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    d = json.loads(out_json.read_text())["mtls"]
    assert {(r["target"], r["mode"], r["kind"]) for r in d["runs"]} == {
        (t, m, k) for t in ("tracker", "bridge") for m in ("keep-alive", "new connection") for k in ("plain", "mTLS")
    } | {("tracker", "handshake", "mTLS"), ("bridge", "handshake", "mTLS")}
    for r in d["runs"]:
        assert r["done"] > 0 and r["errors"] == 0 and r["failures"] == 0, r
        assert r["tls"] == ([] if r["kind"] == "plain" else ["TLSv1.3"]), r
        assert r["server_cpu_ms_each"] > 0
    s = d["summary"]
    assert s["tracker keep-alive"]["mtls_over_plain"] > 0 and s["bridge new connection"]["mtls_over_plain"] > 0
    assert s["tracker handshake"]["handshakes_per_s"] > 0 and s["bridge handshake"]["latency_ms_alone"] > 0
