"""``layerswarm demo`` as a user runs it (a subprocess, its own daemons)."""
import os
import subprocess
import sys

import pytest

from tests.fixtures import require_root
from tests.integration import helpers

pytestmark = pytest.mark.slow


def _demo(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "layerswarm.bridge.cli", "demo", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_demo_pulls_generated_image_and_cleans_up(tmp_path):
    require_root()
    work = tmp_path / "demo"
    cp = _demo("--workdir", work, "--layers", "2", "--layer-mib", "2")
    out = cp.stdout + cp.stderr
    assert cp.returncode == 0, out
    for step in ("[origin]", "[image]", "[bridge]", "[dockerd]", "[pull]", "--- summary ---"):
        assert step in out, out
    assert "Traceback" not in out
    summary = out.split("--- summary ---", 1)[1]
    assert summary.count("\nlayer ") == 2, out
    # the first bridge served both layers and the config, all from the origin
    assert "bridge 1     : 3 blob responses" in summary, out
    if "[peer] second bridge" in out:
        # The second host got the layers from peers.  Each layer left the origin once; the tiny
        # config (no torrent) is relayed from the first bridge while its lease lasts, else fetched again.
        line = next(ln for ln in summary.splitlines() if ln.startswith("bridge 2"))
        peers = int(line.rsplit("peers ", 1)[1].replace(",", ""))
        assert peers >= 2 * (2 << 20), line
        gets = int(next(ln for ln in summary.splitlines() if ln.startswith("origin")).split(":")[1].split()[0])
        assert gets in (3, 4), out
    else:
        assert "origin       : 3 blob GETs" in summary, out
    # every daemon the demo started is gone
    assert _procs_mentioning(str(work)) == []


def _procs_mentioning(text: str) -> list:
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            out.append((pid, cmd))
    return out


def test_demo_temp_workdir_removed(tmp_path):
    require_root()
    env_tmp = tmp_path / "tmp"
    env_tmp.mkdir()
    cp = subprocess.run([sys.executable, "-m", "layerswarm.bridge.cli", "demo", "--layers", "1", "--layer-mib", "0.5"],
                        capture_output=True, text=True, timeout=600, env={**os.environ, "TMPDIR": str(env_tmp)},
                        stdin=subprocess.DEVNULL)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert list(env_tmp.iterdir()) == [], "the demo's temp work dir is removed on exit"


def test_demo_failure_is_one_clear_line(tmp_path):
    require_root()
    # An upstream nobody listens on: the pull fails, the demo says so and exits non-zero.
    cp = _demo("--workdir", tmp_path / "demo", "--upstream", "http://127.0.0.1:9", "--image", "nothing:here",
               timeout=300)
    assert cp.returncode != 0
    assert "layerswarm demo: error:" in cp.stderr
    assert "Traceback" not in cp.stderr + cp.stdout


def test_demo_keep_running_then_interrupt(tmp_path):
    import json
    import re
    import signal
    import time
    import urllib.request
    require_root()
    work = tmp_path / "demo"
    p = subprocess.Popen([sys.executable, "-m", "layerswarm.bridge.cli", "demo", "--workdir", str(work), "--keep-running",
                          "--layers", "1", "--layer-mib", "0.5"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, stdin=subprocess.DEVNULL)
    lines = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "stays up" in line:
                break
        out = "".join(lines)
        assert "stays up" in out, out
        # the stack is really up: the bridge answers and counted the pull
        while True:
            line = p.stdout.readline()
            lines.append(line)
            if "_layerswarm/stats" in line:
                break
        url = re.search(r"(http://127\.0\.0\.1:\d+/_layerswarm/stats)", line).group(1)
        st = json.load(urllib.request.urlopen(url, timeout=10))
        assert helpers.blob_responses(st) >= 2
        p.send_signal(signal.SIGINT)
        rest, _ = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, "".join(lines) + rest
    assert "stopping the stack" in rest
    assert _procs_mentioning(str(work)) == []
