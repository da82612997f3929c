"""Standard BitTorrent clients and tools (processes) against our tracker process and metainfo registry."""
from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest
import requests

from layerswarm.bridge.devstack.daemons import Daemon
from layerswarm.bridge.format.layertorrent import parse_metainfo, piece_length, torrent_for_file
from tests.fixtures import free_port

pytestmark = pytest.mark.slow


def make_blob(dirpath: Path, size: int) -> Path:
    data = os.urandom(size)
    path = dirpath / f"sha256:{hashlib.sha256(data).hexdigest()}"
    path.write_bytes(data)
    return path


def lt_session(port: int):
    import libtorrent as lt
    return lt.session({
        "listen_interfaces": f"127.0.0.1:{port}", "enable_dht": False, "enable_lsd": False,
        "enable_upnp": False, "enable_natpmp": False, "webtorrent_stun_server": "",
        "allow_multiple_connections_per_ip": True, "stop_tracker_timeout": 1,
        "alert_mask": 0,
    })


def test_libtorrent_seeds_aria2c_downloads_via_our_tracker(tracker, tmp_path):
    import libtorrent as lt
    url = tracker.url
    seed_dir, out_dir = tmp_path / "seed", tmp_path / "out"
    seed_dir.mkdir()
    out_dir.mkdir()
    blob = make_blob(seed_dir, 3 * 1024 * 1024 + 123)
    built = torrent_for_file(blob, trackers=[f"{url}/announce"])
    assert requests.put(f"{url}/metainfo/{built.digest}", data=built.metainfo, timeout=10).status_code == 201
    fetched = requests.get(f"{url}/metainfo/{built.digest}", timeout=10).content
    torrent_file = tmp_path / "layer.torrent"
    torrent_file.write_bytes(fetched)

    ses = lt_session(free_port())
    aria = None
    try:
        atp = lt.add_torrent_params()
        atp.ti = lt.torrent_info(lt.bdecode(fetched))
        atp.save_path = str(seed_dir)
        h = ses.add_torrent(atp)
        deadline = time.monotonic() + 60
        while not h.status().is_seeding:  # hash check of our own bytes
            assert time.monotonic() < deadline, "libtorrent never started seeding"
            time.sleep(0.2)
        # the seeder reaches the tracker (its only way to be found)
        ih = built.info_hash.hex

        def seeded():
            return any(r["info_hash"] == ih and r["seeders"] >= 1
                       for r in requests.get(f"{url}/swarms", timeout=5).json())
        while not seeded():
            assert time.monotonic() < deadline, "libtorrent never announced"
            h.force_reannounce()
            time.sleep(0.5)

        aria = Daemon(["aria2c", "--seed-time=0", "--enable-dht=false", "--enable-dht6=false",
                     "--bt-enable-lpd=false", "--enable-peer-exchange=false", "--interface=127.0.0.1",
                     f"--listen-port={free_port()}", "--bt-stop-timeout=90", "--summary-interval=0",
                     "--console-log-level=warn", "--allow-overwrite=true", f"--dir={out_dir}", torrent_file],
                    tmp_path / "aria2c.log", name="aria2c")
        assert aria.popen.wait(120) == 0, aria.log_text()
        got = out_dir / blob.name
        assert hashlib.sha256(got.read_bytes()).hexdigest() == built.digest.hex
        # aria2c told the tracker it completed
        rows = {r["info_hash"]: r for r in requests.get(f"{url}/swarms", timeout=5).json()}
        assert rows[ih]["completed"] >= 1 and rows[ih]["digest"] == str(built.digest)
    finally:
        if aria:
            aria.stop()
        del ses


def test_transmission_show_reads_registry_torrent(tracker, tmp_path):
    url = tracker.url
    blob = make_blob(tmp_path, 700_000)
    built = torrent_for_file(blob, trackers=[f"{url}/announce"])
    requests.put(f"{url}/metainfo/{built.digest}", data=built.metainfo, timeout=10)
    f = tmp_path / "x.torrent"
    f.write_bytes(requests.get(f"{url}/metainfo/{built.digest}", timeout=10).content)
    out = subprocess.run(["transmission-show", f], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert built.info_hash.hex in out.stdout.lower()
    assert str(built.digest) in out.stdout and f"{url}/announce" in out.stdout
    assert "Private" in out.stdout or "private" in out.stdout


def test_mktorrent_torrent_is_accepted(tracker, tmp_path):
    url = tracker.url
    blob = make_blob(tmp_path, 1_500_000)
    log2 = piece_length(blob.stat().st_size).bit_length() - 1
    out = tmp_path / "mk.torrent"
    r = subprocess.run(["mktorrent", "-p", "-d", "-l", str(log2), "-a", f"{url}/announce", "-o", out, blob],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    mk = parse_metainfo(out.read_bytes())
    ours = torrent_for_file(blob)
    assert mk.info_hash == ours.info_hash
    put = requests.put(f"{url}/metainfo/{mk.digest}", data=out.read_bytes(), timeout=10)
    assert put.status_code == 201, put.text
    assert put.json()["info_hash"] == ours.info_hash.hex


def test_libtorrent_announces_an_ssl_torrent_to_a_secure_tracker_with_its_certificate(secure_tracker, fleet_pki,
                                                                                      tmp_path):
    """libtorrent announces an SSL torrent through the torrent's own TLS context: its certificate
    must reach the tracker's views for the announce to count (else a bencoded failure)."""
    import libtorrent as lt
    as_bridge = {"verify": str(fleet_pki.ca), "cert": fleet_pki.bridge1.pair, "timeout": 10}
    blob = make_blob(tmp_path, 1_000_000)
    built = torrent_for_file(blob, trackers=[f"{secure_tracker.url}/announce"], ssl_cert=fleet_pki.ca_pem)
    r = requests.put(f"{secure_tracker.url}/metainfo/{built.digest}", data=built.metainfo, **as_bridge)
    assert r.status_code == 201, r.text
    ses = lt.session({
        "listen_interfaces": f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}s", "enable_dht": False,
        "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False, "alert_mask": 0})
    try:
        atp = lt.add_torrent_params()
        atp.ti = lt.torrent_info(lt.bdecode(built.metainfo))
        atp.save_path = str(tmp_path)
        atp.flags = (atp.flags | lt.torrent_flags.paused) & ~lt.torrent_flags.auto_managed
        h = ses.add_torrent(atp)   # paused: its first announce must carry the certificate
        h.set_ssl_certificate(str(fleet_pki.bridge1.cert), str(fleet_pki.bridge1.key), "")
        h.resume()
        deadline = time.monotonic() + 60

        def seeding() -> bool:
            return any(row["info_hash"] == built.info_hash.hex and row["seeders"] == 1
                       for row in requests.get(f"{secure_tracker.url}/swarms", **as_bridge).json())
        while not seeding():
            assert time.monotonic() < deadline, "libtorrent's announce never counted"
            time.sleep(0.5)
    finally:
        del ses
