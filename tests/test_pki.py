"""The fleet's certificates: made here, checked by a real TLS handshake on loopback."""
from __future__ import annotations

import socket
import ssl
import threading

import pytest

from layerswarm.bridge.format import pki
from layerswarm.bridge.format.errors import UserError


def _write(d, name, ca, host_name="host-1", **kw):
    cert, key = pki.issue(*ca, host_name, **kw)
    (d / f"{name}.pem").write_bytes(cert)
    (d / f"{name}-key.pem").write_bytes(key)
    return pki.FleetTLS(str(d / "ca.pem"), str(d / f"{name}.pem"), str(d / f"{name}-key.pem"), check_every=0)


@pytest.fixture
def fleet(tmp_path):
    ca = pki.create_ca()
    (tmp_path / "ca.pem").write_bytes(ca[0])
    return tmp_path, ca


def _handshake(server_ctx, client_ctx, server_hostname="127.0.0.1"):
    """(the server's view of the client's certificate, the client's of the server's) or the error."""
    lsock = socket.create_server(("127.0.0.1", 0))
    seen = {}

    def serve():
        conn, _ = lsock.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                seen["client"] = tls.getpeercert()
                tls.recv(1)
        except (ssl.SSLError, OSError) as exc:
            seen["error"] = exc
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with socket.create_connection(lsock.getsockname(), timeout=5) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                server_cert = tls.getpeercert()
                tls.sendall(b"x")
    finally:
        t.join(5)
        lsock.close()
    return seen, server_cert


def test_host_certificates_authenticate_both_ways_and_name_the_host(fleet):
    d, ca = fleet
    server = _write(d, "server", ca, "tracker-1", ips=["127.0.0.1"])
    client = _write(d, "client", ca, "bridge-7")
    seen, server_cert = _handshake(server.server_context(), client.client_context())
    assert pki.identity(seen["client"]) == "bridge-7" and pki.identity(server_cert) == "tracker-1"
    assert pki.serial(seen["client"])
    sans = dict(server_cert["subjectAltName"]).keys() | {v for _, v in server_cert["subjectAltName"]}
    assert "*" in sans and "127.0.0.1" in sans   # libtorrent's SSL torrents match a SAN of "*"


def test_a_certificate_from_another_ca_is_refused(fleet, tmp_path_factory):
    d, ca = fleet
    server = _write(d, "server", ca, "tracker-1", ips=["127.0.0.1"])
    other = tmp_path_factory.mktemp("other")
    other_ca = pki.create_ca("someone else")
    (other / "ca.pem").write_bytes(ca[0])   # trusts our CA, but its certificate is from another one
    stranger = _write(other, "client", other_ca, "stranger")
    try:
        seen, _ = _handshake(server.server_context(), stranger.client_context())
    except (ssl.SSLError, OSError):   # TLS 1.2 tells the client; TLS 1.3 only the server
        seen = {"error": "refused"}
    assert "client" not in seen and "error" in seen


def test_a_rotated_certificate_is_used_for_new_handshakes(fleet):
    d, ca = fleet
    server = _write(d, "server", ca, "tracker-1", ips=["127.0.0.1"])
    client = _write(d, "client", ca, "bridge-old")
    sctx, cctx = server.server_context(), client.client_context()
    assert pki.identity(_handshake(sctx, cctx)[0]["client"]) == "bridge-old"
    cert, key = pki.issue(*ca, "bridge-new")
    (d / "client-key.pem").write_bytes(key)
    (d / "client.pem").write_bytes(cert)
    assert client.maybe_reload()
    assert pki.identity(_handshake(sctx, cctx)[0]["client"]) == "bridge-new"
    assert not client.maybe_reload()


def test_no_handshake_fails_while_the_server_certificate_is_rotated(fleet):
    """Handshakes on another thread while rotations are written file by file (key first, as a
    copy would) and reloaded: every one completes, with the old pair or the new one."""
    d, ca = fleet
    server = _write(d, "server", ca, "tracker-0", ips=["127.0.0.1"])
    client = _write(d, "client", ca, "bridge-1")
    sctx, cctx = server.server_context(), client.client_context()
    lsock = socket.create_server(("127.0.0.1", 0))
    stop, failures, names = threading.Event(), [], set()

    def serve():   # until the socket is closed: a client connecting as ``stop`` is set is served
        while True:
            try:
                conn, _ = lsock.accept()
            except OSError:
                return
            try:
                with sctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError) as exc:
                failures.append(f"server: {exc!r}")

    def rotate():
        for i in range(1, 16):
            cert, key = pki.issue(*ca, f"tracker-{i}", ips=["127.0.0.1"])
            (d / "server-key.pem").write_bytes(key)
            server.maybe_reload()
            (d / "server.pem").write_bytes(cert)
            server.maybe_reload()
        stop.set()
    threads = [threading.Thread(target=serve, daemon=True), threading.Thread(target=rotate, daemon=True)]
    for t in threads:
        t.start()
    while not stop.is_set():
        try:
            with socket.create_connection(lsock.getsockname(), timeout=5) as raw:
                with cctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    names.add(pki.identity(tls.getpeercert()))
                    tls.sendall(b"x")
        except (ssl.SSLError, OSError) as exc:
            failures.append(f"client: {exc!r}")
    lsock.close()
    for t in threads:
        t.join(10)
    assert failures == [] and len(names) > 1
    server._checked = 0
    server.maybe_reload()
    assert pki.identity(_handshake(sctx, cctx)[0]["client"]) == "bridge-1"
    assert pki.identity(_handshake(sctx, cctx)[1]) == "tracker-15"


def test_host_pair_is_the_certificate_and_its_own_key(fleet):
    d, ca = fleet
    tls = _write(d, "host", ca, "bridge-1")
    assert tls.host_pair() == ((d / "host.pem").read_bytes(), (d / "host-key.pem").read_bytes())
    (d / "host-key.pem").write_bytes(pki.issue(*ca, "bridge-2")[1])   # a rotation half-written
    with pytest.raises(UserError, match="not the key of the certificate"):
        tls.host_pair()
    (d / "host-key.pem").write_bytes(b"")
    with pytest.raises(UserError, match="host-key.pem"):
        tls.host_pair()


def test_missing_files_are_a_readable_error(tmp_path):
    with pytest.raises(UserError, match="fleet CA"):
        pki.FleetTLS(str(tmp_path / "nope.pem"), str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))


def test_ca_cli_makes_a_fleet_that_handshakes(tmp_path):
    from tests.fixtures import run_cli
    d = tmp_path / "fleet"
    assert run_cli("ca", "init", d).returncode == 0
    assert oct((d / "ca-key.pem").stat().st_mode & 0o777) == "0o600"
    assert run_cli("ca", "issue", d, "tracker-1", "--ip", "127.0.0.1").returncode == 0
    assert run_cli("ca", "issue", d, "bridge-1").returncode == 0
    server = pki.FleetTLS(str(d / "ca.pem"), str(d / "tracker-1.pem"), str(d / "tracker-1-key.pem"))
    client = pki.FleetTLS(str(d / "ca.pem"), str(d / "bridge-1.pem"), str(d / "bridge-1-key.pem"))
    seen, server_cert = _handshake(server.server_context(), client.client_context())
    assert pki.identity(seen["client"]) == "bridge-1" and pki.identity(server_cert) == "tracker-1"


@pytest.mark.parametrize("argv,message", [
    (["init", "{d}"], "refusing to replace"),
    (["issue", "{d}/../nowhere", "h"], "run `layerswarm ca init"),
    (["issue", "{d}", "h", "--ip", "not-an-ip"], "not an IP address"),
    (["issue", "{d}", "h", "--days", "0"], "--days must be positive"),
])
def test_ca_cli_refuses_clearly(tmp_path, argv, message):
    from tests.fixtures import run_cli
    d = tmp_path / "fleet"
    assert run_cli("ca", "init", d).returncode == 0
    p = run_cli("ca", *[a.format(d=d) for a in argv])
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr
