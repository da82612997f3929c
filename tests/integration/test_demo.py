"""``layerswarm demo`` as a user runs it (a subprocess, its own daemons)."""
import os
import subprocess
import sys

import pytest

from tests.integration import daemons

pytestmark = pytest.mark.slow


def _demo(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "bridge.cli", "demo", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_demo_pulls_generated_image_and_cleans_up(tmp_path):
    daemons.require_root()
    daemons.require_bridge()
    work = tmp_path / "demo"
    cp = _demo("--workdir", work, "--layers", "2", "--layer-mib", "1")
    out = cp.stdout + cp.stderr
    assert cp.returncode == 0, out
    for step in ("[origin]", "[image]", "[bridge]", "[dockerd]", "[pull]", "--- summary ---"):
        assert step in out, out
    assert "Traceback" not in out
    assert out.count("layer ") >= 2
    # the bridge served both layers and the config; the origin sent each blob once
    summary = out.split("--- summary ---", 1)[1]
    assert "3 blob responses" in summary, out
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
    daemons.require_root()
    daemons.require_bridge()
    env_tmp = tmp_path / "tmp"
    env_tmp.mkdir()
    cp = subprocess.run([sys.executable, "-m", "bridge.cli", "demo", "--layers", "1", "--layer-mib", "0.5"],
                        capture_output=True, text=True, timeout=600, env={**os.environ, "TMPDIR": str(env_tmp)},
                        stdin=subprocess.DEVNULL)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert list(env_tmp.iterdir()) == [], "the demo's temp work dir is removed on exit"


def test_demo_failure_is_one_clear_line(tmp_path):
    daemons.require_root()
    daemons.require_bridge()
    # An upstream nobody listens on: the pull fails, the demo says so and exits non-zero.
    cp = _demo("--workdir", tmp_path / "demo", "--upstream", "http://127.0.0.1:9", "--image", "nothing:here",
               timeout=300)
    assert cp.returncode != 0
    assert "layerswarm demo: error:" in cp.stderr
    assert "Traceback" not in cp.stderr + cp.stdout
