"""Secure fleet mode end to end: a secure tracker and three secure bridges, dockerd pulling through each in
turn (the first bridge's certificate rotated on disk after its pull).  Layers travel between hosts only over TLS (SSL torrents, the fleet listener): a capture of every
host-to-host port holds no run of any layer's bytes."""
from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import time

import pytest
import requests

from layerswarm.bridge.devstack import daemons as devstack
from tests.fixtures import FleetPKI, free_port, origin_blob_gets, stats, wait_for
from tests.integration import helpers

pytestmark = pytest.mark.slow

RUN = 64   # a leak is any 64-byte run of a layer; sampled every SAMPLE bytes (a plaintext leak is long)
SAMPLE = 4096


def _capture(ports: list, path):
    """tcpdump of loopback TCP on ``ports`` (both directions), written as it comes."""
    expr = "tcp and (" + " or ".join(f"port {p}" for p in ports) + ")"
    p = subprocess.Popen(["tcpdump", "-i", "lo", "-U", "-s", "0", "-w", str(path), expr],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.5)   # listening before the first packet
    assert p.poll() is None, p.stderr.read().decode()
    return p


def _leaks(captured: bytes, layers) -> list:
    """(layer digest, offset) of every sampled 64-byte run of a layer found in the capture."""
    found = []
    for layer in layers:
        for off in range(0, len(layer.data) - RUN, SAMPLE):
            if layer.data[off:off + RUN] in captured:
                found.append((str(layer.digest), off))
    return found


@pytest.mark.parametrize("mode", ["secure", "open"])
def test_three_bridges_trade_layers_only_over_tls_in_a_secure_fleet(docker, origin, tmp_path, mode):
    """The open run is the control: the same capture of an open fleet is full of layer bytes."""
    secure = mode == "secure"
    pki = FleetPKI(tmp_path / "fleet")
    tcert = pki.host("tracker")
    tracker = devstack.start_tracker(tmp_path / "tracker", tls=(tcert.cert, tcert.key, pki.ca) if secure else None)
    tls_kw = {"verify": str(pki.ca), "cert": tcert.pair} if secure else {}
    name = helpers.unique("secure")
    img = helpers.push_image(origin.url, f"library/{name}", layer_sizes=(3 << 20, 2 << 20, 1 << 20))
    ports = {f"b{i}": {k: free_port() for k in ("peer", "ssl", "fleet")} for i in range(3)}
    host_ports = [int(tracker.url.rsplit(":", 1)[1])] + [p for b in ports.values() for p in b.values()]
    dump = tmp_path / "hosts.pcap"
    cap = _capture(host_ports, dump)
    bridges = []
    try:
        for i, (host, p) in enumerate(ports.items()):
            bridges.append(devstack.start_bridge(
                tmp_path / host, upstream=origin.url, tracker=tracker.url, name=f"bridge-{host}",
                fleet=pki if secure else None,
                extra=["--host-id", host, "--tiny-blob-bytes", "65536", "--peer-listen", f"127.0.0.1:{p['peer']}",
                       "--peer-ssl-listen", f"127.0.0.1:{p['ssl']}", "--fleet-listen", f"127.0.0.1:{p['fleet']}"]))
        for i, b in enumerate(bridges):
            docker.set_mirrors([b.url])
            docker.pull(f"{name}:v1")
            assert docker.image_inspect(f"{name}:v1")["Id"] == str(img.config.digest)
            docker.remove_all_images()
            if i == 0 and secure:
                # cert-manager rotates the first bridge's certificate in place: the next pulls, which
                # take their layers from it over SSL, must not notice.
                pki.host("bridge-b0")
            if i == 0:   # the first bridge's layers are published and seeded before the next pulls
                wait_for(lambda: all(
                    requests.get(f"{tracker.url}/metainfo/{layer.digest}", timeout=10, **tls_kw).status_code == 200
                    for layer in img.layers), what="torrents published")
        # Each layer left the origin once; every later bridge got layers from peers, over SSL.
        gets = origin_blob_gets(origin, f"library/{name}")
        assert all(gets.get(str(layer.digest)) == 1 for layer in img.layers), gets
        for b in bridges[1:]:
            st = stats(b)
            assert st["fleet_mode"] == mode and st["fetched"]["peer"] >= len(img.layers[0].data), st
        # Outsiders: no certificate gets through the fleet listener or the SSL peer port.
        for b, p in zip(bridges, ports.values() if secure else ()):
            with pytest.raises(requests.exceptions.RequestException):
                requests.get(b.fleet_url + "/healthz", verify=str(pki.ca), timeout=10).raise_for_status()
            ctx = ssl.create_default_context(cafile=str(pki.ca))
            ctx.check_hostname = False
            with pytest.raises((ssl.SSLError, OSError)):
                with socket.create_connection(("127.0.0.1", p["ssl"]), timeout=10) as raw:
                    with ctx.wrap_socket(raw) as tls:
                        tls.sendall(b"\x13BitTorrent protocol")
                        if not tls.recv(1):
                            raise OSError("closed without a byte")
    finally:
        cap.send_signal(signal.SIGINT)
        cap.wait(10)
        for b in bridges:
            b.stop()
        tracker.stop()
    captured = dump.read_bytes()
    assert len(captured) > sum(len(layer.data) for layer in img.layers), "the hosts exchanged the layers"
    if secure:
        assert _leaks(captured, img.layers) == []
    else:
        assert len(_leaks(captured, img.layers)) > 100   # the check sees plain layer bytes when they are there


def test_seed_and_inspect_in_a_secure_fleet(tmp_path):
    from layerswarm.bridge.format import layertorrent as tf
    from layerswarm.bridge.format.digest import Digest
    from tests.fixtures import blob_bytes, run_cli
    pki = FleetPKI(tmp_path / "fleet")
    tcert, seeder = pki.host("tracker"), pki.host("ci-seeder")
    tracker = devstack.start_tracker(tmp_path / "tracker", tls=(tcert.cert, tcert.key, pki.ca))
    try:
        blob = tmp_path / "layer.bin"
        blob.write_bytes(blob_bytes(700_000, b"secure-seed"))
        digest = Digest.of_bytes(blob.read_bytes())
        r = run_cli("seed", blob, "--raw", "--exit", "--tracker", tracker.url, "--store-dir", tmp_path / "store",
                    "--listen", f"127.0.0.1:{free_port()}", "--ssl-listen", f"127.0.0.1:{free_port()}",
                    *pki.args(seeder))
        assert r.returncode == 0, r.stderr
        meta = requests.get(f"{tracker.url}/metainfo/{digest}", verify=str(pki.ca), cert=seeder.pair, timeout=10)
        t = tf.parse_metainfo(meta.content, digest)
        assert t.format == 2 and t.ssl_cert == tf.root_cert(pki.ca_pem)   # the fleet's SSL torrent
        r = run_cli("inspect", digest, "--tracker", tracker.url, *pki.args(seeder))
        assert r.returncode == 0 and str(digest) in r.stdout, r.stderr
        # Without a certificate: a readable refusal, no traceback.
        r = run_cli("inspect", "--tracker", tracker.url, "--fleet-ca", pki.ca)
        assert r.returncode != 0 and "Traceback" not in r.stderr and "go together" in r.stderr
        r = run_cli("inspect", "--tracker", tracker.url)
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    finally:
        tracker.stop()


def test_a_host_not_yet_switched_keeps_pulling_from_the_origin(origin, tmp_path):
    """Upgrading a fleet one host at a time: a bridge still in open mode cannot reach the secure tracker
    (HTTPS with a fleet certificate only), so it serves every pull from the origin instead."""
    from layerswarm.bridge.format.digest import Digest
    from tests.swarm.helpers import pull_blob
    pki = FleetPKI(tmp_path / "fleet")
    tcert = pki.host("tracker")
    tracker = devstack.start_tracker(tmp_path / "tracker", tls=(tcert.cert, tcert.key, pki.ca))
    name = helpers.unique("upgrade")
    img = helpers.push_image(origin.url, f"library/{name}", layer_sizes=(2 << 20, 1 << 20))
    old = devstack.start_bridge(tmp_path / "old", upstream=origin.url, tracker=tracker.url, name="bridge-old",
                                extra=["--tracker-backoff", "30"])
    try:
        for layer in img.layers:
            assert Digest.of_bytes(pull_blob(old.url, f"library/{name}", layer.digest)) == layer.digest
        assert stats(old)["fetched"]["origin"] >= sum(len(layer.data) for layer in img.layers)
    finally:
        old.stop()
        tracker.stop()
