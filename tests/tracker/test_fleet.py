"""Secure fleet mode at the tracker: a caller is the host its certificate names (leases, relay URLs,
reports, announces bound to it), torrents carry the fleet CA, deny list and certificates re-read."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import ssl
from urllib.parse import quote_from_bytes

import bencodepy
import pytest
import requests

from layerswarm.bridge.format import pki
from layerswarm.bridge.format.errors import UserError
from layerswarm.bridge.format.layertorrent import build_metainfo, root_cert
from layerswarm.tracker.fleet import FleetHost, WatchedFile, parse_serials
from tests.fixtures import FleetPKI, PeerSocket, fleet_environ, wait_for
from tests.tracker.helpers import announce_qs, layer

B1 = fleet_environ("bridge-1", serial="B1", dns=("bridge-1.test",))
B2 = fleet_environ("bridge-2", serial="B2", dns=("bridge-2.test",), ips=("127.0.0.2",))
B3 = fleet_environ("bridge-3", serial="B3")


def _hash_query(info_hash: bytes) -> str:
    """Quoted by hand: form encoding would send a space as "+", which BitTorrent does not decode."""
    return "info_hash=" + quote_from_bytes(info_hash, safe="")


def _ssl_torrent(ca_pem: bytes | None):
    _, t = layer()
    return build_metainfo(t.digest, t.size, t.pieces, ssl_cert=ca_pem)


# --------------------------------------------------------------------------- in process

def test_a_lease_belongs_to_the_certificate_not_to_the_host_it_claims(secure_app):
    c = secure_app.test_client()
    _, t = layer()
    lu = f"/leases/{t.digest}"
    r = c.post(lu, json={"host": "bridge-2", "url": "https://bridge-1.test:5001"}, environ_base=B1)
    assert r.status_code == 201 and r.json["role"] == "holder"
    r = c.post(lu, json={"url": "https://127.0.0.2:5002"}, environ_base=B2)   # no host: the CN is enough
    assert r.json == {"role": "relay", "source": {"host": "bridge-1", "url": "https://bridge-1.test:5001"}}
    # bridge-2 naming bridge-1 renews and drops only its own part
    assert c.put(lu, json={"host": "bridge-1", "ttl": 30}, environ_base=B2).status_code == 409
    assert c.delete(f"{lu}?host=bridge-1", environ_base=B2).json == {"released": True}   # left the tree
    assert c.put(lu, json={"ttl": 30}, environ_base=B1).status_code == 200   # bridge-1 still holds it
    r = c.post(lu, json={"url": "https://bridge-2.test:5002"}, environ_base=B2)
    assert r.json["source"]["host"] == "bridge-1"


@pytest.mark.parametrize("url", ["https://bridge-1.test:5001", "https://BRIDGE-1.test:5001/relay",
                                 "https://bridge-1:5001", "https://127.0.0.1:5001", "https://[::ffff:127.0.0.1]:1"])
def test_a_relay_url_on_a_name_of_the_callers_certificate_is_taken(secure_app, url):
    _, t = layer()
    # from an address that is not in the certificate (a NAT, say): the certificate decides
    r = secure_app.test_client().post(f"/leases/{t.digest}", json={"url": url},
                                      environ_base={**B1, "REMOTE_ADDR": "10.9.9.9"})
    assert r.status_code == 201, r.json


@pytest.mark.parametrize("url, why", [
    ("http://bridge-1.test:5001", "https"), ("https://bridge-2.test:5001", "certificate"),
    ("https://127.0.0.2:5001", "certificate"), ("https://*:5001", "certificate"),
    ("https://x.bridge-1.test:5001", "certificate"), ("https://169.254.169.254/", "certificate")])
def test_a_relay_url_elsewhere_is_refused_and_not_stored(secure_app, url, why):
    c = secure_app.test_client()
    _, t = layer()
    r = c.post(f"/leases/{t.digest}", json={"url": url}, environ_base=B1)
    assert r.status_code == 400 and why in r.json["error"], r.json
    assert c.post(f"/leases/{t.digest}", json={"url": "https://bridge-2.test:1"}, environ_base=B2).status_code == 201


def test_one_host_cannot_quarantine_alone(secure_app, publish_auth):
    """Reports count distinct certificates: one host's many reports (and any publish token) are one."""
    c = secure_app.test_client()
    t = _ssl_torrent(secure_app.pki.ca_pem)
    url = f"/metainfo/{t.digest}"
    assert c.put(url, data=t.metainfo, environ_base=B1).status_code == 201
    rep = {"info_hash": t.info_hash.hex, "reason": "piece 0 hash mismatch"}
    for claimed in ("bridge-1", "bridge-3", "x", "y"):
        r = c.post(url + "/reports", json={**rep, "host": claimed}, headers=publish_auth, environ_base=B2)
        assert r.json == {"quarantined": False}
    assert c.get(url, environ_base=B1).data == t.metainfo
    assert c.post(url + "/reports", json=rep, environ_base=B3).json == {"quarantined": True}   # 2 hosts
    assert c.get(url, environ_base=B1).status_code == 404


def test_another_host_cannot_remove_this_hosts_peer(secure_app):
    """Two fleet hosts behind one address: the same peer_id and port from another certificate is
    another peer, so its ``stopped`` leaves this host's entry alone."""
    c = secure_app.test_client()
    ih, pid = hashlib.sha1(b"fleet").digest(), b"-LS0001-seederseeder"

    def scrape():
        body = c.get(f"/scrape?{_hash_query(ih)}", environ_base=B1).data
        return bencodepy.decode(body)[b"files"][ih]
    c.get("/announce?" + announce_qs(ih, pid, 7001, left=0), environ_base=B1)
    c.get("/announce?" + announce_qs(ih, pid, 7001, left=0, event="stopped"), environ_base=B2)
    assert scrape()[b"complete"] == 1
    c.get("/announce?" + announce_qs(ih, pid, 7001, left=0, event="stopped"), environ_base=B1)
    assert scrape()[b"complete"] == 0


def test_torrents_carry_exactly_the_fleet_ca(secure_app, tmp_path):
    c = secure_app.test_client()
    put = lambda t: c.put(f"/metainfo/{t.digest}", data=t.metainfo, environ_base=B1)   # noqa: E731
    r = put(_ssl_torrent(None))
    assert r.status_code == 400 and "carry the fleet CA" in r.json["error"]
    r = put(_ssl_torrent(FleetPKI(tmp_path / "other").ca_pem))
    assert r.status_code == 400 and "not this fleet's CA" in r.json["error"]
    r = put(_ssl_torrent(secure_app.pki.ca_pem.rstrip() + b"\n-----BEGIN CERTIFICATE-----\n"))
    assert r.status_code == 400   # a CA and more is not the CA
    # Only the canonical form every bridge writes (layertorrent.root_cert): one info-hash per blob.
    assert put(_ssl_torrent(secure_app.pki.ca_pem.rstrip() + b"\r\n\n")).status_code == 400
    assert put(_ssl_torrent(root_cert(secure_app.pki.ca_pem))).status_code == 201


def _transition(app, on: bool = True) -> None:
    """Turn ``--accept-open-torrents`` on or off (a restart with the option, without one's state)."""
    t = app.extensions["layerswarm"]
    t.config = dataclasses.replace(t.config, server=dataclasses.replace(t.config.server, accept_open_torrents=on))


def test_in_transition_a_digest_has_an_open_and_an_ssl_torrent_each_served_to_its_kind(secure_app):
    """A fleet moving to secure mode: open bridges and secure bridges publish and pull side by side."""
    _transition(secure_app)
    c = secure_app.test_client()
    _, plain = layer()
    ssl_t = build_metainfo(plain.digest, plain.size, plain.pieces, plain.trackers, root_cert(secure_app.pki.ca_pem))
    url = f"/metainfo/{plain.digest}"
    assert c.put(url, data=plain.metainfo, environ_base=B1).status_code == 201
    assert c.put(url, data=ssl_t.metainfo, environ_base=B2).status_code == 201
    assert c.put(url, data=plain.metainfo, environ_base=B3).status_code == 200   # already there
    for query, want in (("?format=1", plain), ("?format=2", ssl_t), ("", ssl_t)):   # default: the tracker's mode
        r = c.get(url + query, environ_base=B1)
        assert r.status_code == 200 and r.data == want.metainfo and r.headers["ETag"] == f'"{want.info_hash.hex}"'
    assert c.get(url + "?format=3", environ_base=B1).status_code == 400
    listed = {(row["digest"], row["info_hash"]) for row in c.get("/swarms", environ_base=B1).json}
    assert {(str(plain.digest), plain.info_hash.hex), (str(plain.digest), ssl_t.info_hash.hex)} <= listed
    # a lease for a digest published in the caller's format only
    _, other = layer()
    c.put(f"/metainfo/{other.digest}", data=other.metainfo, environ_base=B1)
    lease = lambda q: c.post(f"/leases/{other.digest}{q}", json={"url": "https://bridge-1.test:1"},   # noqa: E731
                             environ_base=B1).json["role"]
    assert (lease("?format=1"), lease("?format=2")) == ("published", "holder")
    # reports quarantine the torrent with their info-hash (2 hosts), the other kind stays served
    rep = {"info_hash": plain.info_hash.hex, "reason": "piece 0 hash mismatch"}
    assert c.post(url + "/reports", json=rep, environ_base=B1).json == {"quarantined": False}
    assert c.post(url + "/reports", json=rep, environ_base=B2).json == {"quarantined": True}
    assert c.get(url + "?format=1", environ_base=B1).status_code == 404
    assert c.get(url + "?format=2", environ_base=B1).data == ssl_t.metainfo
    assert c.put(url, data=plain.metainfo, environ_base=B1).status_code == 409   # stays quarantined


def test_after_the_transition_open_torrents_are_refused_and_the_old_ones_dropped(secure_app):
    c = secure_app.test_client()
    _transition(secure_app)
    _, plain = layer()
    url = f"/metainfo/{plain.digest}"
    assert c.put(url, data=plain.metainfo, environ_base=B1).status_code == 201
    _transition(secure_app, False)
    _, later = layer()
    r = c.put(f"/metainfo/{later.digest}", data=later.metainfo, environ_base=B1)
    assert r.status_code == 400 and "--accept-open-torrents" in r.json["error"]
    assert c.get(url + "?format=1", environ_base=B1).status_code == 404
    assert all(row["digest"] != str(plain.digest) for row in c.get("/swarms", environ_base=B1).json)
    store = secure_app.extensions["layerswarm"].store
    assert store.get_metainfo(plain.digest, "1") is None   # dropped when listed, not just hidden


def test_after_a_ca_rotation_the_old_cas_torrents_are_dropped_and_refused(secure_app, tmp_path):
    c = secure_app.test_client()
    old = _ssl_torrent(root_cert(secure_app.pki.ca_pem))
    url = f"/metainfo/{old.digest}"
    assert c.put(url, data=old.metainfo, environ_base=B1).status_code == 201
    fleet = secure_app.extensions["layerswarm"].fleet
    fleet.ca.check_every = 0
    new_ca = FleetPKI(tmp_path / "rotated").ca_pem
    secure_app.pki.ca.write_bytes(new_ca)
    assert c.get(url, environ_base=B1).status_code == 404
    r = c.put(url, data=old.metainfo, environ_base=B1)
    assert r.status_code == 400 and "not this fleet's CA" in r.json["error"]
    rebuilt = build_metainfo(old.digest, old.size, old.pieces, old.trackers, root_cert(new_ca))
    assert c.put(url, data=rebuilt.metainfo, environ_base=B1).status_code == 201
    assert c.get(url, environ_base=B1).data == rebuilt.metainfo
    c.get("/swarms", environ_base=B1)
    store = secure_app.extensions["layerswarm"].store
    assert [(d, ih) for d, _, ih, _ in store.list_metainfo() if d == old.digest] == [(old.digest, rebuilt.info_hash)]


def test_an_open_tracker_serves_no_ssl_torrents(tracker_app, publish_auth):
    c = tracker_app.test_client()
    _, t = layer()
    assert c.put(f"/metainfo/{t.digest}", data=t.metainfo, headers=publish_auth).status_code == 201
    assert c.get(f"/metainfo/{t.digest}?format=1").data == t.metainfo
    assert c.get(f"/metainfo/{t.digest}?format=2").status_code == 404


def test_a_certificate_names_its_hosts_literally():
    host = FleetHost.from_peercert(PeerSocket("h1", dns=("h1.example", "*.example"),
                                              ips=("10.0.0.1", "0:0:0:0:0:0:0:1")).getpeercert())
    assert host.name == "h1" and host.serial == "1A2B"
    assert all(host.owns(h) for h in ("h1", "H1.example", "h1.example.", "10.0.0.1", "::1", "::ffff:10.0.0.1"))
    assert not any(host.owns(h) for h in ("*", "*.example", "x.example", "10.0.0.2", "h2"))
    assert FleetHost.from_peercert({"subject": ()}) is None   # no CN: no host


def test_deny_list_format():
    text = b"# removed hosts\n0x1a2b\n  DE:AD:BE:EF   # old laptop\n00ff\nnot-hex\n\n"
    assert parse_serials(text) == {"1A2B", "DEADBEEF", "FF"}


def test_a_watched_file_is_re_read_when_it_changes_and_kept_when_it_vanishes(tmp_path):
    p = tmp_path / "deny"
    p.write_text("1\n")
    w = WatchedFile(str(p), "deny list", check_every=0)
    assert w.current() == b"1\n"
    p.write_text("1\n2\n")
    assert w.current() == b"1\n2\n"
    p.unlink()
    assert w.current() == b"1\n2\n"
    with pytest.raises(UserError, match="deny list"):
        WatchedFile(str(tmp_path / "missing"), "deny list")


def test_an_open_https_tracker_context_asks_for_no_certificate(tmp_path):
    fleet = FleetPKI(tmp_path)
    host = fleet.host("tracker")
    ctx = pki.FleetTLS(None, str(host.cert), str(host.key)).server_context(require=False)
    assert ctx.verify_mode == ssl.CERT_NONE
    ctx = pki.FleetTLS(str(fleet.ca), str(host.cert), str(host.key)).server_context(require=False)
    assert ctx.verify_mode == ssl.CERT_OPTIONAL


def test_unreadable_or_mismatched_files_are_refused_before_serving(tmp_path):
    from layerswarm.tracker import config as tconfig
    from layerswarm.tracker.server import serve
    fleet = FleetPKI(tmp_path)
    host, other = fleet.host("tracker"), fleet.host("other")
    files = {"tls_cert": str(host.cert), "tls_key": str(host.key), "fleet_ca": str(fleet.ca)}
    for wrong, match in (({"deny_serials": str(tmp_path / "missing")}, "deny list"),
                         ({"tls_key": str(other.key)}, "mismatch"), ({"fleet_ca": str(tmp_path / "no-ca")}, "CA")):
        with pytest.raises(UserError, match=match):
            serve(tconfig.load(environ={}, **{**files, **wrong}))


# --------------------------------------------------------------------------- against a running tracker

def _as(pki_files, host):
    return {"verify": str(pki_files.ca), "cert": host.pair, "timeout": 10}


@pytest.mark.slow
def test_leases_and_relay_urls_bound_to_the_certificate_against_the_running_tracker(secure_tracker, fleet_pki):
    b1, b2 = _as(fleet_pki, fleet_pki.bridge1), _as(fleet_pki, fleet_pki.bridge2)
    _, t = layer()
    lu = f"{secure_tracker.url}/leases/{t.digest}"
    r = requests.post(lu, json={"host": "bridge-2", "url": "https://bridge-1.test:5001"}, **b1)
    assert r.status_code == 201 and r.json()["role"] == "holder"
    r = requests.post(lu, json={"host": "bridge-2", "url": "https://bridge-1.test:5002"}, **b2)
    assert r.status_code == 400 and "certificate" in r.json()["error"]
    r = requests.post(lu, json={"url": "https://127.0.0.2:5002"}, **b2)
    assert r.json() == {"role": "relay", "source": {"host": "bridge-1", "url": "https://bridge-1.test:5001"}}
    assert requests.put(lu, json={"host": "bridge-1"}, **b2).status_code == 409


@pytest.mark.slow
def test_ssl_cert_torrents_and_announces_against_the_running_tracker(secure_tracker, fleet_pki, tmp_path):
    b1, b2 = _as(fleet_pki, fleet_pki.bridge1), _as(fleet_pki, fleet_pki.bridge2)
    for ca in (None, FleetPKI(tmp_path).ca_pem):
        t = _ssl_torrent(ca)
        assert requests.put(f"{secure_tracker.url}/metainfo/{t.digest}", data=t.metainfo, **b1).status_code == 400
    t = _ssl_torrent(fleet_pki.ca_pem)
    assert requests.put(f"{secure_tracker.url}/metainfo/{t.digest}", data=t.metainfo, **b1).status_code == 201
    assert requests.get(f"{secure_tracker.url}/metainfo/{t.digest}", **b2).content == t.metainfo
    # both bridges call from 127.0.0.1: bridge-2 replaying bridge-1's peer_id stops nothing of bridge-1's
    pid, ann = b"-LS0001-" + os.urandom(6).hex().encode(), f"{secure_tracker.url}/announce?"
    requests.get(ann + announce_qs(t.info_hash.raw, pid, 7001, left=0), **b1)
    requests.get(ann + announce_qs(t.info_hash.raw, pid, 7001, left=0, event="stopped"), **b2)
    scrape = requests.get(f"{secure_tracker.url}/scrape?{_hash_query(t.info_hash.raw)}", **b2).content
    assert bencodepy.decode(scrape)[b"files"][t.info_hash.raw][b"complete"] == 1


def _served_serial(url: str, ca) -> str:
    host, port = url.split("//")[1].split(":")
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            return pki.serial(tls.getpeercert())


@pytest.mark.slow
def test_a_rotated_tracker_certificate_is_served_without_a_restart(secure_tracker, fleet_pki, tmp_path):
    old = _served_serial(secure_tracker.url, fleet_pki.ca)
    assert old == fleet_pki.tracker.serial
    new = fleet_pki.host("tracker-next", dns=("tracker",))
    # as cert-manager does: new files renamed over the old ones
    for src, dst in ((new.key, fleet_pki.tracker.key), (new.cert, fleet_pki.tracker.cert)):
        os.replace(src, dst)
    wait_for(lambda: _served_serial(secure_tracker.url, fleet_pki.ca) == new.serial, timeout=30,
             what="the rotated certificate served")
    assert requests.get(secure_tracker.url + "/swarms", **_as(fleet_pki, fleet_pki.bridge1)).status_code == 200
