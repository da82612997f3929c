"""A pretend host under a temporary root, so deploy/'s commands can be checked as they are written.

deploy/ names absolute paths (/etc/layerswarm/..., /var/lib/layerswarm, a pod's
mount paths); a :class:`Sandbox` puts the files an operator installs under a
temporary root and rewrites those paths to point there.  :func:`check_command`
then runs ``layerswarm ... --check-config`` in this process with the command's
environment.
"""
from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from tests.fixtures import FleetPKI, run_cli

LAYERSWARM = ("layerswarm", "/usr/local/bin/layerswarm")


class Sandbox:
    def __init__(self, root: Path, prefixes):
        self.root = Path(root)
        # longest first, so /etc/layerswarm/fleet wins over /etc/layerswarm
        self.prefixes = sorted({p.rstrip("/") for p in prefixes}, key=len, reverse=True)
        self.pki = None

    def path(self, p: str) -> Path:
        return self.root / p.lstrip("/")

    def rewrite(self, text: str) -> str:
        """Every path under a prefix now points into the root (a prefix counts only as whole components)."""
        alts = "|".join(map(re.escape, self.prefixes))
        return re.sub(rf"(?<![\w./-])({alts})(?![\w.-])", lambda m: str(self.root) + m.group(1), text)

    def write(self, path: str, content) -> Path:
        f = self.path(path)
        f.parent.mkdir(parents=True, exist_ok=True)
        (f.write_bytes if isinstance(content, bytes) else f.write_text)(content)
        return f

    def tls_files(self, name: str) -> dict:
        """A certificate and key from the sandbox's fleet CA, by the names cert-manager gives them."""
        if self.pki is None:
            self.pki = FleetPKI(self.root / "_pki")
        h = self.pki.host(name)
        return {"ca.crt": self.pki.ca_pem, "tls.crt": h.cert.read_bytes(), "tls.key": h.key.read_bytes()}

    def fleet_files(self, ca: str, cert: str, key: str, host: str = "host-1") -> None:
        """The fleet CA and a host certificate from it at these paths (``layerswarm ca`` or cert-manager)."""
        files = self.tls_files(host)
        for path, name in ((ca, "ca.crt"), (cert, "tls.crt"), (key, "tls.key")):
            self.write(path, files[name])

    def write_token(self, path: str) -> None:
        self.write(path, token())


def token() -> str:
    return secrets.token_hex(16) + "\n"


def check_command(argv, environ: dict, sandbox: Sandbox, monkeypatch) -> str:
    """``argv --check-config`` with ``environ`` (nothing else of ours), paths rewritten; the OK line."""
    assert argv[0] in LAYERSWARM, f"not our command: {argv}"
    for k in [k for k in os.environ if k.startswith("LAYERSWARM_")]:
        monkeypatch.delenv(k)
    for k, v in environ.items():
        monkeypatch.setenv(k, sandbox.rewrite(v))
    p = run_cli(*[sandbox.rewrite(a) for a in argv[1:]], "--check-config")
    assert p.returncode == 0, f"{' '.join(argv)}:\n{p.stderr}"
    assert p.stdout.startswith("configuration OK: "), p.stdout
    return p.stdout.strip()
