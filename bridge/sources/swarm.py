"""The swarm-backed blob source: each layer leaves the origin about once per fleet.

``SwarmBlobSource.open`` (the registry view's one question, see
sources/blobs.py) answers, in order:

1. store hit -> the file (sendfile);
2. a torrent is published at the tracker -> the shared swarm download,
   streamed in order as pieces verify; a stall continues the same response
   from the origin with ``Range: bytes=<offset>-``;
3. cold layer -> a :class:`~.fetch.Fetch` (one per digest per host) that asks the
   tracker for a lease: the *holder* fetches from the origin, every other
   bridge streams from the holder or an earlier relay (a tree with bounded
   fan-out, bridges' own ``/_layerswarm/relay`` endpoint: http/relay.py,
   sources/relayclient.py).  Either way the
   bytes are written and hashed into the store (sha256 + piece SHA-1s, no
   second read), then the torrent is published and seeded.  The fetch runs
   in its own thread: a client leaving does not stop it.  Clients follow the
   fetch's file from their offset.
4. tracker unreachable -> straight to the origin, at most ``origin_slots``
   fetches at once per host, after a random jitter (no thundering herd);
   for ``tracker_backoff`` seconds after a failure the tracker is not asked
   (a silent tracker costs one timeout, not one per request; sources/tracker.py).

Whatever a client has been sent, a failure underneath continues from the
origin at the same offset.  A whole-blob answer holds back its last chunk
until the blob's sha256 is verified: a poisoned torrent or relay ends in a
cut connection, never in a complete wrong blob.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from layerswarm.bridge.config import BridgeConfig
from layerswarm.bridge.format.digest import Digest
from layerswarm.bridge.format.errors import DigestMismatch, RegistryError, StoreFull, SwarmError, UpstreamError
from layerswarm.bridge.format.names import ByteRange
from layerswarm.bridge.sources.blobs import BlobRequest, BlobResponse, span
from layerswarm.bridge.sources.fetch import Fetch, FetchDeps, Published
from layerswarm.bridge.sources.relayclient import RelayClient
from layerswarm.bridge.sources.tracker import TrackerBackoff

log = logging.getLogger("layerswarm.swarm")


class _NoMetrics:
    def fetched(self, kind: str, n: int) -> None:
        pass

    def prefetched(self) -> None:
        pass

    def fallback(self, frm: str) -> None:
        pass

    def mismatch(self, source: str) -> None:
        pass


class SwarmBlobSource:
    """The source order for one host; every collaborator is passed in (fakes in tests).

    ``store``: size_of / open / touch / writer (the host's LayerStore);
    ``swarm``: ``(digest, offset, torrent) -> byte iterator`` (the peer's
    shared download; SwarmError when unusable); ``tracker``: the
    :class:`TrackerBackoff`; ``origin``: the origin BlobSource; ``relays``: a
    :class:`RelayClient`; ``publish``: verified writer -> published and seeded;
    ``trackers``: announce URLs for torrents built while fetching; ``download``: ``(digest, torrent)``
    -> start the shared swarm download without a reader (prefetch; None: no prefetch from the swarm);
    ``downloading``: ``digest -> torrent`` of the swarm download running on this host, or None (a prefetched
    layer's request joins it without asking the tracker again).
    """

    MAX_PREFETCH_QUEUED = 64

    def __init__(self, *, store, swarm, tracker: TrackerBackoff, origin, relays: RelayClient, publish,
                 trackers, cfg: BridgeConfig, metrics=None, download=None, downloading=None):
        self.store = store
        self.swarm = swarm
        self.download = download
        self.downloading = downloading
        self.tracker = tracker
        self.origin = origin
        self.cfg = cfg
        self.metrics = metrics if metrics is not None else _NoMetrics()
        self._lock = threading.Lock()
        self._fetches: dict = {}
        self._poisoned: dict = {}   # digest -> info-hash hex of a torrent that failed verification
        self._prefetching: set = set()
        self._prefetcher = ThreadPoolExecutor(max_workers=2, thread_name_prefix="prefetch")
        self._deps = FetchDeps(cfg=cfg, leases=tracker, origin=origin, relays=relays, new_writer=store.writer,
                               open_stored=store.open, publish=publish, trackers=tuple(trackers),
                               metrics=self.metrics,
                               origin_slots=threading.BoundedSemaphore(max(1, cfg.swarm.origin_slots)),
                               on_done=self._fetch_done)

    def _fetch_done(self, fetch: Fetch) -> None:
        with self._lock:
            if self._fetches.get(fetch.digest) is fetch:
                del self._fetches[fetch.digest]

    def active_fetch(self, digest: Digest):
        with self._lock:
            return self._fetches.get(digest)

    # -- the BlobSource ---------------------------------------------------
    def open(self, req: BlobRequest) -> BlobResponse:
        d = req.digest
        store = self.store
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
        if not req.shareable:
            # Open mode, a repository the upstream does not serve to anyone: its bytes take no
            # lease, join no torrent and reach no relay (no fetch into the store either).
            return self.origin.open(req)
        fetch = self.active_fetch(d)
        if req.head:
            if fetch is not None and fetch.size is not None:
                start, end = span(req.range, fetch.size)
                return BlobResponse(fetch.size, start, end, source="relay")
            return self.origin.open(req)   # HEAD never starts a download
        if fetch is None:
            # A download already running here (a prefetch, another client) has the torrent: one tracker
            # request per layer per host, not one per request.
            meta = self.downloading(d) if self.downloading is not None else None
            tracker_down = False
            if meta is None:
                meta, tracker_down = self.tracker.metainfo(d)
            if meta is not None and self._poisoned.get(d) != meta.info_hash.hex:
                try:
                    return self._from_swarm(req, meta)
                except (SwarmError, StoreFull) as exc:
                    self.metrics.fallback("swarm")
                    log.warning("swarm unusable for %s (%s): fetching", d, exc)
            fetch = self._start_fetch(req, tracker_down or meta is not None)
        try:
            size = fetch.wait_size(self.cfg.first_byte_timeout)
        except Published:
            self._fetch_done(fetch)
            try:
                meta, _ = self.tracker.metainfo(d)
                if meta is not None:
                    return self._from_swarm(req, meta)
            except (SwarmError, StoreFull) as exc:
                self.metrics.fallback("swarm")
                log.warning("published torrent of %s unusable (%s): plain origin", d, exc)
            return self.origin.open(req)
        except RegistryError:
            raise
        except (SwarmError, StoreFull, UpstreamError) as exc:
            self.metrics.fallback("fetch")
            log.warning("fetch of %s unusable before the first byte (%s): plain origin", d, exc)
            return self.origin.open(req)
        start, end = span(req.range, size)
        res = BlobResponse(size, start, end, source=fetch.kind)
        whole = start == 0 and end == size - 1
        res.body = self._continue_from_origin(req, res, fetch.chunks(start, end, hold_tail=whole), whole,
                                              lambda: fetch.kind)
        return res

    # -- prefetch ---------------------------------------------------------
    def prefetch(self, reqs: list) -> None:
        """Start the swarm download or the cold fetch of layers a client will ask for next (the first
        ``prefetch_layers`` of ``reqs``); returns at once, bounded, and never raises."""
        for req in reqs[:self.cfg.swarm.prefetch_layers]:
            if not req.shareable or self.store.size_of(req.digest) is not None or self.active_fetch(req.digest):
                continue
            with self._lock:
                if req.digest in self._prefetching or len(self._prefetching) >= self.MAX_PREFETCH_QUEUED:
                    continue
                self._prefetching.add(req.digest)
            self._prefetcher.submit(self._prefetch_one, req)

    def _prefetch_one(self, req: BlobRequest) -> None:
        d = req.digest
        try:
            if self.store.size_of(d) is not None or self.active_fetch(d) is not None:
                return
            meta, tracker_down = self.tracker.metainfo(d)
            if tracker_down:
                return     # without the tracker a prefetch would be one more origin fetch per host
            if meta is None:
                self._start_fetch(req, False)
            elif self.download is not None and self._poisoned.get(d) != meta.info_hash.hex:
                self.download(d, meta)
            self.metrics.prefetched()
        except Exception as exc:  # noqa: BLE001 - the client's own request does the real work
            log.info("prefetch of %s not started: %s", d, exc)
        finally:
            with self._lock:
                self._prefetching.discard(d)

    def _start_fetch(self, req: BlobRequest, tracker_down: bool) -> Fetch:
        with self._lock:
            fetch = self._fetches.get(req.digest)
            if fetch is None or fetch.error is not None:
                fetch = Fetch(req, tracker_down, self._deps)
                self._fetches[req.digest] = fetch
                fetch.start()
            return fetch

    def _from_swarm(self, req: BlobRequest, meta) -> BlobResponse:
        size = meta.size
        start, end = span(req.range, size)
        whole = start == 0 and end == size - 1
        # The socket only for a whole answer: a ranged one's last chunk is cut at its end here.
        stream = self.swarm(req.digest, start, meta, req.socket if whole else None)   # SwarmError: no swarm
        res = BlobResponse(size, start, end, source="peer")

        def chunks():
            pos = start
            try:
                for chunk in stream:
                    self.metrics.fetched("peer", len(chunk))
                    if pos + len(chunk) > end + 1:
                        chunk = chunk[:end + 1 - pos]
                    pos += len(chunk)
                    yield chunk
                    if pos > end:
                        return
            except DigestMismatch:
                self.metrics.mismatch("peer")
                self._poisoned[req.digest] = meta.info_hash.hex
                raise
            finally:
                close = getattr(stream, "close", None)
                if close:
                    close()
        # LayerStream holds its last piece until the whole blob verified (its download's hash); a
        # whole answer that ends with origin bytes after a stall is checked as assembled.
        res.body = self._continue_from_origin(req, res, chunks(), whole, lambda: "peer",
                                              sent_prefix=getattr(stream, "sent_prefix", None))
        return res

    def _continue_from_origin(self, req: BlobRequest, res: BlobResponse, chunks, verify_whole: bool, kind,
                              sent_prefix=None):
        """Yield ``chunks``; on a swarm/relay failure continue at the same offset from the origin.

        A whole answer (``verify_whole``) is checked against the digest as assembled.  ``sent_prefix``:
        the source verifies its own whole blob before its last chunk and can tell the hash of what it
        gave out (``sent_prefix(nbytes)``, a swarm download's reader), so its bytes are hashed here only
        if the origin continues them (the second sha256 was ~1 ms of CPU per MB).  A cold fetch's file
        can be gone by then (a full disk aborts it), so its bytes are hashed here as they go."""
        pos = res.start
        hasher = req.digest.hasher() if verify_whole and sent_prefix is None else None
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
            self.metrics.fallback(res.source)
            if verify_whole and hasher is None:
                hasher = req.digest.hasher() if pos == res.start else sent_prefix(pos - res.start)
                if hasher is None:   # what was sent cannot be checked: a cut, not an unchecked blob
                    raise SwarmError(f"{req.digest}: {exc} after {pos - res.start} bytes that cannot be "
                                     "checked against the digest; not continued from the origin") from None
            log.warning("%s: %s after %d bytes; continuing from the origin", req.digest, exc, pos - res.start)
            res.source = "origin"
            rest = self.origin.open(req.at(ByteRange(pos, res.end)))
            try:
                for chunk in rest.body:
                    if hasher is not None:
                        hasher.update(chunk)
                        if hasher.size == res.size and not hasher.matches():
                            self.metrics.mismatch("assembled")
                            raise DigestMismatch(f"{req.digest}: assembled bytes do not match")
                    yield chunk
            finally:
                rest.close()
        finally:
            close = getattr(chunks, "close", None)
            if close:
                close()


def swarm_source(peer, origin, cfg: BridgeConfig, metrics=None) -> SwarmBlobSource:
    """The swarm source of a host's :class:`~layerswarm.bridge.node.peer.Peer`."""
    relays = RelayClient(cfg.upstreams.connect_timeout, cfg.swarm.relay_timeout, cfg.swarm.relay_min_rate,
                         tls=cfg.fleet.tls())
    return SwarmBlobSource(store=peer.store, swarm=peer.stream, download=peer.download,
                           downloading=peer.downloading,
                           tracker=TrackerBackoff(peer.tracker, cfg.swarm.tracker_backoff), origin=origin,
                           relays=relays, publish=peer.publish_writer, trackers=peer.tracker.announce_urls,
                           cfg=cfg, metrics=metrics)
