"""Validated value types for content addresses.

A layer is addressed by its OCI digest (``sha256:<64 hex>``) everywhere users
see it; its BitTorrent info-hash (SHA-1 of the bencoded info dict) is an
internal detail.  Both are parsed once, at the edge, into these types so the
rest of the code never handles an unchecked string.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from layerswarm.bridge.format.errors import InvalidDigest, InvalidInfoHash

_SHA256_HEX = re.compile(r"^[a-f0-9]{64}$")
# OCI image-spec digest grammar; we only *serve* sha256, but recognising the
# grammar lets us tell "malformed" from "unsupported algorithm".
_DIGEST_GRAMMAR = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")


@dataclass(frozen=True, order=True)
class Digest:
    """A ``sha256:<hex>`` content digest."""

    hex: str

    def __post_init__(self) -> None:
        if not isinstance(self.hex, str) or not _SHA256_HEX.fullmatch(self.hex):
            raise InvalidDigest(f"not a sha256 hex digest: {self.hex!r}")

    @classmethod
    def parse(cls, text: str) -> "Digest":
        if not isinstance(text, str) or not _DIGEST_GRAMMAR.fullmatch(text):
            raise InvalidDigest(f"malformed digest: {text!r}")
        algo, _, value = text.partition(":")
        if algo != "sha256":
            raise InvalidDigest(f"unsupported digest algorithm: {algo!r}")
        return cls(value)

    @classmethod
    def of_bytes(cls, data: bytes) -> "Digest":
        return cls(hashlib.sha256(data).hexdigest())

    def __str__(self) -> str:
        return f"sha256:{self.hex}"

    def short(self) -> str:
        return self.hex[:12]

    def hasher(self) -> "DigestVerifier":
        return DigestVerifier(self)


class DigestVerifier:
    """Incremental sha256 that checks against an expected digest.

    ``state``/``size``: continue from a sha256 object that has already hashed ``size`` bytes (a copy
    is taken)."""

    def __init__(self, expected: Digest, state=None, size: int = 0) -> None:
        self.expected = expected
        self._h = state.copy() if state is not None else hashlib.sha256()
        self.size = size

    def update(self, chunk: bytes) -> None:
        self._h.update(chunk)
        self.size += len(chunk)

    def update_from(self, f, nbytes: int, chunk: int = 1 << 20) -> None:
        """Hash the next ``nbytes`` of the open binary file ``f``; OSError if it ends first."""
        while nbytes > 0:
            b = f.read(min(chunk, nbytes))
            if not b:
                raise OSError(f"file ended {nbytes} bytes short")
            self.update(b)
            nbytes -= len(b)

    def actual(self) -> Digest:
        return Digest(self._h.hexdigest())

    def matches(self) -> bool:
        return self._h.hexdigest() == self.expected.hex


@dataclass(frozen=True, order=True)
class InfoHash:
    """A BitTorrent v1 info-hash (20 raw bytes)."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != 20:
            raise InvalidInfoHash("an info-hash is exactly 20 bytes")

    @classmethod
    def from_hex(cls, text: str) -> "InfoHash":
        if not isinstance(text, str) or not re.fullmatch(r"[0-9a-fA-F]{40}", text):
            raise InvalidInfoHash(f"not a 40-digit hex info-hash: {text!r}")
        return cls(bytes.fromhex(text))

    @classmethod
    def of_info(cls, bencoded_info: bytes) -> "InfoHash":
        return cls(hashlib.sha1(bencoded_info).digest())

    @property
    def hex(self) -> str:
        return self.raw.hex()

    def __str__(self) -> str:
        return self.hex
