"""A fleet CA and host certificates on disk for the local stack and the tests (secure fleet mode)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from layerswarm.bridge.format import pki


@dataclasses.dataclass(frozen=True)
class HostCert:
    cert: Path
    key: Path
    serial: str   # upper-case hex, as on a deny list

    @property
    def pair(self) -> tuple:
        """For requests' ``cert=``."""
        return str(self.cert), str(self.key)


class FleetPKI:
    """A fleet CA (``.ca``: its certificate file; ``.ca_pem``) and host certificates in ``directory``."""

    def __init__(self, directory: Path, ca_name: str = "test fleet CA"):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_pem, self._ca_key = pki.create_ca(ca_name)
        self.ca = self.dir / pki.CA_CERT
        self.ca.write_bytes(self.ca_pem)

    def host(self, name: str, dns=(), ips=("127.0.0.1",)) -> HostCert:
        """A new certificate for ``name`` (a new serial each time), written to ``<dir>/<name>.pem``."""
        from cryptography import x509
        cert, key = pki.issue(self.ca_pem, self._ca_key, name, dns=dns, ips=ips)
        paths = HostCert(self.dir / f"{name}.pem", self.dir / f"{name}-key.pem",
                         f"{x509.load_pem_x509_certificate(cert).serial_number:X}")
        paths.cert.write_bytes(cert)
        paths.key.write_bytes(key)
        paths.key.chmod(0o600)
        return paths

    def args(self, host: HostCert) -> list:
        """A bridge's (or seed's, inspect's) ``--fleet-ca/--fleet-cert/--fleet-key`` for ``host``."""
        return ["--fleet-ca", self.ca, "--fleet-cert", host.cert, "--fleet-key", host.key]
