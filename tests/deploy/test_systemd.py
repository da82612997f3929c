"""deploy/systemd: every ExecStart passes ``--check-config`` on a host installed as the README says; each
unit passes ``systemd-analyze verify`` and is hardened to an exposure of at most 4."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.sandbox import LAYERSWARM, Sandbox, check_command

SYSTEMD = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
UNITS = sorted(p.name for p in SYSTEMD.glob("*.service"))
MAX_EXPOSURE = 4.0


def directives(unit: Path) -> dict:
    """Key -> list of values, every section (systemd allows a key several times)."""
    out: dict = {}
    for line in unit.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_the_units_are_the_ones_the_readme_installs():
    assert UNITS == ["layerswarm-bridge.service", "layerswarm-containerd-hosts.service",
                     "layerswarm-tracker.service"]
    readme = (SYSTEMD.parents[1] / "README.md").read_text()
    for name in UNITS + ["bridge.toml", "tracker.toml", "layerswarm.sysusers.conf"]:
        assert f"deploy/systemd/{name}" in readme, name


@pytest.mark.parametrize("unit", UNITS)
def test_exec_start_passes_check_config(unit, tmp_path, monkeypatch):
    box = Sandbox(tmp_path, ["/etc/layerswarm", "/var/lib/layerswarm", "/etc/containerd"])
    for conf in ("bridge.toml", "tracker.toml"):    # README: install -m 0640 deploy/systemd/*.toml /etc/layerswarm/
        box.write(f"/etc/layerswarm/{conf}", box.rewrite((SYSTEMD / conf).read_text()))
    box.fleet_files("/etc/layerswarm/fleet/ca.pem", "/etc/layerswarm/fleet/host.pem",
                    "/etc/layerswarm/fleet/host-key.pem")
    box.write_token("/etc/layerswarm/admin-token")
    d = directives(SYSTEMD / unit)
    assert len(d["ExecStart"]) == 1
    env = dict(v.split("=", 1) for e in d.get("Environment", []) for v in shlex.split(e))
    line = check_command(shlex.split(d["ExecStart"][0]), env, box, monkeypatch)
    if unit == "layerswarm-bridge.service":
        assert "--store-dir /var/lib/layerswarm" in d["ExecStart"][0] and d["StateDirectory"] == ["layerswarm"]
        assert "secure mode" in line
    if unit == "layerswarm-tracker.service":
        assert "secure fleet mode" in line and "store redis://" in line


def _installed_copy(unit: str, tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's command (verify wants an executable)."""
    exe = Path(sys.executable).with_name("layerswarm")
    assert exe.exists(), exe
    text = (SYSTEMD / unit).read_text()
    assert LAYERSWARM[1] in text
    copy = tmp_path / unit
    copy.write_text(text.replace(LAYERSWARM[1], str(exe)))
    return copy


@pytest.mark.slow
@pytest.mark.parametrize("unit", UNITS)
def test_systemd_analyze_verify_and_security(unit, tmp_path):
    assert shutil.which("systemd-analyze"), "systemd-analyze (Debian's systemd) is part of the machine"
    copy = _installed_copy(unit, tmp_path)
    p = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and unit not in p.stderr, p.stderr
    p = subprocess.run(["systemd-analyze", "security", "--offline=true", str(copy)], capture_output=True,
                       text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", p.stdout)
    assert m, p.stdout + p.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, p.stdout
