"""The fleet's certificates: a fleet CA, host certificates that fit every use, identities, TLS contexts.

One host certificate serves everywhere a host meets another: the tracker's
and the fleet listener's HTTPS server certificate, the client certificate of
every host-to-host call, and libtorrent's SSL torrents (which check the peer's
subjectAltName against the torrent name or ``*``, hence ``DNS:*``).  ECDSA
P-256.  The host's identity is the subject CN.

Contexts re-read their files when they change (cert-manager rotates them in
place): :class:`FleetTLS` reloads the certificate chain into the same
``SSLContext``, so new handshakes use the new certificate without a restart.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
import threading
import time

from layerswarm.bridge.format.errors import UserError

CA_CERT, CA_KEY = "ca.pem", "ca-key.pem"


def create_ca(name: str = "layerswarm fleet CA", days: int = 3650) -> tuple[bytes, bytes]:
    """A new fleet CA: (certificate PEM, private key PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return _pem(cert), _key_pem(key)


def issue(ca_cert_pem: bytes, ca_key_pem: bytes, name: str, dns=(), ips=(), days: int = 365) -> tuple[bytes, bytes]:
    """A host certificate signed by the fleet CA: CN=``name``; SAN = ``name`` (a DNS name or an
    address), ``dns``, ``ips`` and ``*``; TLS server and client use.  (certificate PEM, key PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not name or any(c in name for c in "\n\r\0/"):
        raise UserError(f"host name {name!r} is not a usable certificate name")
    sans, seen = [], set()
    for entry in (name, *dns, *ips, "*"):
        try:
            san = x509.IPAddress(ipaddress.ip_address(entry))
        except ValueError:
            san = x509.DNSName(entry)
        if san not in seen:
            seen.add(san)
            sans.append(san)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_agreement=True, key_cert_sign=False,
                                         crl_sign=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return _pem(cert), _key_pem(key)


def identity(peercert: dict | None) -> str | None:
    """The host a verified peer certificate (``SSLSocket.getpeercert()``) names: its subject CN."""
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


def serial(peercert: dict | None) -> str | None:
    """The certificate's serial number as upper-case hex (as ``getpeercert()`` gives it)."""
    value = (peercert or {}).get("serialNumber")
    return (value.upper().lstrip("0") or "0") if value else None


def _pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class FleetTLS:
    """A host's fleet TLS material (CA, certificate, key files) and the contexts built from it.

    ``server_context()`` asks every client for a certificate from the fleet CA (``require``: refuse
    a handshake without one; else the views decide); ``client_context()`` presents ours and
    verifies the server against the fleet CA.  Both re-read the certificate and key when the files
    change, checked at most every ``check_every`` seconds by :meth:`maybe_reload`.  Without a CA
    (``ca_file`` None: an open-mode HTTPS server) the server context asks for no certificate.
    """

    def __init__(self, ca_file: str | None, cert_file: str, key_file: str, check_every: float = 5.0):
        self.ca_file, self.cert_file, self.key_file = ca_file, cert_file, key_file
        self.check_every = check_every
        self._servers: dict = {}   # id(context handed out) -> (it, require, the newest context for it)
        self._clients: list = []
        self._lock = threading.Lock()
        self._stamp = self._mtimes()
        self._checked = time.monotonic()
        self.ca_pem = _read(ca_file, "fleet CA") if ca_file else None
        self._ca_pems: list[bytes] = [self.ca_pem] if ca_file else []
        _read(cert_file, "fleet certificate")
        _read(key_file, "fleet key")

    def requests_options(self) -> dict:
        """``verify``/``cert`` for a requests session: the fleet CA only (never the public bundle),
        our certificate; the files are read per connection, so rotation needs nothing more."""
        return {"verify": self.ca_file, "cert": (self.cert_file, self.key_file)}

    def host_pair(self) -> tuple[bytes, bytes]:
        """This host's certificate and key PEM as they are on disk now (libtorrent's SSL torrents take
        them as buffers; only the first certificate of the file counts); UserError when unreadable
        or when the key is not the certificate's (a rotation half-written)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        cert, key = _read(self.cert_file, "fleet certificate"), _read(self.key_file, "fleet key")
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        try:
            ours = x509.load_pem_x509_certificate(cert).public_key().public_bytes(*spki)
            theirs = serialization.load_pem_private_key(key, password=None).public_key().public_bytes(*spki)
        except (ValueError, TypeError) as exc:
            raise UserError(f"fleet certificate {self.cert_file} or key {self.key_file}: {exc}") from None
        if ours != theirs:
            raise UserError(f"fleet key {self.key_file} is not the key of the certificate {self.cert_file}")
        return cert, key

    def check(self) -> str:
        """What ``--check-config`` asks of the files: the key is the certificate's, a CA in the CA file
        signed the certificate directly, and it is valid now.  The certificate's CN."""
        from cryptography import x509
        from cryptography.x509.oid import NameOID
        cert = x509.load_pem_x509_certificate(self.host_pair()[0])
        if self.ca_pem is not None:
            try:
                cas = x509.load_pem_x509_certificates(self.ca_pem)
            except ValueError as exc:
                raise UserError(f"fleet CA {self.ca_file}: {exc}") from None
            if not any(_issued_by(cert, ca) for ca in cas):
                raise UserError(f"certificate {self.cert_file} was not issued by the fleet CA {self.ca_file}")
        now = datetime.datetime.now(datetime.timezone.utc)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise UserError(f"certificate {self.cert_file} is not valid now (valid "
                            f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d})")
        self.server_context()
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return f"CN {names[0].value if names else '?'}, valid to {cert.not_valid_after_utc:%Y-%m-%d}"

    def server_context(self, require: bool = True) -> ssl.SSLContext:
        ctx = self._build(ssl.PROTOCOL_TLS_SERVER, require, self.cert_file, self.key_file)
        # Handshakes run on other threads while a rotation is loaded, and a context loaded in place is
        # for a moment the new certificate with the old key (those handshakes fail).  So a server
        # context is never reloaded: its SNI callback, run for every ClientHello with or without a
        # server name, hands the handshake to the newest context built from the files.
        ctx.sni_callback = self._to_newest
        with self._lock:
            self._servers[id(ctx)] = (ctx, require, ctx)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = self._build(ssl.PROTOCOL_TLS_CLIENT, True, self.cert_file, self.key_file)  # verifies the server
        with self._lock:
            self._clients.append(ctx)
        return ctx

    def _build(self, protocol, require: bool, cert_file: str, key_file: str) -> ssl.SSLContext:
        ctx = ssl.SSLContext(protocol)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.ca_file and protocol == ssl.PROTOCOL_TLS_SERVER:
            ctx.verify_mode = ssl.CERT_REQUIRED if require else ssl.CERT_OPTIONAL
        try:
            for pem in self._ca_pems:   # every CA seen since start: a CA rotation keeps the old one trusted
                ctx.load_verify_locations(cadata=pem.decode("ascii", "replace"))
            ctx.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise UserError(f"fleet TLS files ({self.cert_file}, {self.key_file}, CA {self.ca_file}): {exc}") from None
        return ctx

    def _to_newest(self, sock, _server_name, ctx) -> None:
        entry = self._servers.get(id(ctx))
        if entry is not None and entry[2] is not ctx:
            sock.context = entry[2]

    def maybe_reload(self) -> bool:
        """Build contexts from the files again if they changed (True if they did); server contexts
        already handed out pass new handshakes on to them, client contexts load the pair."""
        now = time.monotonic()
        if now - self._checked < self.check_every:
            return False
        self._checked = now
        stamp = self._mtimes()
        if stamp == self._stamp:
            return False
        try:
            # One snapshot of the files, checked (the key is the certificate's) before anything live
            # sees it: a rotation half-written is tried again at the next check.
            cert, key = self.host_pair()
            ca = _read(self.ca_file, "fleet CA") if self.ca_file else None
        except UserError:
            return False
        with self._lock, tempfile.TemporaryDirectory(prefix="layerswarm-tls-") as d:
            cert_file, key_file = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
            with open(os.open(cert_file, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
                f.write(cert)
            with open(os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
                f.write(key)
            if ca is not None and ca not in self._ca_pems:
                self._ca_pems.append(ca)
            try:
                newest = {k: (front, require, self._build(ssl.PROTOCOL_TLS_SERVER, require, cert_file, key_file))
                          for k, (front, require, _) in self._servers.items()}
                for ctx in self._clients:   # not shared with handshakes in flight
                    for pem in self._ca_pems:
                        ctx.load_verify_locations(cadata=pem.decode("ascii", "replace"))
                    ctx.load_cert_chain(cert_file, key_file)
            except (UserError, OSError, ssl.SSLError, ValueError):
                return False
            self._servers.update(newest)
            self._stamp = stamp
        return True

    def _mtimes(self) -> tuple:
        out = []
        for path in filter(None, (self.ca_file, self.cert_file, self.key_file)):
            try:
                st = os.stat(path)
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                out.append(None)
        return tuple(out)


def _issued_by(cert, ca) -> bool:
    from cryptography.exceptions import InvalidSignature
    try:
        cert.verify_directly_issued_by(ca)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise UserError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
