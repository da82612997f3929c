"""Secure fleet mode's SSL torrents between real libtorrent sessions on loopback.

Two peers with certificates from one fleet CA trade a layer over TLS; outsiders
(no certificate, another CA's, a plain BitTorrent client) get nothing.  The
in-process tracker app is in open mode, which refuses SSL torrents on publish:
the seeder seeds without publishing and the others are handed the torrent (the
tracker still matches peers by info-hash on announce, over plain HTTP or, served
with a fleet server context, over mutual TLS).
"""
from __future__ import annotations

import subprocess
import time

import bencodepy
import pytest
import requests

from layerswarm.bridge.format import layertorrent as tf
from layerswarm.bridge.format import pki
from layerswarm.bridge.format.digest import Digest
from layerswarm.bridge.format.errors import SwarmError
from layerswarm.bridge.node.torrent import alerts as ev
from tests.fixtures import FleetPKI, HostCert, ThreadServer, blob_bytes, free_port, wait_for
from tests.tracker.helpers import announce_qs

KEEP_CONNECTIONS = {"lt_settings": {"close_redundant_connections": False}}   # seeds stay connected: inspectable


@pytest.fixture
def fleet(tmp_path):
    return FleetPKI(tmp_path / "fleet")


def host_tls(fleet: FleetPKI, host: HostCert) -> pki.FleetTLS:
    """A host's fleet TLS material, its files checked for rotation every 0.2 s."""
    return pki.FleetTLS(str(fleet.ca), str(host.cert), str(host.key), check_every=0.2)


def secure_peer(make_peer, fleet: FleetPKI, name: str, tracker_url: str, **kw):
    return make_peer(name, tracker_url, tls=host_tls(fleet, fleet.host(name)), **kw)


def seed_unpublished(peer, data: bytes) -> tf.LayerTorrent:
    """Store and seed ``data`` on ``peer`` in its mode, without publishing (the open tracker refuses SSL)."""
    d = Digest.of_bytes(data)
    w = peer.store.writer(d, len(data))
    w.write(data)
    torrent = tf.for_fleet(w.finish(peer.tracker.announce_urls), peer.ssl_cert)
    w.commit(torrent.metainfo)
    peer.seed_torrent(torrent, "own")
    return torrent


def announce(tracker_url: str, torrent: tf.LayerTorrent, port: int, peer_id: bytes) -> set:
    """Announce ``port`` for ``torrent`` at the tracker; the ports of the peers it lists."""
    qs = announce_qs(torrent.info_hash.raw, peer_id.ljust(20, b"-"), port, compact=1)
    peers = bencodepy.decode(requests.get(f"{tracker_url}/announce?{qs}", timeout=10).content)[b"peers"]
    return {int.from_bytes(peers[i + 4:i + 6], "big") for i in range(0, len(peers), 6)}


def test_two_fleet_hosts_trade_a_layer_over_tls(local_tracker, make_peer, fleet):
    data = blob_bytes(6_000_000, b"ssl")
    seeder = secure_peer(make_peer, fleet, "seeder", local_tracker.url, session=KEEP_CONNECTIONS)
    torrent = seed_unpublished(seeder, data)
    assert torrent.format == 2 and torrent.ssl_cert == tf.root_cert(fleet.ca_pem)
    assert seeder.status()["secure"] and seeder.status()["ssl_listen_port"] not in (None, 0, seeder.session.listen_port)
    leech = secure_peer(make_peer, fleet, "leech", local_tracker.url, session=KEEP_CONNECTIONS)
    assert b"".join(leech.stream(torrent.digest, metainfo=torrent)) == data
    # Both ends see one TLS connection carrying the payload.
    name = str(torrent.digest)
    wait_for(lambda: leech.session.get(name).peers(), what="the connection listed")
    got = leech.session.get(name).peers()
    assert got and all(p["ssl"] for p in got) and sum(p["down"] for p in got) >= len(data)
    sent = seeder.session.get(name).peers()
    assert sent and all(p["ssl"] and p["incoming"] for p in sent)
    assert sent[0]["up"] >= len(data)
    # libtorrent announces an SSL torrent with the SSL port: that is where fleet peers connect.
    listed = announce(local_tracker.url, torrent, 9, b"-test-listing")
    assert seeder.session.ssl_listen_port in listed and seeder.session.listen_port not in listed


def test_announces_go_through_the_torrents_tls_to_a_fleet_only_tracker(make_peer, fleet):
    """The tracker asks every caller for a fleet certificate: libtorrent announces each SSL torrent
    with the host's certificate from the first announce on, and checks the tracker against the CA."""
    from layerswarm.tracker.app import create_app
    tls = host_tls(fleet, fleet.host("tracker"))
    tracker = ThreadServer(create_app({"interval": 5}), ssl_context=tls.server_context(require=True))
    try:
        with pytest.raises(requests.exceptions.SSLError):   # no certificate: no answer at all
            requests.get(f"{tracker.url}/healthz", verify=tls.ca_file, timeout=10)
        data = blob_bytes(2_000_000, b"mtls")
        seeder = secure_peer(make_peer, fleet, "seeder", tracker.url)
        torrent = seed_unpublished(seeder, data)
        leech = secure_peer(make_peer, fleet, "leech", tracker.url)
        replies = []
        leech.session.dispatcher.subscribe(str(torrent.digest), lambda e: e.kind == ev.TRACKER_REPLY
                                           and replies.append(e.data["num_peers"]))
        assert b"".join(leech.stream(torrent.digest, metainfo=torrent)) == data
        assert replies and max(replies) >= 1   # the seeder came from the tracker's answer
    finally:
        tracker.stop()


def test_torrents_of_another_mode_or_ca_are_refused(local_tracker, make_peer, fleet, tmp_path):
    data = blob_bytes(400_000, b"refuse")
    d = Digest.of_bytes(data)
    h = tf.PieceHasher(len(data))
    h.update(data)
    open_t = tf.build_metainfo(d, len(data), h.pieces(), [local_tracker.url + "/announce"])
    ours = tf.for_fleet(open_t, tf.root_cert(fleet.ca_pem))
    theirs = tf.for_fleet(open_t, tf.root_cert(pki.create_ca()[0]))
    secure = secure_peer(make_peer, fleet, "secure", local_tracker.url)
    plain = make_peer("plain", local_tracker.url)
    for peer, torrent, why in ((secure, open_t, "open-mode torrent"), (secure, theirs, "another CA"),
                               (plain, ours, "open-mode fleet")):
        with pytest.raises(SwarmError, match=why):
            peer.stream(d, metainfo=torrent)
        with pytest.raises(SwarmError, match=why):
            peer.seed_torrent(torrent, "published")
        assert peer.session.get(str(d)) is None and not peer.seeding()
    # Below the peer, the session refuses an SSL torrent it has no certificate for.
    with pytest.raises(SwarmError, match="needs secure fleet mode"):
        plain.session.add(ours.metainfo, tmp_path)


def test_restart_and_mode_switch_reseed_the_store(local_tracker, make_peer, fleet):
    """After a restart the SSL torrent gets the certificate again; a store reopened in the other
    mode is seeded under the other format's info-hash, rebuilt from the kept piece hashes."""
    data = blob_bytes(3_000_000, b"again")
    tls = host_tls(fleet, fleet.host("host"))
    first = make_peer("host", local_tracker.url, tls=tls)
    torrent = seed_unpublished(first, data)
    first.close()
    again = make_peer("host", local_tracker.url, tls=tls)
    assert [(i.info_hash, i.source) for i in again.seed_stored()] == [(torrent.info_hash.hex, "record")]
    leech = secure_peer(make_peer, fleet, "leech", local_tracker.url)
    assert b"".join(leech.stream(torrent.digest, metainfo=torrent)) == data
    again.close()
    opened = make_peer("host", local_tracker.url)   # the same store, now in open mode
    [info] = opened.seed_stored()
    assert info.source == "own" and opened.store.rehashed == []
    assert info.info_hash == tf.for_fleet(torrent, None).info_hash.hex != torrent.info_hash.hex
    assert b"".join(make_peer("open-leech", local_tracker.url).stream(torrent.digest)) == data


def _outsider(torrent: tf.LayerTorrent, save, pair=None):
    """A raw libtorrent session with the full torrent; ``pair``: a certificate and key it shows."""
    import libtorrent as lt
    ses = lt.session({"listen_interfaces": "127.0.0.1:0,127.0.0.1:0s", "enable_dht": False, "enable_lsd": False,
                      "enable_upnp": False, "enable_natpmp": False, "webtorrent_stun_server": "",
                      "allow_multiple_connections_per_ip": True, "stop_tracker_timeout": 1})
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(lt.bdecode(torrent.metainfo))
    atp.save_path = str(save)
    atp.flags = (atp.flags | lt.torrent_flags.paused) & ~lt.torrent_flags.auto_managed
    h = ses.add_torrent(atp)
    if pair:
        h.set_ssl_certificate_buffer(pair[0].decode(), pair[1].decode(), "")
    h.resume()
    return ses, h


@pytest.mark.slow   # waits to show that nothing arrives
def test_outsiders_get_no_byte(local_tracker, make_peer, fleet, tmp_path):
    """No certificate, another CA's certificate, plain aria2c: each tries the seeder's SSL and plain ports."""
    data = blob_bytes(4_000_000, b"outsiders")
    seeder = secure_peer(make_peer, fleet, "seeder", local_tracker.url)
    torrent = seed_unpublished(seeder, data)
    ports = (seeder.session.ssl_listen_port, seeder.session.listen_port)
    # The tracker lists the SSL port; list the plain one too, so every outsider is sent to both.
    announce(local_tracker.url, torrent, seeder.session.listen_port, b"-plain-port")
    outsiders = [_outsider(torrent, tmp_path / "bare"),
                 _outsider(torrent, tmp_path / "other-ca", pki.issue(*pki.create_ca("outsider CA"), "intruder"))]
    tfile = tmp_path / "layer.torrent"
    tfile.write_bytes(torrent.metainfo)
    aria = subprocess.Popen(["aria2c", "--seed-time=0", f"--dir={tmp_path / 'aria'}", "--enable-dht=false",
                             "--enable-dht6=false", "--bt-enable-lpd=false", "--enable-peer-exchange=false",
                             "--console-log-level=warn", "--summary-interval=0", f"--listen-port={free_port()}",
                             "--bt-stop-timeout=8", "--file-allocation=none", str(tfile)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            for _, h in outsiders:
                for port in ports:
                    h.connect_peer(("127.0.0.1", port))
            time.sleep(1)
        out = aria.communicate(timeout=60)[0]
    finally:
        aria.kill()
    assert aria.returncode != 0, out
    aria_file = tmp_path / "aria" / str(torrent.digest)
    assert not aria_file.exists() or not aria_file.read_bytes().strip(b"\0")
    for _, h in outsiders:
        st = h.status()
        assert st.total_wanted_done == 0 and st.total_payload_download == 0 and not st.is_seeding
    assert seeder.session.get(str(torrent.digest)).status()["total_upload"] == 0
    # The seeder was reachable all along: a fleet host gets the layer from it.
    leech = secure_peer(make_peer, fleet, "leech", local_tracker.url)
    assert b"".join(leech.stream(torrent.digest, metainfo=torrent)) == data


@pytest.mark.slow   # waits for the rotation to be noticed
def test_a_rotated_certificate_reaches_every_torrent(local_tracker, make_peer, fleet, tmp_path):
    """A host whose certificate files held another CA's certificate serves nobody; once the files
    hold a fleet certificate the running session shows it on its torrents: no restart."""
    data = blob_bytes(3_000_000, b"rotate")
    wrong = FleetPKI(tmp_path / "wrong", "wrong CA").host("seeder")
    seeder = make_peer("seeder", local_tracker.url, tls=host_tls(fleet, wrong))
    torrent = seed_unpublished(seeder, data)
    early = secure_peer(make_peer, fleet, "early", local_tracker.url, stall_timeout=60)
    dl = early.download(torrent.digest, torrent)
    time.sleep(4)
    assert dl.torrent.status()["done"] == 0
    good = fleet.host("seeder")
    wrong.key.write_bytes(good.key.read_bytes())   # cert-manager rewrites the files in place
    wrong.cert.write_bytes(good.cert.read_bytes())
    wait_for(dl.complete.is_set, timeout=60, what="the early leech's download after the rotation")
    assert dl.verified and early.store.path_if_present(torrent.digest).read_bytes() == data
    late = secure_peer(make_peer, fleet, "late", local_tracker.url)
    assert b"".join(late.stream(torrent.digest, metainfo=torrent)) == data


@pytest.mark.slow   # a tracker process
def test_a_secure_fleet_publishes_and_trades_through_the_secure_tracker(secure_tracker, fleet_pki, make_peer,
                                                                       monkeypatch):
    """The whole path against the real tracker in secure fleet mode: the seeder publishes its SSL
    torrent over mutual TLS, the leech fetches it from there, both announce with their certificates."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", requests.certs.where())   # a public bundle must not displace the CA
    data = blob_bytes(3_000_000, b"fleet")
    seeder = make_peer("bridge-1", secure_tracker.url, tls=host_tls(fleet_pki, fleet_pki.bridge1))
    info = seeder.add_blob([data], len(data), Digest.of_bytes(data))
    published = seeder.tracker.get_metainfo(info.digest)
    assert info.source == "own" and published.format == 2 and published.info_hash.hex == info.info_hash
    leech = make_peer("bridge-2", secure_tracker.url, tls=host_tls(fleet_pki, fleet_pki.bridge2))
    assert b"".join(leech.stream(info.digest)) == data
    assert [s.source for s in leech.seeding()] == ["downloaded"]
