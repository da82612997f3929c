"""One host's fetch of a cold blob into its store: the lease holder from the origin, others from a relay.

A :class:`Fetch` runs in its own thread (a client leaving does not stop it)
and takes every collaborator explicitly, through :class:`FetchDeps`: the
tracker's lease calls (behind the back-off), the origin blob source, the
relay client, the store writer factory, the publisher, the metrics sink and
the "fetch done" callback of whoever registered it.  Readers follow the
fetch's file from their offset; a whole-blob reader's last chunk waits until
the blob verified.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable

from layerswarm.bridge.config import BridgeConfig
from layerswarm.bridge.format.errors import DigestMismatch, RegistryError, StoreFull, SwarmError, TrackerUnavailable, UpstreamError
from layerswarm.bridge.format.names import ByteRange
from layerswarm.bridge.format.threadnames import name_this_thread
from layerswarm.bridge.sources.blobs import BlobRequest

log = logging.getLogger("layerswarm.swarm")

CHUNK = 1 << 20


class Published(Exception):
    """The lease answer says a torrent exists now: use the swarm."""


@dataclass(frozen=True)
class FetchDeps:
    """What every fetch of one host shares."""
    cfg: BridgeConfig            # swarm.lease_ttl, tiny_blob_bytes, origin_jitter; advertise_url, follow_timeout
    leases: object               # TrackerBackoff: lease / renew_lease / release_lease (TrackerUnavailable)
    origin: object               # BlobSource of the origin registry
    relays: object               # RelayClient: open(url, digest, offset) -> (size, chunks); is_bad / mark_bad
    new_writer: Callable         # (digest, size) -> a store writer (write / finish / commit / abort / path)
    open_stored: Callable        # digest -> the stored blob's file (FileNotFoundError if gone)
    publish: Callable            # writer -> publish the verified blob's torrent and seed it
    trackers: tuple              # announce URLs for the torrent built while writing
    metrics: object              # fetched(kind, nbytes), fallback(from), mismatch(source)
    origin_slots: threading.Semaphore   # origin fetches at once while the tracker is down
    on_done: Callable            # fetch -> unregister it (called before readers learn of a failure)


class Fetch:
    """``size`` is known once the first source answered; ``written`` grows as bytes land in the
    store's incoming file; ``verified`` is set once the whole blob hashed to the digest."""

    def __init__(self, req: BlobRequest, tracker_down: bool, deps: FetchDeps):
        self.deps = deps
        self.cfg = deps.cfg
        self.digest = req.digest
        self.req = req   # the request that started it: its authorization is the only one the fetch uses
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
        self.origin_size: int | None = None
        self.keep_lease = False
        self.thread = threading.Thread(target=self._run, name=f"fetch-{req.digest.short()}", daemon=True)

    def start(self) -> "Fetch":
        self.thread.start()
        return self

    # -- the fetch thread -------------------------------------------------
    def _run(self) -> None:
        name_this_thread("fetch")
        held_slot = False
        try:
            source = None
            if not self.tracker_down:
                try:
                    source = self._lease()
                except TrackerUnavailable as exc:
                    self.deps.metrics.fallback("tracker")
                    log.warning("tracker down for %s (%s): origin with jitter", self.digest, exc)
                    self.tracker_down = True
            if self.tracker_down:
                time.sleep(random.uniform(0, self.cfg.swarm.origin_jitter))
                self.deps.origin_slots.acquire()
                held_slot = True
            self._copy(source)
            with self.cond:   # hashed right: the readers may have the last bytes now
                self.verified = True
                self.cond.notify_all()
            # Durable (an fsync of the blob: 10 ms alone, longer when every host ends its layers at
            # once) off the clients' path; a failure here leaves the bytes sent right, only not kept.
            self.writer.finish(list(self.deps.trackers))
            self._publish()
        except BaseException as exc:
            # Unregister before waking the readers: a request retried right after this
            # one failed must start a fresh fetch, not find this failed one.
            self.deps.on_done(self)
            with self.cond:
                self.error = exc
                self.cond.notify_all()
            if self.writer is not None:
                self.writer.abort()
            if not isinstance(exc, Published):
                log.warning("fetch of %s failed: %s", self.digest, exc)
        finally:
            if held_slot:
                self.deps.origin_slots.release()
            if self.role == "holder" and not self.keep_lease:
                self._release_lease()
            with self.cond:
                self.done = True
                self.cond.notify_all()
            self.deps.on_done(self)

    def _lease(self):
        """Ask the tracker who fetches; returns a relay source URL, or None for the origin."""
        answer = self.deps.leases.lease(self.digest, self.cfg.advertise_url, self.cfg.swarm.lease_ttl)
        self.role = answer.get("role")
        if self.role == "published":
            raise Published()
        if self.role == "relay":
            url = answer["source"]["url"]
            if self.deps.relays.is_bad(url):
                log.warning("relay %s sent bytes that failed verification before: %s from the origin",
                            url, self.digest)
                return None
            return url
        return None

    def _copy(self, relay_url) -> None:
        """Fill the writer from ``relay_url`` (or the origin), failing over to the origin mid-blob."""
        attempts = 0
        while True:
            try:
                if relay_url:
                    self.kind = "relay"
                    try:
                        expected = self._origin_size()
                    except RegistryError as exc:   # nothing to check the relay against: the origin decides
                        log.warning("origin cannot confirm the size of %s (%s): not relaying", self.digest, exc)
                        relay_url = None
                        continue
                    self.relays_used.add(relay_url)
                    size, chunks = self.deps.relays.open(relay_url, self.digest, self.written)
                    if size != expected:   # a lie that would make the store evict for nothing: blame it
                        chunks.close()
                        self.deps.relays.mark_bad([relay_url])
                        raise UpstreamError(f"relay claims {size} bytes, the origin {expected}")
                else:
                    self.kind = "origin"
                    res = self.deps.origin.open(self.req.at(ByteRange(self.written, None) if self.written else None))
                    size, chunks = res.size, res.body
                self._start_writer(size)
                last_renew = time.monotonic()
                for chunk in chunks:
                    self.writer.write(chunk)
                    self.deps.metrics.fetched(self.kind, len(chunk))
                    with self.cond:
                        self.written += len(chunk)
                        self.cond.notify_all()
                    if self.role == "holder" and time.monotonic() - last_renew > self.cfg.swarm.lease_ttl / 3:
                        last_renew = time.monotonic()
                        self._renew()
                if self.written != self.size:
                    raise UpstreamError(f"source closed {self.size - self.written} bytes early")
                self.writer.verify()
                return
            except DigestMismatch:
                self.deps.metrics.mismatch("relay" if self.relays_used else "origin")
                if self.relays_used:  # one of them sent wrong bytes: never ask them again
                    log.error("%s: bytes from relay(s) %s do not match; not using them again",
                              self.digest, sorted(self.relays_used))
                    self.deps.relays.mark_bad(self.relays_used)
                raise
            except (StoreFull, RegistryError):
                raise
            except Exception as exc:
                attempts += 1
                if relay_url:
                    self.deps.metrics.fallback("relay")
                    log.warning("relay %s failed for %s at %d: %s; continuing from the origin",
                                relay_url, self.digest, self.written, exc)
                    relay_url = None
                    continue
                if attempts >= 3:
                    raise
                log.warning("origin fetch of %s failed at %d (%s); retrying", self.digest, self.written, exc)
                time.sleep(0.5 * attempts)

    def _origin_size(self) -> int:
        """The blob's size as the origin says it (a HEAD, no blob bytes), to check a relay's claim."""
        if self.origin_size is None:
            res = self.deps.origin.open(self.req.at(None, head=True))
            res.close()
            self.origin_size = res.size
        return self.origin_size

    def _start_writer(self, size: int) -> None:
        if self.writer is None:
            self.writer = self.deps.new_writer(self.digest, size)
            with self.cond:
                self.size = size
                self.path = self.writer.path
                self.cond.notify_all()
        elif size != self.size:
            raise UpstreamError(f"source says {size} bytes, earlier {self.size}")

    def _release_lease(self) -> None:
        try:
            self.deps.leases.release_lease(self.digest)
        except TrackerUnavailable as exc:  # it lapses by its TTL
            log.warning("could not release the lease on %s: %s", self.digest, exc)

    def _renew(self) -> None:
        try:
            self.deps.leases.renew_lease(self.digest, self.cfg.swarm.lease_ttl)
        except TrackerUnavailable as exc:  # keep fetching: the bytes are still worth having
            log.warning("lease renewal for %s failed: %s", self.digest, exc)

    def _publish(self) -> None:
        if self.size < self.cfg.swarm.tiny_blob_bytes or self.tracker_down:
            self.writer.commit(None)
            # No torrent will tell late bridges where the blob is: keep the lease (it lapses
            # by its TTL) so they relay from our store instead of fetching from the origin.
            self.keep_lease = True
            return
        try:
            self.deps.publish(self.writer)
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
        timeout = self.cfg.follow_timeout
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
                return self.deps.open_stored(self.digest)
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
