"""Small builders shared by tracker tests."""
from __future__ import annotations

import os
from urllib.parse import quote_from_bytes

from layerswarm.bridge.format.digest import Digest
from layerswarm.bridge.format.layertorrent import PieceHasher, build_metainfo


def announce_qs(info_hash: bytes, peer_id: bytes, port: int, left: int = 100, **extra) -> str:
    parts = [f"info_hash={quote_from_bytes(info_hash, safe='')}", f"peer_id={quote_from_bytes(peer_id, safe='')}",
             f"port={port}", "uploaded=0", "downloaded=0", f"left={left}"]
    parts += [f"{k}={v}" for k, v in extra.items()]
    return "&".join(parts)


def layer(size: int = 300_000, seed: bytes = b"") -> tuple:
    """(blob bytes, LayerTorrent) for random bytes."""
    data = (seed + os.urandom(size))[:size]
    h = PieceHasher(size)
    h.update(data)
    return data, build_metainfo(h.digest(), size, h.pieces(), ["http://127.0.0.1:1/announce"])


def bad_torrent_for(digest: Digest, size: int) -> bytes:
    """A well-formed torrent for ``digest`` whose pieces are wrong (a poisoned publish)."""
    h = PieceHasher(size)
    h.update(b"\0" * size)
    return build_metainfo(digest, size, h.pieces()).metainfo
