"""Where blob bytes come from: the ``BlobSource`` seam.

The registry view (http/registry.py) has already validated the name and
digest and resolved the upstream; it asks ONE blob source::

    res = source.open(BlobRequest(upstream, repo, digest, byte_range, head))

and answers from the :class:`BlobResponse`: status 200 or 206 (when
``byte_range`` was given), ``Content-Length = res.length``,
``Content-Range: bytes res.start-res.end/res.size``, body from ``res.file``
(served with sendfile from ``res.start``) or ``res.body`` (an iterator of
exactly ``res.length`` bytes), nothing for HEAD.

Contract for implementations:

* decide everything that changes the status *before* returning: raise
  ``RegistryError`` (``blob_unknown``, ``range_invalid`` -> 416,
  ``unauthorized``, ``upstream_unavailable`` 502/503/504...) from ``open``;
* ``open`` for HEAD must not start a download;
* once the body iterator has yielded bytes, any failure must *raise* (the
  server then cuts the connection, the client sees a short body and
  resumes or retries); it must never yield wrong bytes — a source that
  continues from elsewhere mid-stream (swarm -> origin with
  ``Range: bytes=<offset>-``) does so inside its iterator;
* the iterator is a generator (or has ``close()``): the server closes it
  when the client goes away, which is where per-client work stops;
* ``source`` names where bytes came from for the counters
  (``origin`` / ``store`` / ``peer`` / ``relay``).

The swarm-backed source (sources/swarm.py) wraps :class:`OriginBlobSource`:
store hit -> file; swarm -> iterator; otherwise delegate to the origin source.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from typing import BinaryIO, Iterator, Optional, Protocol

from layerswarm.bridge.format import errors
from layerswarm.bridge.format.digest import Digest
from layerswarm.bridge.format.errors import DigestMismatch, UpstreamError
from layerswarm.bridge.format.names import ByteRange
from layerswarm.bridge.sources.upstream import UpstreamClient

log = logging.getLogger("layerswarm.blobs")

CHUNK = 256 * 1024
OCTET = "application/octet-stream"


@dataclass(frozen=True)
class BlobRequest:
    upstream: UpstreamClient  # resolved upstream (name, URL, auth) for this request
    repo: str                 # repository on that upstream (validated)
    digest: Digest            # validated sha256
    range: Optional[ByteRange] = None  # client's Range (None: whole blob, status 200)
    head: bool = False        # HEAD: headers only, never download
    auth: object = None       # Authenticator origin calls use (authz/ Grant.fetch_auth); None: service credentials
    shareable: bool = True    # may these bytes move through the fleet (torrent, lease, relay); else store or origin
    socket: object = None     # SocketSlot of the connection the answer goes out on (format/directsend.py), if any

    def at(self, rng: Optional[ByteRange], head: bool = False) -> "BlobRequest":
        """The same blob, client and authorization, another span."""
        return replace(self, range=rng, head=head)


@dataclass
class BlobResponse:
    size: int                 # total blob size
    start: int = 0            # first byte served
    end: int = -1             # last byte served (inclusive); -1 with size 0
    content_type: str = OCTET
    body: Optional[Iterator[bytes]] = None  # exactly `length` bytes; None for HEAD or with `file`
    file: Optional[BinaryIO] = None         # open file holding the whole blob (store hit); served from `start`
    source: str = "origin"

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def close(self) -> None:
        for obj in (self.body, self.file):
            close = getattr(obj, "close", None)
            if close:
                try:
                    close()
                except Exception:  # closing must never fail a request
                    log.debug("close failed", exc_info=True)


class BlobSource(Protocol):
    def open(self, req: BlobRequest) -> BlobResponse: ...


def span(rng: Optional[ByteRange], size: int) -> tuple:
    """(start, end) to serve for ``rng`` of a ``size``-byte blob; 416 when unsatisfiable."""
    if rng is None:
        return 0, size - 1
    return rng.resolve(size)


class OriginSlots:
    """At most ``limit`` blob GETs to origin registries at once on this host (``--origin-fetches``).

    A GET beyond that waits up to ``wait`` seconds for a slot, then is refused with 429 and
    ``Retry-After``: every origin byte of the host passes here (cold fetches, private layers,
    a swarm failure continued from the origin), so the cap holds whatever the reason.
    """

    def __init__(self, limit: int | None = None, wait: float = 0.0):
        self.limit = limit
        self.wait = wait
        self._sem = threading.BoundedSemaphore(limit) if limit else None
        self._lock = threading.Lock()
        self.active = 0

    def acquire(self) -> None:
        if self._sem is not None and not self._sem.acquire(timeout=self.wait):
            raise errors.too_many_requests(f"{self.limit} origin fetches already running on this host",
                                           max(1, int(self.wait)))
        with self._lock:
            self.active += 1

    def release(self) -> None:
        with self._lock:
            self.active -= 1
        if self._sem is not None:
            self._sem.release()


class _SlotBody:
    """An origin blob body that gives its slot back once: when closed, exhausted, failed or dropped."""

    def __init__(self, chunks, release):
        self._chunks, self._release = chunks, release

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._chunks)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            self._chunks.close()
            release()

    __del__ = close   # a body never started has no ``finally`` to run


class OriginBlobSource:
    """Streams blobs from the upstream registry, never buffering them whole.

    A whole-blob GET is hashed as it streams; a mismatch raises at the end
    (before the last chunk is released, so the client never sees a complete
    wrong blob).  Each GET holds one of ``slots`` until its body is closed.
    """

    def __init__(self, slots: OriginSlots | None = None):
        self.slots = slots or OriginSlots()

    def open(self, req: BlobRequest) -> BlobResponse:
        up = req.upstream
        suffix = f"blobs/{req.digest}"
        if req.head:
            r = up.request("HEAD", req.repo, suffix, {"Accept-Encoding": "identity"}, kind="blob", auth=req.auth)
            up.raise_for_status(r, errors.blob_unknown(str(req.digest)))
            size = _int(r.headers.get("Content-Length"))
            r.close()
            if size is None:
                raise errors.upstream_unavailable(f"upstream {up.name}: blob HEAD without Content-Length", 502)
            _check_empty(up, req.digest, size)
            start, end = span(req.range, size)
            return BlobResponse(size, start, end)

        headers = {"Accept-Encoding": "identity"}
        if req.range is not None:
            headers["Range"] = req.range.header()
        self.slots.acquire()
        try:
            res = self._get(req, headers)
        except BaseException:
            self.slots.release()
            raise
        res.body = _SlotBody(res.body, self.slots.release)
        return res

    @staticmethod
    def _get(req: BlobRequest, headers: dict) -> BlobResponse:
        up = req.upstream
        r = up.request("GET", req.repo, f"blobs/{req.digest}", headers, stream=True, kind="blob", auth=req.auth)
        up.raise_for_status(r, errors.blob_unknown(str(req.digest)))
        try:
            if r.status_code == 206:
                cr = _content_range(r.headers.get("Content-Range"))
                if cr is None or req.range is None or cr[0] != req.range.start:
                    raise errors.upstream_unavailable(f"upstream {up.name}: unusable Content-Range", 502)
                ustart, uend, size = cr
                start, end = span(req.range, size)
                skip = 0
                if uend < end:
                    raise errors.upstream_unavailable(f"upstream {up.name}: short range", 502)
            else:
                size = _int(r.headers.get("Content-Length"))
                if size is None:
                    raise errors.upstream_unavailable(f"upstream {up.name}: blob without Content-Length", 502)
                _check_empty(up, req.digest, size)
                start, end = span(req.range, size)
                skip = start  # upstream ignored Range: drop the prefix ourselves
        except BaseException:
            r.close()
            raise
        verify = req.digest.hasher() if (start == 0 and end == size - 1 and skip == 0) else None
        return BlobResponse(size, start, end, body=_stream(r, skip, end - start + 1, verify))


def _stream(r, skip: int, length: int, verifier) -> Iterator[bytes]:
    remaining = length
    try:
        for chunk in r.raw.stream(CHUNK, decode_content=False):
            if skip:
                if len(chunk) <= skip:
                    skip -= len(chunk)
                    continue
                chunk = chunk[skip:]
                skip = 0
            if len(chunk) > remaining:
                chunk = chunk[:remaining]
            remaining -= len(chunk)
            if verifier is not None:
                verifier.update(chunk)
                if remaining == 0 and not verifier.matches():
                    raise DigestMismatch(f"origin bytes do not hash to {verifier.expected}")
            if chunk:
                yield chunk
            if remaining == 0:
                return
        if remaining:
            raise UpstreamError(f"upstream closed the blob stream {remaining} bytes early")
    except DigestMismatch:
        log.error("digest mismatch streaming %s from origin: connection cut", verifier.expected)
        raise
    finally:
        r.close()


EMPTY = Digest.of_bytes(b"")


def _check_empty(up, digest: Digest, size: int) -> None:
    """A zero-length answer has no bytes to hash on the way: check it before the headers go out."""
    if size == 0 and digest != EMPTY:
        raise errors.upstream_unavailable(f"upstream {up.name}: an empty body for {digest}", 502)


def _int(text) -> Optional[int]:
    try:
        v = int(text)
        return v if v >= 0 else None
    except (TypeError, ValueError):
        return None


def _content_range(text) -> Optional[tuple]:
    # "bytes 10-99/100"
    try:
        unit, _, rest = text.strip().partition(" ")
        rng, _, total = rest.partition("/")
        s, _, e = rng.partition("-")
        if unit != "bytes":
            return None
        return int(s), int(e), int(total)
    except (AttributeError, ValueError):
        return None


