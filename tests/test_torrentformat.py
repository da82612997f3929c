"""The layer torrent format: deterministic, validated, agrees with libtorrent and mktorrent."""
import subprocess

import bencodepy
import pytest

from layerswarm.bridge.format import layertorrent as tf
from layerswarm.bridge.format.digest import Digest
from layerswarm.bridge.format import pki
from layerswarm.bridge.format.errors import InvalidMetainfo, UserError


def _blob(tmp_path, size, seed=b"s"):
    import hashlib
    data = hashlib.shake_256(seed).digest(size)
    d = Digest.of_bytes(data)
    p = tmp_path / str(d)
    p.write_bytes(data)
    return p, d, data


def test_piece_length_rule():
    assert tf.piece_length(1) == 128 * 1024
    assert tf.piece_length(128 << 20) == 128 * 1024
    assert tf.piece_length((128 << 20) + 1) == 256 * 1024
    assert tf.piece_length(1 << 30) == 1 << 20
    assert tf.piece_length(1 << 40) == 4 << 20
    # the earlier rule (256 KiB floor) is still accepted; above 128 MiB the two agree
    assert tf.accepted_piece_lengths(12 << 20) == (128 << 10, 256 << 10)
    assert tf.accepted_piece_lengths((128 << 20) + 1) == (256 << 10,)
    assert tf.accepted_piece_lengths(1 << 30) == (1 << 20,)


def test_torrents_of_the_earlier_piece_length_rule_are_accepted_others_refused(tmp_path):
    p, d, _ = _blob(tmp_path, 700_000)
    legacy = tf.torrent_for_file(p, ["http://127.0.0.1:1/announce"], plen=tf.LEGACY_MIN_PIECE)
    assert tf.parse_metainfo(legacy.metainfo, d) == legacy
    assert legacy.piece_length == 256 << 10 and legacy.num_pieces == 3
    assert legacy.info_hash != tf.torrent_for_file(p, ["http://127.0.0.1:1/announce"]).info_hash
    # a mode switch keeps the torrent's piece length: the pieces are reused, not rehashed
    assert tf.for_fleet(legacy, tf.root_cert(pki.create_ca()[0])).piece_length == 256 << 10
    meta = bencodepy.decode(legacy.metainfo)
    meta[b"info"][b"piece length"] = 512 << 10
    meta[b"info"][b"pieces"] = meta[b"info"][b"pieces"][:40]
    with pytest.raises(InvalidMetainfo, match="131072 or 262144"):
        tf.parse_metainfo(bencodepy.encode(meta))


def test_two_builds_identical_and_streaming_hasher_agrees(tmp_path):
    p, d, data = _blob(tmp_path, 700_000)
    a = tf.torrent_for_file(p, ["http://127.0.0.1:1/announce"])
    b = tf.torrent_for_file(p, ["http://127.0.0.1:2/announce", "http://127.0.0.1:3/announce"])
    assert a.info_hash == b.info_hash and a.digest == d
    h = tf.PieceHasher(len(data))
    for i in range(0, len(data), 999):
        h.update(data[i:i + 999])
    assert h.digest() == d and h.pieces() == a.pieces
    assert a.info_hash.hex != d.hex[:40]


def test_several_trackers_are_one_announce_list_tier_outside_the_info_hash(tmp_path, tracker_app, publish_auth):
    p, d, _ = _blob(tmp_path, 700_000)
    urls = ["http://127.0.0.1:2/announce", "http://127.0.0.1:3/announce", "http://127.0.0.1:4/announce"]
    one, several = tf.torrent_for_file(p, urls[:1]), tf.torrent_for_file(p, urls)
    meta = bencodepy.decode(several.metainfo)
    assert meta[b"announce"] == urls[0].encode() and b"announce-list" not in bencodepy.decode(one.metainfo)
    assert meta[b"announce-list"] == [[u.encode() for u in urls]]
    assert several.info_hash == one.info_hash and several.trackers == tuple(urls)
    lt = pytest.importorskip("libtorrent")
    atp = lt.load_torrent_buffer(several.metainfo)
    assert (atp.trackers, atp.tracker_tiers) == (urls, [0] * len(urls))
    # the tracker's registry takes it as it is, and the torrent of one tracker is the same one
    client = tracker_app.test_client()
    put = client.put(f"/metainfo/{d}", data=several.metainfo, headers=publish_auth)
    assert put.status_code == 201 and put.json["info_hash"] == several.info_hash.hex
    assert client.get(f"/metainfo/{d}").data == several.metainfo
    assert client.put(f"/metainfo/{d}", data=one.metainfo, headers=publish_auth).status_code == 200


def _libtorrent_made(tmp_path, p, root_cert: bytes | None = None):
    """The torrent libtorrent's own create_torrent makes of ``p`` with our settings (and root cert)."""
    lt = pytest.importorskip("libtorrent")
    fs = lt.file_storage()
    lt.add_files(fs, str(p), flags=0)
    ct = lt.create_torrent(fs, tf.piece_length(p.stat().st_size),
                           flags=lt.create_torrent.v1_only | lt.create_torrent.no_attributes)
    ct.set_priv(True)
    ct.set_creator("")
    if root_cert is not None:
        ct.set_root_cert(root_cert.decode())
    lt.set_piece_hashes(ct, str(tmp_path))
    return lt.torrent_info(lt.bencode(ct.generate()))


def test_matches_libtorrent_create_torrent(tmp_path):
    p, d, _ = _blob(tmp_path, 1_300_000)
    theirs = _libtorrent_made(tmp_path, p)
    assert str(theirs.info_hash()) == tf.torrent_for_file(p).info_hash.hex


@pytest.mark.slow  # mktorrent is a process
def test_matches_mktorrent(tmp_path):
    p, d, _ = _blob(tmp_path, 600_000)
    out = tmp_path / "m.torrent"
    log2 = tf.piece_length(600_000).bit_length() - 1
    subprocess.run(["mktorrent", "-p", "-d", "-l", str(log2), "-a", "http://127.0.0.1:9/announce",
                    "-o", str(out), str(p)], check=True, capture_output=True)
    meta = bencodepy.decode(out.read_bytes())
    assert tf.InfoHash.of_info(bencodepy.encode(meta[b"info"])) == tf.torrent_for_file(p).info_hash


@pytest.mark.parametrize("mutate,msg", [
    (lambda m: m[b"info"].__setitem__(b"name", b"foo"), "layer digest"),
    (lambda m: m[b"info"].__setitem__(b"piece length", 16384), "piece length"),
    (lambda m: m[b"info"].__setitem__(b"pieces", b"x" * 19), "pieces"),
    (lambda m: m[b"info"].__setitem__(b"private", 0), "private"),
    (lambda m: m[b"info"].__setitem__(b"length", -1), "length"),
    (lambda m: m[b"info"].__setitem__(b"files", []), "single-file"),
    (lambda m: m[b"info"].__setitem__(b"mtime", 5), "unexpected keys"),
])
def test_rejects_bad_torrents(tmp_path, mutate, msg):
    p, d, _ = _blob(tmp_path, 300_000)
    meta = bencodepy.decode(tf.torrent_for_file(p).metainfo)
    mutate(meta)
    with pytest.raises(InvalidMetainfo, match=msg):
        tf.parse_metainfo(bencodepy.encode(meta))


def test_rejects_garbage_and_wrong_digest(tmp_path):
    p, d, _ = _blob(tmp_path, 300_000)
    good = tf.torrent_for_file(p).metainfo
    for bad in (b"", b"garbage", b"d4:infoi1ee", good + b"x"):
        with pytest.raises(InvalidMetainfo):
            tf.parse_metainfo(bad)
    with pytest.raises(InvalidMetainfo, match="does not match"):
        tf.parse_metainfo(good, Digest.of_bytes(b"other"))


def test_open_mode_torrents_are_byte_identical_to_format_1(tmp_path):
    """Open mode writes exactly what it wrote before secure mode existed, in the earlier piece length,
    and the current rule's bytes are fixed too (golden values: every host must build the same)."""
    import hashlib
    data = hashlib.shake_256(b"golden").digest(700_000)
    golden = {tf.LEGACY_MIN_PIECE: ("78789502f0eba8e5ece3388475fd21a0779189d07806ec7d9e96ee7dea2aa57b",
                                    "a2b3242af20ef8da5eae265485caa80961d0b4af"),
              None: ("736e0b27f9cc9cdcb334a401cd48ce3bc68c93edbedcc01267d263ce3e2cf9e3",
                     "7153a12f4db0c994850136c5b5f93b76a1f2d968")}
    for plen, (sha, info_hash) in golden.items():
        h = tf.PieceHasher(len(data), plen)
        h.update(data)
        t = tf.build_metainfo(h.digest(), len(data), h.pieces(), ["http://127.0.0.1:1/announce"], plen=plen)
        assert t.format == tf.FORMAT_VERSION == 1 and t.ssl_cert is None
        assert hashlib.sha256(t.metainfo).hexdigest() == sha
        assert t.info_hash.hex == info_hash


@pytest.fixture(scope="module")
def fleet_ca():
    return pki.create_ca()[0]


def test_secure_torrent_carries_the_fleet_ca_and_every_host_builds_it(tmp_path, fleet_ca):
    p, d, _ = _blob(tmp_path, 700_000)
    root = tf.root_cert(fleet_ca)
    assert root == fleet_ca   # the CA as written by create_ca is canonical already
    secure = tf.torrent_for_file(p, ["http://127.0.0.1:1/announce"], ssl_cert=root)
    meta = bencodepy.decode(secure.metainfo)
    assert meta[b"info"][b"ssl-cert"] == root and meta[b"layerswarm"][b"format"] == 2
    assert secure.format == tf.SECURE_FORMAT_VERSION and secure.ssl_cert == root
    # Another host's copy of the CA file: CRLF line endings, a second certificate after it.
    other_copy = fleet_ca.replace(b"\n", b"\r\n") + pki.create_ca("next CA")[0]
    again = tf.torrent_for_file(p, ["http://127.0.0.1:9/announce"], ssl_cert=tf.root_cert(other_copy))
    assert again.info_hash == secure.info_hash
    assert tf.torrent_for_file(p).info_hash != secure.info_hash
    with pytest.raises(UserError, match="no PEM certificate"):
        tf.root_cert(b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n")


def test_switching_mode_rebuilds_from_the_piece_hashes(tmp_path, fleet_ca):
    p, d, _ = _blob(tmp_path, 900_000)
    root = tf.root_cert(fleet_ca)
    open_t = tf.torrent_for_file(p, ["http://127.0.0.1:1/announce"])
    secure = tf.for_fleet(open_t, root)
    assert secure == tf.torrent_for_file(p, ["http://127.0.0.1:1/announce"], ssl_cert=root)
    assert tf.for_fleet(secure, None) == open_t and tf.for_fleet(open_t, None) is open_t
    assert tf.fleet_mismatch(secure, root) is None and tf.fleet_mismatch(open_t, None) is None
    assert "open-mode torrent" in tf.fleet_mismatch(open_t, root)
    assert "open-mode fleet" in tf.fleet_mismatch(secure, None)
    assert "another CA" in tf.fleet_mismatch(secure, tf.root_cert(pki.create_ca()[0]))


@pytest.mark.parametrize("ssl", [False, True])
def test_format_version_must_match_the_mode(tmp_path, fleet_ca, ssl):
    p, d, _ = _blob(tmp_path, 300_000)
    meta = bencodepy.decode(tf.torrent_for_file(p, ssl_cert=tf.root_cert(fleet_ca) if ssl else None).metainfo)
    meta[b"layerswarm"][b"format"] = 1 if ssl else 2
    with pytest.raises(InvalidMetainfo, match="format"):
        tf.parse_metainfo(bencodepy.encode(meta))


def test_secure_torrent_matches_libtorrent_set_root_cert(tmp_path, fleet_ca):
    p, d, _ = _blob(tmp_path, 1_300_000)
    theirs = _libtorrent_made(tmp_path, p, tf.root_cert(fleet_ca))
    ours = tf.torrent_for_file(p, ssl_cert=tf.root_cert(fleet_ca))
    assert str(theirs.info_hash()) == ours.info_hash.hex and theirs.ssl_cert() == tf.root_cert(fleet_ca).decode()
