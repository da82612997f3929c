"""The swarm-backed blob source: each layer leaves the origin about once per fleet.

``SwarmBlobSource.open`` (the registry view's one question, see
bridge/blobs.py) answers, in order:

1. store hit -> the file (sendfile);
2. a torrent is published at the tracker -> the shared swarm download,
   streamed in order as pieces verify; a stall continues the same response
   from the origin with ``Range: bytes=<offset>-``;
3. cold layer -> a :class:`Fetch` (one per digest per host) that asks the
   tracker for a lease: the *holder* fetches from the origin, every other
   bridge streams from the holder or an earlier relay (a tree with bounded
   fan-out, bridges' own ``/_layerswarm/relay`` endpoint).  Either way the
   bytes are written and hashed into the store (sha256 + piece SHA-1s, no
   second read), then the torrent is published and seeded.  The fetch runs
   in its own thread: a client leaving does not stop it.  Clients follow the
   fetch's file from their offset.
4. tracker unreachable -> straight to the origin, at most ``origin_slots``
   fetches at once per host, after a random jitter (no thundering herd);
   for ``tracker_backoff`` seconds after a failure the tracker is not asked
   (a silent tracker costs one timeout, not one per request).

Whatever a client has been sent, a failure underneath continues from the
origin at the same offset.  A whole-blob answer holds back its last chunk
until the blob's sha256 is verified: a poisoned torrent or relay ends in a
cut connection, never in a complete wrong blob.
"""
from __future__ import annotations

import logging
import random
import threading
import time

import requests
from flask import Blueprint, Response, jsonify, request
from werkzeug.wsgi import wrap_file

from layerswarm.bridge.config import BridgeConfig
from layerswarm.bridge.sources.blobs import BlobRequest, BlobResponse, span
from layerswarm.bridge.format.digest import Digest
from layerswarm.bridge.format.errors import DigestMismatch, InvalidDigest, RegistryError, StoreFull, SwarmError, TrackerUnavailable, UpstreamError
from layerswarm.bridge.format.names import ByteRange

log = logging.getLogger("layerswarm.swarm")

CHUNK = 1 << 20
SIZE_HEADER = "X-Layerswarm-Size"


class _Published(Exception):
    """The lease answer says a torrent exists now: use the swarm."""


class Fetch:
    """One host's fetch of a cold blob into its store: from the origin or a relay source.

    ``size`` is known once the first source answered; ``written`` grows as
    bytes land in the store's incoming file; ``verified`` is set once the
    whole blob hashed to the digest.
    """

    def __init__(self, owner: "SwarmBlobSource", req: BlobRequest, tracker_down: bool):
        self.owner = owner
        self.digest = req.digest
        self.upstream = req.upstream
        self.repo = req.repo
        self.tracker_down = tracker_down
        self.cond = threading.Condition()
        self.size: int | None = None
        self.written = 0
        self.path = None
        self.kind = "origin"          # where bytes currently come from: origin | relay
        self.error: BaseException | None = None
        self.verified = False
        self.done = False
        self.role = None
        self.writer = None
        self.relays_used: set = set()
        self.keep_lease = False
        self.thread = threading.Thread(target=self._run, name=f"fetch-{req.digest.short()}", daemon=True)

    # -- the fetch thread -------------------------------------------------
    def _run(self) -> None:
        cfg = self.owner.cfg
        held_slot = False
        try:
            source = None
            if not self.tracker_down:
                try:
                    source = self._lease()
                except TrackerUnavailable as exc:
                    log.warning("tracker down for %s (%s): origin with jitter", self.digest, exc)
                    self.tracker_down = True
            if self.tracker_down:
                time.sleep(random.uniform(0, cfg.swarm.origin_jitter))
                self.owner.origin_slots.acquire()
                held_slot = True
            self._copy(source)
            with self.cond:
                self.verified = True
                self.cond.notify_all()
            self._publish()
        except BaseException as exc:
            # Unregister before waking the readers: a request retried right after this
            # one failed must start a fresh fetch, not find this failed one.
            self.owner.fetch_done(self)
            with self.cond:
                self.error = exc
                self.cond.notify_all()
            if self.writer is not None:
                self.writer.abort()
            if not isinstance(exc, _Published):
                log.warning("fetch of %s failed: %s", self.digest, exc)
        finally:
            if held_slot:
                self.owner.origin_slots.release()
            if self.role == "holder" and not self.keep_lease:
                self._release_lease()
            with self.cond:
                self.done = True
                self.cond.notify_all()
            self.owner.fetch_done(self)

    def _lease(self):
        """Ask the tracker who fetches; returns a relay source URL, or None for the origin."""
        cfg = self.owner.cfg
        answer = self.owner.tracker_call("lease", self.digest, cfg.advertise_url, cfg.swarm.lease_ttl)
        self.role = answer.get("role")
        if self.role == "published":
            raise _Published()
        if self.role == "relay":
            url = answer["source"]["url"]
            if url in self.owner.bad_relays:
                log.warning("relay %s sent bytes that failed verification before: %s from the origin",
                            url, self.digest)
                return None
            return url
        return None

    def _copy(self, relay_url) -> None:
        """Fill the writer from ``relay_url`` (or the origin), failing over to the origin mid-blob."""
        cfg = self.owner.cfg
        attempts = 0
        while True:
            try:
                if relay_url:
                    self.kind = "relay"
                    self.relays_used.add(relay_url)
                    chunks = self._from_relay(relay_url)
                else:
                    self.kind = "origin"
                    chunks = self._from_origin()
                last_renew = time.monotonic()
                for chunk in chunks:
                    self.writer.write(chunk)
                    self.owner.metrics_fetched(self.kind, len(chunk))
                    with self.cond:
                        self.written += len(chunk)
                        self.cond.notify_all()
                    if self.role == "holder" and time.monotonic() - last_renew > cfg.swarm.lease_ttl / 3:
                        last_renew = time.monotonic()
                        self._renew()
                if self.written != self.size:
                    raise UpstreamError(f"source closed {self.size - self.written} bytes early")
                self.writer.finish([self.owner.peer.tracker.announce_url])
                return
            except DigestMismatch:
                if self.relays_used:  # one of them sent wrong bytes: never ask them again
                    log.error("%s: bytes from relay(s) %s do not match; not using them again",
                              self.digest, sorted(self.relays_used))
                    self.owner.bad_relays.update(self.relays_used)
                raise
            except (StoreFull, RegistryError):
                raise
            except Exception as exc:
                attempts += 1
                if relay_url:
                    log.warning("relay %s failed for %s at %d: %s; continuing from the origin",
                                relay_url, self.digest, self.written, exc)
                    relay_url = None
                    continue
                if attempts >= 3:
                    raise
                log.warning("origin fetch of %s failed at %d (%s); retrying", self.digest, self.written, exc)
                time.sleep(0.5 * attempts)

    def _start_writer(self, size: int) -> None:
        if self.writer is None:
            self.writer = self.owner.peer.ingest_writer(self.digest, size)
            with self.cond:
                self.size = size
                self.path = self.writer.path
                self.cond.notify_all()
        elif size != self.size:
            raise UpstreamError(f"source says {size} bytes, earlier {self.size}")

    def _from_origin(self):
        rng = ByteRange(self.written, None) if self.written else None
        res = self.owner.origin.open(BlobRequest(self.upstream, self.repo, self.digest, rng))
        self._start_writer(res.size)
        return res.body

    def _from_relay(self, url: str):
        cfg = self.owner.cfg
        r = requests.get(f"{url.rstrip('/')}/_layerswarm/relay/{self.digest}", params={"offset": self.written},
                         stream=True, timeout=(cfg.upstreams.connect_timeout, cfg.swarm.relay_timeout))
        if r.status_code != 200:
            r.close()
            raise UpstreamError(f"relay answered {r.status_code}")
        try:
            self._start_writer(int(r.headers[SIZE_HEADER]))
        except (KeyError, ValueError):
            r.close()
            raise UpstreamError("relay answer without a size") from None

        def gen():
            try:
                yield from r.iter_content(CHUNK)
            finally:
                r.close()
        return gen()

    def _release_lease(self) -> None:
        try:
            self.owner.tracker_call("release_lease", self.digest)
        except TrackerUnavailable as exc:  # it lapses by its TTL
            log.warning("could not release the lease on %s: %s", self.digest, exc)

    def _renew(self) -> None:
        try:
            self.owner.tracker_call("renew_lease", self.digest, self.owner.cfg.swarm.lease_ttl)
        except TrackerUnavailable as exc:  # keep fetching: the bytes are still worth having
            log.warning("lease renewal for %s failed: %s", self.digest, exc)

    def _publish(self) -> None:
        peer = self.owner.peer
        if self.size < self.owner.cfg.swarm.tiny_blob_bytes or self.tracker_down:
            self.writer.commit(None)
            # No torrent will tell late bridges where the blob is: keep the lease (it lapses
            # by its TTL) so they relay from our store instead of fetching from the origin.
            self.keep_lease = True
            return
        try:
            peer.publish_writer(self.writer)
        except Exception as exc:  # verified bytes stay useful locally even if publishing failed
            log.warning("could not publish/seed %s: %s; keeping it in the store", self.digest, exc)
            try:
                self.writer.commit(None)
            except Exception:
                log.exception("commit of %s failed", self.digest)

    # -- readers ----------------------------------------------------------
    def wait_size(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.size is None and self.error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SwarmError(f"no source answered for {self.digest} in {timeout:.0f}s")
                self.cond.wait(left)
            if self.size is None:
                raise self.error
            return self.size

    def chunks(self, start: int, end: int, hold_tail: bool):
        """Bytes start..end (inclusive) as they land; raises SwarmError when the fetch fails or stalls."""
        timeout = self.owner.cfg.follow_timeout
        pos = start
        f = self._open_file()
        try:
            while pos <= end:
                with self.cond:
                    deadline = time.monotonic() + timeout
                    while self.written <= pos and self.error is None:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise SwarmError(f"no bytes for {self.digest} in {timeout:.0f}s")
                        self.cond.wait(left)
                    if self.written <= pos:
                        raise SwarmError(f"fetch of {self.digest} failed: {self.error}")
                    avail = self.written
                f.seek(pos)
                data = f.read(min(CHUNK, avail - pos, end + 1 - pos))
                if not data:
                    raise SwarmError(f"short read following {self.digest}")
                if hold_tail and pos + len(data) > end:
                    self._wait_verified()
                pos += len(data)
                yield data
        finally:
            f.close()

    def _open_file(self):
        """The bytes so far: the incoming file (an open fd survives the commit's rename), or,
        for a reader arriving just after the commit, the stored blob."""
        try:
            return open(self.path, "rb")
        except FileNotFoundError:
            if not self.verified:
                raise SwarmError(f"fetch of {self.digest} ended without a file: {self.error}") from None
            try:
                return self.owner.peer.store.open(self.digest)
            except FileNotFoundError:
                raise SwarmError(f"{self.digest} left the store right after its fetch") from None

    def _wait_verified(self) -> None:
        with self.cond:
            while not self.verified and self.error is None:
                self.cond.wait(1.0)
            if not self.verified:
                if isinstance(self.error, DigestMismatch):
                    raise self.error
                raise SwarmError(f"fetch of {self.digest} failed at the end: {self.error}")


class SwarmBlobSource:
    def __init__(self, peer, origin, cfg: BridgeConfig, metrics=None):
        self.peer = peer
        self.origin = origin
        self.cfg = cfg
        self.metrics = metrics
        self.origin_slots = threading.BoundedSemaphore(max(1, cfg.swarm.origin_slots))
        self._lock = threading.Lock()
        self._fetches: dict = {}
        self._poisoned: dict = {}   # digest -> info-hash hex of a torrent that failed verification
        self._tracker_retry_at = 0.0
        self.bad_relays: set = set()   # relay URLs whose bytes failed the digest: fetch from the origin instead
        self.blueprint = _relay_blueprint(self)

    # -- helpers ----------------------------------------------------------
    def tracker_call(self, method: str, *args):
        """``peer.tracker.<method>(*args)``, starting the backoff when the tracker is unreachable."""
        try:
            return getattr(self.peer.tracker, method)(*args)
        except TrackerUnavailable:
            self.tracker_failed()
            raise

    def tracker_failed(self) -> None:
        self._tracker_retry_at = time.monotonic() + self.cfg.swarm.tracker_backoff

    def tracker_down(self) -> bool:
        """True for a while after the tracker failed: a blackholed tracker costs one timeout, not one per request."""
        return time.monotonic() < self._tracker_retry_at

    def metainfo(self, d: Digest) -> tuple:
        """(the published torrent or None, tracker down?)."""
        if self.tracker_down():
            return None, True
        try:
            return self.peer.tracker.get_metainfo(d), False
        except TrackerUnavailable as exc:
            log.warning("tracker unavailable (%s): %s goes to the origin", exc, d)
            self.tracker_failed()
            return None, True

    def metrics_fetched(self, kind: str, n: int) -> None:
        if self.metrics is not None:
            self.metrics.fetched(kind, n)

    def fetch_done(self, fetch: Fetch) -> None:
        with self._lock:
            if self._fetches.get(fetch.digest) is fetch:
                del self._fetches[fetch.digest]

    def active_fetch(self, digest: Digest):
        with self._lock:
            return self._fetches.get(digest)

    # -- the BlobSource ---------------------------------------------------
    def open(self, req: BlobRequest) -> BlobResponse:
        d = req.digest
        store = self.peer.store
        size = store.size_of(d)
        if size is not None:
            start, end = span(req.range, size)
            if req.head:
                return BlobResponse(size, start, end, source="store")
            try:
                f = store.open(d)
            except FileNotFoundError:  # evicted between the two calls
                size = None
            else:
                store.touch(d)
                return BlobResponse(size, start, end, file=f, source="store")
        fetch = self.active_fetch(d)
        if req.head:
            if fetch is not None and fetch.size is not None:
                start, end = span(req.range, fetch.size)
                return BlobResponse(fetch.size, start, end, source="relay")
            return self.origin.open(req)   # HEAD never starts a download
        if fetch is None:
            meta, tracker_down = self.metainfo(d)
            if meta is not None and self._poisoned.get(d) != meta.info_hash.hex:
                try:
                    return self._from_swarm(req, meta)
                except (SwarmError, StoreFull) as exc:
                    log.warning("swarm unusable for %s (%s): fetching", d, exc)
            fetch = self._start_fetch(req, tracker_down or meta is not None)
        try:
            size = fetch.wait_size(self.cfg.first_byte_timeout)
        except _Published:
            self.fetch_done(fetch)
            try:
                meta, _ = self.metainfo(d)
                if meta is not None:
                    return self._from_swarm(req, meta)
            except (SwarmError, StoreFull) as exc:
                log.warning("published torrent of %s unusable (%s): plain origin", d, exc)
            return self.origin.open(req)
        except RegistryError:
            raise
        except (SwarmError, StoreFull, UpstreamError) as exc:
            log.warning("fetch of %s unusable before the first byte (%s): plain origin", d, exc)
            return self.origin.open(req)
        start, end = span(req.range, size)
        res = BlobResponse(size, start, end, source=fetch.kind)
        whole = start == 0 and end == size - 1
        res.body = self._continue_from_origin(req, res, fetch.chunks(start, end, hold_tail=whole), whole,
                                              lambda: fetch.kind)
        return res

    def _start_fetch(self, req: BlobRequest, tracker_down: bool) -> Fetch:
        with self._lock:
            fetch = self._fetches.get(req.digest)
            if fetch is None or fetch.error is not None:
                fetch = Fetch(self, req, tracker_down)
                self._fetches[req.digest] = fetch
                fetch.thread.start()
            return fetch

    def _from_swarm(self, req: BlobRequest, meta) -> BlobResponse:
        size = meta.size
        start, end = span(req.range, size)
        stream = self.peer.stream(req.digest, start, meta)   # SwarmError: no usable swarm
        res = BlobResponse(size, start, end, source="peer")

        def chunks():
            pos = start
            try:
                for chunk in stream:
                    self.metrics_fetched("peer", len(chunk))
                    if pos + len(chunk) > end + 1:
                        chunk = chunk[:end + 1 - pos]
                    pos += len(chunk)
                    yield chunk
                    if pos > end:
                        return
            except DigestMismatch:
                self._poisoned[req.digest] = meta.info_hash.hex
                raise
            finally:
                close = getattr(stream, "close", None)
                if close:
                    close()
        # LayerStream holds its last piece until the whole blob verified; a whole answer is
        # hashed here too, so one that ends with origin bytes after a stall is checked as well.
        whole = start == 0 and end == size - 1
        res.body = self._continue_from_origin(req, res, chunks(), whole, lambda: "peer")
        return res

    def _continue_from_origin(self, req: BlobRequest, res: BlobResponse, chunks, verify_whole: bool, kind):
        """Yield ``chunks``; on a swarm/relay failure continue at the same offset from the origin."""
        pos = res.start
        hasher = req.digest.hasher() if verify_whole else None
        try:
            for chunk in chunks:
                res.source = kind()
                if hasher is not None:
                    hasher.update(chunk)
                pos += len(chunk)
                yield chunk
        except (SwarmError, UpstreamError, StoreFull, OSError) as exc:
            # Not DigestMismatch: bytes already sent were wrong, only a cut is honest.
            if pos > res.end:
                return
            log.warning("%s: %s after %d bytes; continuing from the origin", req.digest, exc, pos - res.start)
            res.source = "origin"
            rest = self.origin.open(BlobRequest(req.upstream, req.repo, req.digest, ByteRange(pos, res.end)))
            try:
                for chunk in rest.body:
                    if hasher is not None:
                        hasher.update(chunk)
                        if hasher.size == res.size and not hasher.matches():
                            raise DigestMismatch(f"{req.digest}: assembled bytes do not match")
                    yield chunk
            finally:
                rest.close()
        finally:
            close = getattr(chunks, "close", None)
            if close:
                close()


def _relay_blueprint(source: SwarmBlobSource) -> Blueprint:
    """``GET /_layerswarm/relay/<digest>?offset=N``: bytes other bridges stream while we fetch."""
    bp = Blueprint("relay", __name__)

    @bp.get("/_layerswarm/relay/<digest>")
    def relay(digest):
        try:
            d = Digest.parse(digest)
            offset = int(request.args.get("offset", "0"))
        except (InvalidDigest, ValueError):
            return jsonify(error="bad digest or offset"), 400
        store = source.peer.store
        size = store.size_of(d)
        if size is not None and 0 <= offset <= size:
            f = store.open(d)
            f.seek(offset)
            return Response(wrap_file(request.environ, f, CHUNK), 200,
                            {SIZE_HEADER: str(size), "Content-Length": str(size - offset),
                             "Content-Type": "application/octet-stream"}, direct_passthrough=True)
        fetch = source.active_fetch(d)
        if fetch is None:
            return jsonify(error="not fetching this blob"), 404
        try:
            size = fetch.wait_size(source.cfg.first_byte_timeout)  # our own source may still be connecting
        except Exception as exc:  # noqa: BLE001 - the asking bridge fails over
            return jsonify(error=f"fetch failed: {exc}"), 404
        if not 0 <= offset <= size:
            return jsonify(error="offset out of range"), 416
        return Response(fetch.chunks(offset, size - 1, hold_tail=False), 200,
                        {SIZE_HEADER: str(size), "Content-Length": str(size - offset),
                         "Content-Type": "application/octet-stream"}, direct_passthrough=True)

    return bp
