"""``layerswarm ca init DIR`` and ``layerswarm ca issue DIR NAME``: a fleet CA and host certificates.

``init`` writes ``DIR/ca.pem`` (give it to every host as ``--fleet-ca``) and
``DIR/ca-key.pem`` (keep it off the fleet).  ``issue`` writes
``DIR/NAME.pem`` and ``DIR/NAME-key.pem``: one certificate per host, good for
its HTTPS server, its client calls and libtorrent's SSL torrents.
"""
from __future__ import annotations

import os
from pathlib import Path

from layerswarm.bridge.format import pki
from layerswarm.bridge.format.errors import UserError


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="ca_command", metavar="ACTION")
    sub.required = True
    init = sub.add_parser("init", help="make a fleet CA in DIR (ca.pem, ca-key.pem)")
    init.add_argument("dir", metavar="DIR")
    init.add_argument("--name", default="layerswarm fleet CA", help="the CA's common name (default %(default)s)")
    init.add_argument("--days", type=int, default=3650, help="validity (default %(default)s)")
    issue = sub.add_parser("issue", help="issue a host certificate from DIR's CA (DIR/NAME.pem, DIR/NAME-key.pem)")
    issue.add_argument("dir", metavar="DIR")
    issue.add_argument("name", metavar="NAME", help="the host's name: its identity (CN) and first SAN")
    issue.add_argument("--dns", action="append", default=[], metavar="D", help="another DNS name (repeatable)")
    issue.add_argument("--ip", action="append", default=[], metavar="A", help="an address of the host (repeatable)")
    issue.add_argument("--days", type=int, default=365, help="validity (default %(default)s)")


def run(args) -> int:
    d = Path(args.dir)
    if args.days <= 0:
        raise UserError("--days must be positive")
    if args.ca_command == "init":
        if (d / pki.CA_KEY).exists():
            raise UserError(f"{d / pki.CA_KEY} exists: refusing to replace a fleet CA")
        d.mkdir(parents=True, exist_ok=True)
        cert, key = pki.create_ca(args.name, args.days)
        _write(d / pki.CA_KEY, key, secret=True)
        _write(d / pki.CA_CERT, cert)
        print(f"fleet CA: {d / pki.CA_CERT} (give to every host as --fleet-ca); key: {d / pki.CA_KEY} (keep safe)")
        return 0
    try:
        ca_cert, ca_key = (d / pki.CA_CERT).read_bytes(), (d / pki.CA_KEY).read_bytes()
    except OSError as exc:
        raise UserError(f"no fleet CA in {d} ({exc.strerror}): run `layerswarm ca init {d}` first") from None
    for ip in args.ip:
        _check_ip(ip)
    cert, key = pki.issue(ca_cert, ca_key, args.name, dns=args.dns, ips=args.ip, days=args.days)
    _write(d / f"{args.name}-key.pem", key, secret=True)
    _write(d / f"{args.name}.pem", cert)
    print(f"host certificate: {d / args.name}.pem, key: {d / args.name}-key.pem "
          f"(--fleet-cert / --fleet-key, or the tracker's --tls-cert / --tls-key)")
    return 0


def _write(path: Path, data: bytes, secret: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _check_ip(text: str) -> None:
    import ipaddress
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise UserError(f"--ip {text!r} is not an IP address (use --dns for names)") from None
