"""The layer torrent format, written down in one place.

A layer's torrent is a pure function of the blob bytes (and, in secure mode,
the fleet CA), so any host holding the verified blob builds the identical
torrent and can seed it.  Format version 1 (open mode) and 2 (secure fleet mode):

* BitTorrent v1 only, single file; ``info`` holds exactly ``length``,
  ``name``, ``piece length``, ``pieces``, ``private`` (always 1: no DHT/PEX
  leaks of internal layers) and, in format 2 only, ``ssl-cert``: the fleet CA
  as :func:`root_cert` writes it, which libtorrent turns into a TLS-only swarm
  (peers must show a certificate from that CA).
* ``name`` is the layer digest written ``sha256:<hex>``.
* ``piece length`` follows :func:`piece_length` (a fixed rule from the size).
  Torrents built by the earlier rule (a 256 KiB floor instead of 128 KiB) are
  still accepted (:func:`accepted_piece_lengths`): a fleet that upgrades host
  by host keeps one swarm per layer, the one of the torrent published first.
* Outside ``info`` (not part of the info-hash): ``announce`` (the first
  configured tracker), with several trackers ``announce-list`` (BEP 12) of
  them all as *one tier* in the configured order, and ``layerswarm`` =
  ``{"format": 1 or 2, "digest": "sha256:..."}``.  No creation date, creator,
  file attributes or mtime anywhere.

One tier because a fleet's trackers are replicas sharing one store: BEP 12
gives a single tier to trackers that share information (a client uses any
one and moves on within the tier when it fails), while one tier per tracker
means "primary, then backups", tried in that order on every announce, so a
dead first tracker is paid for again and again.  Not shuffled here: BEP 12
leaves the shuffle to clients, and the same blob and configuration give the
same bytes.  Our own hosts ignore the torrent's list: they announce to their
configured trackers, every one of them (node/torrent/settings.py).
* Encoding is canonical bencode; non-canonical input is rejected, so the
  info-hash computed from a decoded torrent is the one peers announce.

The two formats of one blob share their piece hashes, so a host switching
mode (or fleet CA) rebuilds its torrents with :func:`for_fleet`, no rehash.

The info-hash can never equal a sha256 (it is SHA-1 of the info dict): users
address the torrent by the layer digest, the info-hash stays internal.

This module has no libtorrent import: the tracker validates with it and the
bridge hashes origin bytes with it while streaming (no second read).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

import bencodepy

from layerswarm.bridge.format.digest import Digest, InfoHash

from layerswarm.bridge.format.errors import InvalidDigest, InvalidMetainfo, UserError

FORMAT_VERSION = 1          # open mode
SECURE_FORMAT_VERSION = 2   # secure fleet mode: an SSL torrent (``ssl-cert`` in info)
# The piece-length floor: 128 KiB; the first releases used 256 KiB (LEGACY_MIN_PIECE, still accepted).
# A piece a leecher has picked is invisible to the others until it is complete, so the shorter it is,
# the fewer leechers fetch it from the seeder at once; and piece 0, the first byte, comes sooner.
# Measured (scripts/bench_rollout.py default sweeps, N=8, 12 MiB layers): warm 2.01x -> 1.93x the
# bound, seeder upload 1.75 -> 1.54 F, p99 first byte 1.2 -> 1.0 s; 64 KiB gained a little more
# (seeder 1.47 F) for ~20 % more CPU per MB.
MIN_PIECE = 128 * 1024
LEGACY_MIN_PIECE = 256 * 1024
MAX_PIECE = 4 * 1024 * 1024
TARGET_PIECES = 1024
MAX_LAYER_SIZE = 1 << 40  # 1 TiB: anything larger is a malformed torrent, not a layer
# The tracker's announce reply to a seeder of a torrent it does not publish (lost in a store failover,
# a restart, or dropped): a host seeding a layer it verified publishes the torrent again.
UNPUBLISHED_WARNING = "layerswarm: no torrent published for this info-hash; publish it again"


def piece_length(size: int, floor: int = MIN_PIECE) -> int:
    """Smallest power of two in [``floor`` (128 KiB), 4 MiB] giving at most ~1024 pieces.

    Small pieces give a fast first byte and piece diversity early in a
    rollout; the cap keeps the piece list (and per-piece overhead) bounded
    for multi-GiB layers.
    """
    p = floor
    while p < MAX_PIECE and size > p * TARGET_PIECES:
        p *= 2
    return p


def accepted_piece_lengths(size: int) -> tuple:
    """The piece lengths a layer torrent of ``size`` bytes may have: this rule's, then the earlier one's."""
    return tuple(dict.fromkeys((piece_length(size), piece_length(size, LEGACY_MIN_PIECE))))


def piece_count(size: int, plen: int) -> int:
    return max(1, -(-size // plen))


# The largest valid layer torrent: the piece hashes of a MAX_LAYER_SIZE blob in MAX_PIECE pieces,
# plus room for the tracker list and the other keys.  Bodies beyond this are refused unread.
MAX_METAINFO_BYTES = 20 * piece_count(MAX_LAYER_SIZE, MAX_PIECE) + (64 << 10)


def info_name(digest: Digest) -> str:
    return str(digest)


@dataclass(frozen=True)
class LayerTorrent:
    """A validated layer torrent."""

    digest: Digest
    info_hash: InfoHash
    size: int
    piece_length: int
    pieces: bytes  # concatenated 20-byte SHA-1s
    trackers: tuple
    ssl_cert: bytes | None
    metainfo: bytes  # the canonical bencoded .torrent

    @property
    def format(self) -> int:
        return format_version(self.ssl_cert)

    @property
    def kind(self) -> str:
        return torrent_kind(self.ssl_cert)

    @property
    def num_pieces(self) -> int:
        return len(self.pieces) // 20

    def piece_range(self, index: int) -> tuple:
        start = index * self.piece_length
        return start, min(self.size, start + self.piece_length)


def format_version(ssl_cert: bytes | None) -> int:
    """The format version a torrent with this ``ssl-cert`` (None: open mode) is written in."""
    return SECURE_FORMAT_VERSION if ssl_cert else FORMAT_VERSION


def torrent_kind(ssl_cert: bytes | None) -> str:
    """Which fleet a torrent belongs to: ``"1"`` (open mode) or ``"2:"`` and a hash of its ``ssl-cert``
    (one kind per fleet CA).  One blob has one torrent per kind; the tracker keeps them apart."""
    if not ssl_cert:
        return str(FORMAT_VERSION)
    return f"{SECURE_FORMAT_VERSION}:{hashlib.sha256(ssl_cert).hexdigest()[:32]}"


_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----([^-]*)-----END CERTIFICATE-----")


def root_cert(ca_pem: bytes) -> bytes:
    """The ``ssl-cert`` of a fleet's torrents: the first certificate of the CA file, in canonical PEM.

    Every host must write the same bytes for the info-hashes to agree, whatever
    line endings or extra certificates its copy of the CA file has (libtorrent
    trusts only the first certificate of ``ssl-cert`` anyway).
    """
    m = _PEM_CERT.search(ca_pem)
    try:
        der = base64.b64decode(b"".join(m.group(1).split()), validate=True) if m else b""
    except binascii.Error:
        der = b""
    if not der:
        raise UserError("the fleet CA file holds no PEM certificate")
    b64 = base64.b64encode(der)
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return b"-----BEGIN CERTIFICATE-----\n" + b"\n".join(lines) + b"\n-----END CERTIFICATE-----\n"


def build_info(digest: Digest, size: int, pieces: bytes, ssl_cert: bytes | None = None,
               plen: int | None = None) -> dict:
    info = {
        b"length": size,
        b"name": info_name(digest).encode(),
        b"piece length": plen or piece_length(size),
        b"pieces": pieces,
        b"private": 1,
    }
    if ssl_cert:
        info[b"ssl-cert"] = ssl_cert
    return info


def build_metainfo(digest: Digest, size: int, pieces: bytes, trackers=(), ssl_cert: bytes | None = None,
                   plen: int | None = None) -> LayerTorrent:
    """Assemble the canonical .torrent for a layer from its piece hashes (``plen`` long; default
    :func:`piece_length`)."""
    trackers = tuple(trackers)
    meta = {b"info": build_info(digest, size, pieces, ssl_cert, plen),
            b"layerswarm": {b"digest": str(digest).encode(), b"format": format_version(ssl_cert)}}
    if trackers:
        meta[b"announce"] = trackers[0].encode()
        if len(trackers) > 1:
            meta[b"announce-list"] = [[t.encode() for t in trackers]]
    return parse_metainfo(bencodepy.encode(meta), digest)


def for_fleet(torrent: LayerTorrent, ssl_cert: bytes | None) -> LayerTorrent:
    """The same layer's torrent for a fleet whose ``ssl-cert`` is ``ssl_cert`` (None: open mode),
    rebuilt from the piece hashes (no rehash); ``torrent`` itself when it is that already."""
    if torrent.ssl_cert == ssl_cert:
        return torrent
    return build_metainfo(torrent.digest, torrent.size, torrent.pieces, torrent.trackers, ssl_cert,
                          torrent.piece_length)


def fleet_mismatch(torrent: LayerTorrent, ssl_cert: bytes | None) -> str | None:
    """Why ``torrent`` does not belong to a fleet whose ``ssl-cert`` is ``ssl_cert``; None if it does."""
    if torrent.ssl_cert == ssl_cert:
        return None
    if ssl_cert is None:
        return "an SSL torrent (format 2) in an open-mode fleet"
    if torrent.ssl_cert is None:
        return "an open-mode torrent (format 1) in a secure fleet"
    return "an SSL torrent of another CA than the fleet's"


class PieceHasher:
    """Hash a blob once, as it streams by: sha256 of the whole and SHA-1 per piece."""

    def __init__(self, size: int, plen: int | None = None):
        self.size = size
        self.plen = plen or piece_length(size)
        self._sha256 = hashlib.sha256()
        self._piece = hashlib.sha1()
        self._in_piece = 0
        self._pieces = bytearray()
        self.seen = 0

    def update(self, data) -> None:
        mv = memoryview(data)
        self._sha256.update(mv)
        self.seen += len(mv)
        while mv:
            take = min(len(mv), self.plen - self._in_piece)
            self._piece.update(mv[:take])
            self._in_piece += take
            mv = mv[take:]
            if self._in_piece == self.plen:
                self._pieces += self._piece.digest()
                self._piece = hashlib.sha1()
                self._in_piece = 0

    def digest(self) -> Digest:
        return Digest(self._sha256.hexdigest())

    def pieces(self) -> bytes:
        """Concatenated piece hashes; call after the last byte."""
        if self.seen != self.size:
            raise ValueError(f"hashed {self.seen} bytes, expected {self.size}")
        tail = self._piece.digest() if self._in_piece or self.size == 0 else b""
        return bytes(self._pieces) + tail


def torrent_for_file(path, trackers=(), ssl_cert: bytes | None = None, expect: Digest | None = None,
                     plen: int | None = None) -> LayerTorrent:
    """Read a blob file once and build its layer torrent (``plen``: one of :func:`accepted_piece_lengths`,
    default this rule's); checks ``expect`` if given."""
    import os
    size = os.path.getsize(path)
    h = PieceHasher(size, plen)
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
    digest = h.digest()
    if expect is not None and digest != expect:
        raise InvalidMetainfo(f"file {path} hashes to {digest}, not {expect}")
    return build_metainfo(digest, size, h.pieces(), trackers, ssl_cert, h.plen)


def parse_metainfo(data: bytes, expect: Digest | None = None) -> LayerTorrent:
    """Validate a .torrent as a layer torrent of this format (raises InvalidMetainfo)."""
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise InvalidMetainfo("empty torrent")
    try:
        meta = bencodepy.decode(bytes(data))
    except Exception:
        raise InvalidMetainfo("not valid bencode") from None
    if not isinstance(meta, dict) or not isinstance(meta.get(b"info"), dict):
        raise InvalidMetainfo("no info dictionary")
    if bencodepy.encode(meta) != bytes(data):
        raise InvalidMetainfo("not canonical bencode (keys unsorted or extra data)")
    info = meta[b"info"]
    if b"files" in info or b"file tree" in info or b"meta version" in info:
        raise InvalidMetainfo("not a single-file BitTorrent v1 torrent")
    allowed = {b"length", b"name", b"piece length", b"pieces", b"private", b"ssl-cert"}
    extra = set(info) - allowed
    if extra:
        raise InvalidMetainfo(f"unexpected keys in info: {sorted(k.decode('latin-1') for k in extra)}")
    name = info.get(b"name")
    try:
        digest = Digest.parse(name.decode("ascii")) if isinstance(name, bytes) else None
    except (InvalidDigest, UnicodeDecodeError):
        digest = None
    if digest is None:
        raise InvalidMetainfo("info name is not a sha256:<hex> layer digest")
    if expect is not None and digest != expect:
        raise InvalidMetainfo(f"info name {digest} does not match {expect}")
    size = info.get(b"length")
    if not isinstance(size, int) or not (0 < size <= MAX_LAYER_SIZE):
        raise InvalidMetainfo("length missing or out of range")
    plen = info.get(b"piece length")
    if plen not in accepted_piece_lengths(size):
        raise InvalidMetainfo(f"piece length {plen} breaks the layer torrent rule "
                              f"({' or '.join(map(str, accepted_piece_lengths(size)))} for {size} bytes)")
    pieces = info.get(b"pieces")
    if not isinstance(pieces, bytes) or len(pieces) != 20 * piece_count(size, plen):
        raise InvalidMetainfo("pieces field has the wrong length")
    if info.get(b"private") != 1:
        raise InvalidMetainfo("layer torrents are private (private=1)")
    ssl_cert = info.get(b"ssl-cert")
    if ssl_cert is not None and not (isinstance(ssl_cert, bytes) and ssl_cert):
        raise InvalidMetainfo("ssl-cert must be a non-empty string")
    ours = meta.get(b"layerswarm")
    version = ours.get(b"format") if isinstance(ours, dict) else None
    if version is not None and version != format_version(ssl_cert):
        raise InvalidMetainfo(f"layerswarm format {version!r}, but the info {'has' if ssl_cert else 'has no'} "
                              f"ssl-cert (format {format_version(ssl_cert)})")
    trackers = []
    for tier in meta.get(b"announce-list", []) or []:
        for url in tier if isinstance(tier, list) else []:
            if isinstance(url, bytes):
                trackers.append(url.decode("utf-8", "replace"))
    if not trackers and isinstance(meta.get(b"announce"), bytes):
        trackers.append(meta[b"announce"].decode("utf-8", "replace"))
    return LayerTorrent(digest=digest, info_hash=InfoHash.of_info(bencodepy.encode(info)), size=size,
                        piece_length=plen, pieces=pieces, trackers=tuple(trackers), ssl_cert=ssl_cert,
                        metainfo=bytes(data))
