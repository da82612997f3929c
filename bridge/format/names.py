"""Registry API paths, repository names, tags and references.

Everything a client puts in a ``/v2/...`` path is parsed here, from the raw
request path, before any disk or network work.  Nothing here ever becomes a
file path: names only travel to upstream URLs, and only after validation.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from werkzeug.http import parse_range_header

from layerswarm.bridge.format import errors
from layerswarm.bridge.format.digest import Digest
from layerswarm.bridge.format.errors import InvalidDigest

# The distribution spec's grammar for repository names and tags.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
COMPONENT_RE = re.compile(rf"^{_COMPONENT}$")
TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
MAX_NAME = 255

_API_PATH = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)$")


def valid_name(name: str) -> bool:
    return isinstance(name, str) and len(name) <= MAX_NAME and bool(NAME_RE.fullmatch(name))


def valid_tag(tag: str) -> bool:
    return isinstance(tag, str) and bool(TAG_RE.fullmatch(tag))


@dataclass(frozen=True)
class Reference:
    """A manifest reference: exactly one of ``tag`` / ``digest`` is set."""

    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    def parse(cls, text: str) -> "Reference":
        if ":" in text:
            try:
                return cls(digest=Digest.parse(text))
            except InvalidDigest:
                raise errors.digest_invalid(text) from None
        if not valid_tag(text):
            # The spec has no TAG_INVALID; distribution answers MANIFEST_INVALID
            # / NAME_INVALID.  A malformed tag can never name a manifest.
            raise errors.RegistryError("TAG_INVALID", "manifest tag did not match URI", 400, {"tag": text})
        return cls(tag=text)

    def __str__(self) -> str:
        return self.tag if self.tag is not None else str(self.digest)


@dataclass(frozen=True)
class ApiPath:
    """A parsed ``/v2/<name>/(manifests|blobs)/<ref>`` request path."""

    name: str
    kind: str  # "manifests" | "blobs"
    reference: Reference


def raw_path(environ: dict) -> str:
    """The request path as the client sent it (still percent-encoded)."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        raw = raw.split("?", 1)[0]
        if raw.startswith(("http://", "https://")):  # absolute-form request target
            raw = "/" + raw.split("/", 3)[-1] if raw.count("/") >= 3 else "/"
        return raw
    # Fallback (test clients): PATH_INFO is already decoded; re-check it anyway.
    return environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")


def parse_api_path(raw: str) -> ApiPath | None:
    """Parse a raw request path; None when it is not a manifest/blob path.

    Raises RegistryError NAME_INVALID / DIGEST_INVALID / TAG_INVALID.
    An encoded slash (``%2f``) or any other escape in the name is invalid:
    no valid name, tag or digest needs percent-encoding.
    """
    if "%" in raw:
        # Tolerate only an encoded ':' in a digest (some clients escape it).
        decoded = unquote(raw)
        if re.search(r"%(?!3[aA])", raw) or "%" in decoded:
            m = _API_PATH.fullmatch(decoded)
            raise errors.name_invalid(m.group("name") if m else decoded[:MAX_NAME])
        raw = decoded
    m = _API_PATH.fullmatch(raw)
    if not m:
        return None
    name, kind, ref = m.group("name"), m.group("kind"), m.group("ref")
    if not valid_name(name):
        raise errors.name_invalid(name[:MAX_NAME])
    if kind == "blobs":
        try:
            reference = Reference(digest=Digest.parse(ref))
        except InvalidDigest:
            raise errors.digest_invalid(ref) from None
    else:
        reference = Reference.parse(ref)
    return ApiPath(name, kind, reference)


@dataclass(frozen=True)
class ByteRange:
    """``Range: bytes=start-[end]`` (end inclusive, None = to the end)."""

    start: int
    end: int | None = None

    @classmethod
    def parse(cls, header: str | None) -> "ByteRange | None":
        """None when absent or a form we ignore (suffix, multi-range: RFC 7233 allows ignoring)."""
        parsed = parse_range_header(header) if header else None   # None when malformed (5-3, junk)
        if parsed is None or parsed.units != "bytes" or len(parsed.ranges) != 1:
            return None
        start, stop = parsed.ranges[0]   # stop is exclusive
        if start < 0:
            return None                  # suffix range (bytes=-N): ignored
        return cls(start, None if stop is None else stop - 1)

    def resolve(self, size: int) -> tuple[int, int]:
        """Concrete inclusive (start, end) for a blob of ``size``; raises 416 when unsatisfiable."""
        if self.start >= size:
            raise errors.range_invalid(size)
        end = size - 1 if self.end is None else min(self.end, size - 1)
        return self.start, end

    def header(self) -> str:
        return f"bytes={self.start}-" + ("" if self.end is None else str(self.end))
