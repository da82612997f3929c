"""A fleet CA and host certificates on disk for the local stack and the tests (secure fleet mode)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from layerswarm.bridge.format import pki


@dataclass
class FleetFiles:
    """Where a local fleet's certificates are: ``ca``, and ``cert(name)`` / ``key(name)`` per host."""

    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / pki.CA_CERT

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}-key.pem"

    def args(self, name: str, prefix: str = "--fleet") -> list:
        """``--fleet-ca CA --fleet-cert C --fleet-key K`` for host ``name``."""
        return [f"{prefix}-ca", self.ca, f"{prefix}-cert", self.cert(name), f"{prefix}-key", self.key(name)]

    def issue(self, name: str, ips=("127.0.0.1",), dns=()) -> "FleetFiles":
        ca = (self.ca.read_bytes(), (self.dir / pki.CA_KEY).read_bytes())
        cert, key = pki.issue(*ca, name, dns=dns, ips=ips)
        self.cert(name).write_bytes(cert)
        self.key(name).write_bytes(key)
        self.key(name).chmod(0o600)
        return self


def make_fleet(workdir: Path, *hosts: str, ca_name: str = "layerswarm test fleet") -> FleetFiles:
    """A new fleet CA in ``workdir`` and a certificate (on 127.0.0.1) for each of ``hosts``."""
    d = Path(workdir)
    d.mkdir(parents=True, exist_ok=True)
    cert, key = pki.create_ca(ca_name)
    (d / pki.CA_KEY).write_bytes(key)
    (d / pki.CA_KEY).chmod(0o600)
    (d / pki.CA_CERT).write_bytes(cert)
    files = FleetFiles(d)
    for h in hosts:
        files.issue(h)
    return files
