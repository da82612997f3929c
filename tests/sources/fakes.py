"""Fakes for the swarm source's collaborators: tracker, origin, swarm, relays, publisher (all in-process)."""
from __future__ import annotations

import hashlib
import threading

from layerswarm.bridge import config as bconfig
from layerswarm.bridge.format import layertorrent as tf
from layerswarm.bridge.format.digest import Digest
from layerswarm.bridge.format.errors import DigestMismatch, SwarmError, TrackerUnavailable, UpstreamError
from layerswarm.bridge.node.store import LayerStore
from layerswarm.bridge.sources.blobs import BlobRequest, BlobResponse, span
from layerswarm.bridge.sources.swarm import SwarmBlobSource
from layerswarm.bridge.sources.tracker import TrackerBackoff

ANNOUNCE = "http://tracker.invalid/announce"


def blob(size: int, seed: bytes = b"blob") -> tuple:
    data = hashlib.shake_256(seed).digest(size)
    return Digest.of_bytes(data), data


def torrent(data: bytes) -> tf.LayerTorrent:
    h = tf.PieceHasher(len(data))
    h.update(data)
    return tf.build_metainfo(Digest.of_bytes(data), len(data), h.pieces(), [ANNOUNCE])


def chunked(data: bytes, size: int = 100_000):
    for i in range(0, len(data), size):
        yield data[i:i + size]


class FakeTracker:
    """The TrackerClient calls the swarm source makes; those named in ``failing`` raise TrackerUnavailable."""

    ALL = {"get_metainfo", "lease", "renew_lease", "release_lease"}

    def __init__(self):
        self.failing: set = set()
        self.published: dict = {}     # Digest -> LayerTorrent
        self.lease_answer = {"role": "holder"}
        self.calls: list = []

    def _call(self, name, *args):
        self.calls.append((name,) + args)
        if name in self.failing:
            raise TrackerUnavailable("tracker down (fake)")

    def get_metainfo(self, d):
        self._call("get_metainfo", d)
        return self.published.get(d)

    def lease(self, d, url, ttl):
        self._call("lease", d)
        return dict(self.lease_answer)

    def renew_lease(self, d, ttl):
        self._call("renew_lease", d)

    def release_lease(self, d):
        self._call("release_lease", d)

    def names(self) -> list:
        return [c[0] for c in self.calls]


class FakeOrigin:
    """Serves ``blobs`` (digest -> bytes) honouring Range; records every request."""

    def __init__(self, blobs: dict):
        self.blobs = blobs
        self.requests: list = []      # (digest, start or None, head)

    def open(self, req: BlobRequest) -> BlobResponse:
        self.requests.append((req.digest, req.range.start if req.range else None, req.head))
        data = self.blobs[req.digest]
        start, end = span(req.range, len(data))
        res = BlobResponse(len(data), start, end)
        if not req.head:
            res.body = chunked(data[start:end + 1])
        return res


class FakeSwarm:
    """``peer.stream`` stand-in: yields the torrent's bytes from the offset, optionally failing.

    ``fail_at``: raise ``fail`` once this many bytes were yielded; ``bad``: bytes to yield instead.
    ``verifies``: the stream is an object with ``sent_prefix`` (as LayerStream: it tells the sha256 of
    what it gave out, recorded in ``prefixes``; ``prefix_known=False``: it cannot tell); otherwise a
    plain generator, whose bytes the source hashes itself.
    """

    def __init__(self, data: bytes, fail_at: int | None = None, fail=SwarmError("stalled (fake)"), bad=None,
                 verifies: bool = False, prefix_known: bool = True):
        self.data, self.fail_at, self.fail, self.bad = data, fail_at, fail, bad
        self.verifies, self.prefix_known = verifies, prefix_known
        self.calls: list = []
        self.sockets: list = []          # the SocketSlot each stream was given (None: not offered)
        self.prefixes: list = []
        self.closed = 0

    def __call__(self, digest, offset, meta, socket=None):
        self.calls.append((digest, offset))
        self.sockets.append(socket)
        gen = self._gen(offset)
        return _Verifying(self, digest, gen) if self.verifies else gen

    def _gen(self, offset):
        sent = 0
        try:
            for chunk in chunked((self.bad or self.data)[offset:]):
                if self.fail_at is not None and sent + len(chunk) > self.fail_at:
                    if self.fail_at > sent:
                        yield chunk[:self.fail_at - sent]
                    raise self.fail
                sent += len(chunk)
                yield chunk
        finally:
            self.closed += 1


class _Verifying:
    def __init__(self, swarm: FakeSwarm, digest, gen):
        self.swarm, self.digest, self.gen = swarm, digest, gen

    def __iter__(self):
        return self.gen

    def close(self) -> None:
        self.gen.close()

    def sent_prefix(self, nbytes: int):
        self.swarm.prefixes.append(nbytes)
        if not self.swarm.prefix_known:
            return None
        v = self.digest.hasher()
        v.update((self.swarm.bad or self.swarm.data)[:nbytes])
        return v


class FakeRelays:
    """RelayClient stand-in: serves ``data`` for any URL, cutting after ``fail_at`` bytes; real bad-relay memory.

    ``hold_last``: an Event the last chunk waits for (a client is reading before the blob ends).
    """

    def __init__(self, data: bytes, fail_at: int | None = None, bad_bytes: bytes | None = None, hold_last=None):
        self.data, self.fail_at, self.bad_bytes, self.hold_last = data, fail_at, bad_bytes, hold_last
        self.opened: list = []
        self._bad: set = set()

    def open(self, url, digest, offset):
        self.opened.append((url, offset))
        data = self.bad_bytes or self.data

        def gen():
            pos = offset
            for chunk in chunked(data[offset:]):
                if self.fail_at is not None and pos + len(chunk) > self.fail_at:
                    raise UpstreamError("relay cut (fake)")
                pos += len(chunk)
                if pos == len(data) and self.hold_last is not None:
                    self.hold_last.wait(10)
                yield chunk
        return len(data), gen()

    def is_bad(self, url):
        return url in self._bad

    def mark_bad(self, urls):
        self._bad.update(urls)


class Metrics:
    def __init__(self):
        self.bytes: dict = {}
        self._lock = threading.Lock()

    def fetched(self, kind, n):
        with self._lock:
            self.bytes[kind] = self.bytes.get(kind, 0) + n

    def fallback(self, source):
        with self._lock:
            self.fallbacks = getattr(self, "fallbacks", []) + [source]

    def mismatch(self, source):
        with self._lock:
            self.mismatches = getattr(self, "mismatches", []) + [source]

    def prefetched(self):
        with self._lock:
            self.prefetches = getattr(self, "prefetches", 0) + 1


class Host:
    """A swarm source over a real LayerStore in ``root`` and fakes for everything else."""

    def __init__(self, root, blobs: dict, swarm=None, relays=None, clock=None, download=None, downloading=None,
                 **cfg):
        self.store = LayerStore(root)
        self.tracker = FakeTracker()
        self.origin = FakeOrigin(blobs)
        self.swarm = swarm or FakeSwarm(b"")
        self.relays = relays or FakeRelays(b"")
        self.metrics = Metrics()
        self.published: list = []
        # The bridge's one configuration; follow_timeout = 2 x max(relay, stall) = 10 s,
        # first_byte_timeout = read + connect + 5 = 10 s.
        self.cfg = bconfig.from_args(environ={}, store_dir=str(root), advertise_url="http://me.invalid",
                                     tiny_blob_bytes=1000, origin_jitter=0.0, lease_ttl=30, relay_timeout=5,
                                     stall_timeout=5, read_timeout=4, connect_timeout=1, tracker_backoff=10, **cfg)
        self.backoff = TrackerBackoff(self.tracker, self.cfg.swarm.tracker_backoff, **({"clock": clock} if clock else {}))
        self.source = SwarmBlobSource(store=self.store, swarm=self.swarm, tracker=self.backoff, origin=self.origin,
                                      relays=self.relays, publish=self._publish, trackers=[ANNOUNCE],
                                      cfg=self.cfg, metrics=self.metrics, download=download,
                                      downloading=downloading)

    def _publish(self, writer):
        t = writer.finish([ANNOUNCE])
        writer.commit(t.metainfo)
        self.published.append(t.digest)

    def request(self, digest, rng=None, head=False, socket=None) -> BlobRequest:
        return BlobRequest(upstream=None, repo="library/x", digest=digest, range=rng, head=head, socket=socket)

    def get(self, digest, rng=None, socket=None) -> tuple:
        """(response, body bytes or the exception that cut it)."""
        res = self.source.open(self.request(digest, rng, socket=socket))
        if res.file is not None:
            with res.file as f:
                f.seek(res.start)
                return res, f.read(res.length)
        out = bytearray()
        try:
            for chunk in res.body:
                out += chunk
        except (DigestMismatch, SwarmError, UpstreamError) as exc:
            return res, exc
        return res, bytes(out)

    def wait_idle(self, digest, timeout=10.0) -> None:
        """Until no fetch of ``digest`` is registered (its thread finished publishing)."""
        f = self.source.active_fetch(digest)
        if f is not None:
            f.thread.join(timeout)
