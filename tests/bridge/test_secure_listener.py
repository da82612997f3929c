"""Secure fleet mode on the bridge's listeners: the fleet listener answers only hosts with a fleet certificate."""
from __future__ import annotations

import pytest
import requests

from layerswarm.bridge.devstack.certs import FleetPKI

HEX = "cd" * 32


@pytest.fixture
def fleet_dir(tmp_path):
    """A fleet CA with certificates for this bridge (on 127.0.0.1) and another host; an outsider from another CA."""
    fleet = FleetPKI(tmp_path / "fleet")
    fleet.host("bridge-1")
    fleet.host("bridge-2")
    FleetPKI(tmp_path / "other", "not our fleet").host("stranger")
    for suffix in (".pem", "-key.pem"):
        (fleet.dir / f"stranger{suffix}").write_bytes((tmp_path / "other" / f"stranger{suffix}").read_bytes())
    return fleet.dir


def _secure_bridge(local_bridge, local_tracker, d):
    return local_bridge("--tracker", local_tracker.url, "--fleet-ca", d / "ca.pem",
                        "--fleet-cert", d / "bridge-1.pem", "--fleet-key", d / "bridge-1-key.pem")


def test_fleet_listener_answers_fleet_hosts_only(local_tracker, local_bridge, fleet_dir):
    d = fleet_dir
    b = _secure_bridge(local_bridge, local_tracker, d)
    url = b.fleet_url.replace("http://", "https://") + f"/_layerswarm/relay/sha256:{HEX}"
    ca = str(d / "ca.pem")
    # a fleet host: through the handshake, then the view (the blob is simply not held here)
    r = requests.get(url, verify=ca, cert=(d / "bridge-2.pem", d / "bridge-2-key.pem"), timeout=10)
    assert r.status_code == 404 and r.json()["error"] == "not fetching this blob"
    # no certificate, another CA's certificate, plain HTTP: nothing
    for cert in (None, (d / "stranger.pem", d / "stranger-key.pem")):
        with pytest.raises(requests.exceptions.RequestException):
            requests.get(url, verify=ca, cert=cert, timeout=10).raise_for_status()
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(url.replace("https://", "http://"), timeout=10).raise_for_status()
    # the client API stays plain HTTP on loopback
    assert requests.get(b.url + "/healthz", timeout=10).status_code == 200


def test_the_table_also_refuses_a_fleet_call_without_a_certificate(local_tracker, local_bridge, fleet_dir):
    """Belt and braces: the fleet app itself refuses a request that reached it without a certificate."""
    b = _secure_bridge(local_bridge, local_tracker, fleet_dir)
    fleet_app = b.listeners[1].app
    r = fleet_app.test_client().get(f"/_layerswarm/relay/sha256:{HEX}")
    assert r.status_code == 403 and "fleet certificate" in r.get_json()["error"]
    cert = {"subject": ((("commonName", "bridge-2"),),)}
    r = fleet_app.test_client().get(f"/_layerswarm/relay/sha256:{HEX}", environ_base={"layerswarm.peercert": cert})
    assert r.status_code == 404


def test_fleet_options_go_together(tmp_path):
    from tests.fixtures import run_cli
    p = run_cli("bridge", "--store-dir", tmp_path, "--fleet-ca", tmp_path / "ca.pem", "--check-config")
    assert p.returncode == 2 and "go together" in p.stderr
    p = run_cli("bridge", "--store-dir", tmp_path, "--tracker", "http://127.0.0.1:9", "--fleet-ca",
                tmp_path / "ca.pem", "--fleet-cert", tmp_path / "c.pem", "--fleet-key", tmp_path / "k.pem")
    assert p.returncode == 2 and "cannot read the fleet CA" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow
def test_a_rotated_certificate_is_served_by_the_fleet_listener_without_a_restart(local_tracker, local_bridge,
                                                                                  tmp_path):
    import socket
    import ssl
    from layerswarm.bridge.format import pki as fpki
    from tests.fixtures import wait_for
    fleet = FleetPKI(tmp_path / "fleet")
    mine, other = fleet.host("bridge-1"), fleet.host("bridge-2")
    b = local_bridge("--tracker", local_tracker.url, *fleet.args(mine))
    port = b.listeners[1].port
    ctx = ssl.create_default_context(cafile=str(fleet.ca))
    ctx.load_cert_chain(*other.pair)

    def served_name():
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                return fpki.identity(tls.getpeercert())
    assert served_name() == "bridge-1"
    rotated = fleet.host("bridge-1-rotated")
    mine.key.write_bytes(rotated.key.read_bytes())
    mine.cert.write_bytes(rotated.cert.read_bytes())
    wait_for(lambda: served_name() == "bridge-1-rotated", timeout=30, what="the rotated certificate served")
