"""Secure fleet mode at the tracker: who a caller is (its verified certificate), the deny list, the fleet CA.

The TLS layer (server.py) verifies a client certificate against the fleet
CA when one is shown but lets callers without one through, so ``/healthz``
and the operator with the admin token need none; the views decide
(access.py).  A caller is the host its certificate names: the subject CN,
with the subjectAltName entries it may advertise relay URLs under.  A
certificate whose serial is on the deny list counts as no certificate.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from dataclasses import dataclass

from layerswarm.bridge.format import pki
from layerswarm.bridge.format.errors import UserError

log = logging.getLogger(__name__)
ENVIRON_KEY = "layerswarm.fleet_host"   # where the Flask app keeps the caller for its views


def address(text: str):
    """``text`` as an IP address (IPv4-mapped IPv6 as its IPv4 address); ValueError if it is not one."""
    ip = ipaddress.ip_address(text)
    return getattr(ip, "ipv4_mapped", None) or ip


@dataclass(frozen=True)
class FleetHost:
    """A caller with a verified fleet certificate."""

    name: str                   # subject CN: the host's identity at the tracker
    serial: str                 # upper-case hex, as on the deny list
    dns: frozenset = frozenset()         # subjectAltName DNS names, lower case
    addresses: frozenset = frozenset()   # subjectAltName IP addresses

    @classmethod
    def from_peercert(cls, cert: dict) -> FleetHost | None:
        name = pki.identity(cert)
        if not name:
            return None
        dns, addresses = set(), set()
        for kind, value in cert.get("subjectAltName", ()):
            if kind == "DNS":
                dns.add(value.lower())
            elif kind == "IP Address":
                try:
                    addresses.add(address(value.strip()))
                except ValueError:
                    pass
        return cls(name, pki.serial(cert) or "", frozenset(dns), frozenset(addresses))

    def owns(self, host: str) -> bool:
        """True when ``host`` (a URL's host) is one of the certificate's subjectAltName entries,
        literally: wildcards (``DNS:*``, there for libtorrent's SSL torrents) name no host."""
        try:
            return address(host) in self.addresses
        except ValueError:
            return "*" not in host and host.lower().rstrip(".") in self.dns


class WatchedFile:
    """A small file's bytes, re-read when it changes (checked at most every ``check_every`` seconds).

    A file that cannot be read keeps its last contents (a rotation half-done); one that never
    could is refused at start.
    """

    def __init__(self, path: str, what: str, check_every: float = 2.0):
        self.path, self.what, self.check_every = path, what, check_every
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        try:
            self._stamp, self.data = self._read(None)
        except OSError as exc:
            raise UserError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None

    def _read(self, stamp) -> tuple:
        """(stamp, contents), contents None when the stamp is ``stamp``; OSError when unreadable."""
        st = os.stat(self.path)
        new = (st.st_mtime_ns, st.st_size, st.st_ino)
        if new == stamp:
            return stamp, None
        with open(self.path, "rb") as f:
            return new, f.read()

    def refresh(self) -> bool:
        """Re-read the file if it changed since the last look; True if it was."""
        with self._lock:
            now = time.monotonic()
            if now - self._checked < self.check_every:
                return False
            self._checked = now
            try:
                stamp, data = self._read(self._stamp)
            except OSError as exc:
                log.warning("cannot re-read the %s %s (keeping the last one): %s", self.what, self.path, exc)
                return False
            if data is None:
                return False
            self._stamp, self.data = stamp, data
            return True

    def current(self) -> bytes:
        self.refresh()
        return self.data


def parse_serials(text: bytes) -> frozenset:
    """Serial numbers (hex, any case, optional ``0x``/colons), one per line, ``#`` comments."""
    out = set()
    for line in text.decode("utf-8", "replace").splitlines():
        word = line.split("#", 1)[0].strip().replace(":", "").lower().removeprefix("0x")
        if word:
            try:
                out.add(f"{int(word, 16):X}")
            except ValueError:
                log.warning("deny list: %r is not a hexadecimal serial number, ignored", line.strip())
    return frozenset(out)


class Fleet:
    """The tracker's secure-mode state: the fleet CA (torrents must carry it) and the deny list."""

    def __init__(self, ca_file: str, deny_file: str | None = None):
        self.ca = WatchedFile(ca_file, "fleet CA")
        self.deny = WatchedFile(deny_file, "deny list") if deny_file else None
        self._denied, self._denied_from = frozenset(), None
        self._seen_denied: set = set()

    def ca_pem(self) -> bytes:
        return self.ca.current()

    def denied(self, serial: str) -> bool:
        if self.deny is None:
            return False
        data = self.deny.current()
        if data is not self._denied_from:
            self._denied, self._denied_from = parse_serials(data), data
        return serial in self._denied

    def caller(self, environ) -> FleetHost | None:
        """The fleet host behind this request's TLS connection, or None (no certificate, or a denied one).

        gunicorn hands the connection's socket to the app; its ``getpeercert()`` is the
        certificate the handshake verified against the fleet CA (None when none was shown).
        """
        getpeercert = getattr(environ.get("gunicorn.socket"), "getpeercert", None)
        cert = getpeercert() if getpeercert else None
        host = FleetHost.from_peercert(cert) if cert else None
        if host is not None and self.denied(host.serial):
            if host.serial not in self._seen_denied:   # once per serial: a denied host keeps calling
                self._seen_denied.add(host.serial)
                log.warning("refused %s: certificate serial %s is on the deny list", host.name, host.serial)
            return None
        return host
