"""scripts/bench_listener.py on a tiny body: both ways stream it whole and the ratio is printed
(no timing assertions); bad arguments are refused with a message."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow   # starts the script and its reader processes

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_listener.py"


def test_both_ways_stream_the_body_and_the_ratio_is_printed():
    out = subprocess.run([sys.executable, str(SCRIPT), "--chunk", "65536", "--count", "8", "--gap", "0",
                          "--clients", "2", "--rounds", "1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "thread writes CPU ms per MB" in out.stdout
    assert "loop writes   CPU ms per MB" in out.stdout
    assert "thread writes / loop writes:" in out.stdout


def test_bad_arguments_are_refused_with_a_message():
    out = subprocess.run([sys.executable, str(SCRIPT), "--count", "0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "must be positive" in out.stderr
    assert "Traceback" not in out.stderr
