"""Swarm downloads into the store, exposed as in-order byte streams.

One :class:`Download` per digest is shared by every reader of that layer.
Pieces come out of libtorrent with ``read_piece`` (-> a PIECE_READ event) once
they are verified; reading the file right after ``piece_finished`` returned
stale bytes.  A hash cursor feeds each piece, in order, to the whole-blob
sha256, so the blob is verified without a second read; only then does the
last piece reach any reader, so a poisoned torrent ends every stream with
DigestMismatch instead of a clean end.

Piece selection: each reader puts deadlines on the piece it waits for and the
next one (libtorrent's time-critical pieces); everything else stays
rarest-first, so a fleet starting together spreads different pieces and
trades them instead of all asking the seeder for the same window.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time

from layerswarm.bridge.config import StreamSection
from layerswarm.bridge.format import layertorrent as tf
from layerswarm.bridge.format.errors import DigestMismatch, StoreFull, SwarmError
from layerswarm.bridge.node.torrent import alerts as ev

log = logging.getLogger(__name__)


class Download:
    """A layer being fetched from the swarm into ``downloads/``, then moved into the store."""

    def __init__(self, session, store, torrent: tf.LayerTorrent, trackers=(), config: StreamSection | None = None,
                 on_mismatch=None, on_done=None):
        self.session = session
        self.store = store
        self.lt = torrent
        self.digest = torrent.digest
        self.name = str(torrent.digest)
        self.cfg = config or StreamSection()
        self.n = torrent.num_pieces
        self._trackers = tuple(trackers)
        self._on_mismatch = on_mismatch
        self._on_done = on_done
        self._cond = threading.Condition()
        self._have = bytearray(self.n)
        self._reads: dict = {}           # piece -> time read_piece was asked
        self._wants: dict = {}           # piece -> {reader id: reader}
        self._hash_next = 0
        self._sha = hashlib.sha256()
        self._last_progress = time.monotonic()
        self._last_done = -1
        self._last_poll = 0.0
        self.error: Exception | None = None
        self.verified = False
        self.complete = threading.Event()   # verified and in the store, or failed
        self.readers = 0
        self._reserved = 0
        self.torrent = None
        self._t0 = time.monotonic()
        self._marks: dict = {}           # first tracker reply / piece / read, seconds after start (TTFB parts)
        self._peer_down: dict = {}       # "ip:port" -> payload bytes received (sampled while downloading)

    def _mark(self, what: str) -> None:
        if what not in self._marks:
            self._marks[what] = round(time.monotonic() - self._t0, 3)

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> "Download":
        self._t0 = time.monotonic()
        self.store.reserve(self.lt.size)
        self._reserved = self.lt.size
        self.session.dispatcher.subscribe(self.name, self._on_event)
        try:
            # Without seed_mode an existing partial file is rechecked: resumes safely.
            self.torrent = self.session.add(self.lt.metainfo, self.store.downloads_dir, trackers=self._trackers)
        except Exception as exc:
            self.session.dispatcher.unsubscribe(self.name, self._on_event)
            self.store.release(self._reserved)
            raise SwarmError(f"cannot add torrent for {self.digest}: {exc}") from None
        return self

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop an unfinished download and drop its partial bytes."""
        with self._cond:
            if self.complete.is_set():
                return
        self._fail(SwarmError(f"download of {self.digest} {reason}"), delete=True)

    def _fail(self, exc: Exception, delete: bool) -> None:
        with self._cond:
            if self.complete.is_set():
                return
            self.error = exc
            self.complete.set()
            self._cond.notify_all()
        self.session.dispatcher.unsubscribe(self.name, self._on_event)
        self.session.remove(self.name, delete_files=delete)
        self.store.release(self._reserved)
        if delete:
            # Off the alert thread: wait for libtorrent to let go, then make sure no partial stays.
            threading.Thread(target=self._drop_partial, daemon=True).start()
        if self._on_done:
            self._on_done(self)

    def _drop_partial(self) -> None:
        self.session.wait_removed(self.name)
        try:
            self.store.download_path(self.digest).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove partial %s: %s", self.name, exc)

    # -- alert thread ------------------------------------------------------
    def _on_event(self, e) -> None:
        k = e.kind
        if k == ev.PIECE_FINISHED:
            p = e.data["piece"]
            self._mark("piece")
            with self._cond:
                if 0 <= p < self.n:
                    self._have[p] = 1
                self._last_progress = time.monotonic()
                ask = (p in self._wants) or p == self._hash_next
                self._cond.notify_all()
            if ask:
                self._ask(p)
        elif k == ev.PIECE_READ:
            self._on_piece(e.data["piece"], e.data.get("buffer"), e.data.get("error"))
        elif k == ev.DROPPED:
            with self._cond:
                pending = list(self._reads)
                self._reads.clear()
            for p in pending:
                self._ask(p)
        elif k in (ev.FILE_ERROR, ev.TORRENT_ERROR):
            if e.data.get("disk_full"):
                self._fail(StoreFull(f"disk full downloading {self.digest}"), delete=True)
            else:
                self._fail(SwarmError(f"download of {self.digest} failed: {e.data.get('message')}"), delete=True)
        elif k == ev.MOVED:
            self._adopt()
        elif k == ev.MOVE_FAILED:
            self._fail(SwarmError(f"could not move {self.digest} into the store: {e.data.get('message')}"),
                       delete=True)
        elif k == ev.TRACKER_REPLY:
            self._mark("tracker")
        elif k == ev.HASH_FAILED:
            log.info("%s: piece %s failed its hash check (a bad peer); refetching", self.name, e.data["piece"])

    def _ask(self, p: int) -> None:
        with self._cond:
            if p in self._reads or self.complete.is_set() and not self.verified:
                return
            self._reads[p] = time.monotonic()
        try:
            self.torrent.read_piece(p)
        except Exception:
            with self._cond:
                self._reads.pop(p, None)

    def _on_piece(self, p: int, buf, err) -> None:
        finalize = False
        nxt = None
        with self._cond:
            self._reads.pop(p, None)
            if buf is None:
                # Not readable (yet): let the waiters' timeout ask again.
                self._cond.notify_all()
                return
            self._mark("read")
            for r in list(self._wants.get(p, {}).values()):
                r._deliver(p, buf)
            self._wants.pop(p, None)
            if p == self._hash_next:
                self._sha.update(buf)
                self._hash_next += 1
                if self._hash_next == self.n:
                    finalize = True
                elif self._have[self._hash_next]:
                    nxt = self._hash_next
            self._cond.notify_all()
        if nxt is not None:
            self._ask(nxt)
        if finalize:
            self._finalize()

    def _sample_peers(self) -> None:
        try:
            peers = self.torrent.peers()
        except Exception:
            return
        for p in peers:
            self._peer_down[p["ip"]] = max(self._peer_down.get(p["ip"], 0), p["down"])

    def _log_swarm(self) -> None:
        """Where the bytes came from (one INFO line per layer): tells a seeder-bound swarm from a trading one."""
        self._sample_peers()
        by_ip: dict = {}
        for addr, b in self._peer_down.items():
            ip = addr.rsplit(":", 1)[0]
            by_ip[ip] = by_ip.get(ip, 0) + b
        log.info("%s: done in %.2fs %s; %d peers seen; payload MB by peer %s", self.name,
                 time.monotonic() - self._t0, self._marks, len(self._peer_down),
                 {ip: round(b / 1e6, 1) for ip, b in sorted(by_ip.items())})

    def _finalize(self) -> None:
        self._log_swarm()
        if self._sha.hexdigest() != self.digest.hex:
            log.error("%s: whole blob does not match its digest: torrent %s is poisoned", self.name, self.lt.info_hash)
            self._fail(DigestMismatch(f"{self.digest}: downloaded bytes do not match the digest"), delete=True)
            if self._on_mismatch:
                threading.Thread(target=self._on_mismatch, args=(self,), daemon=True).start()
            return
        # Verified: let libtorrent move its own file (never rename under a live torrent).
        try:
            self.torrent.move_storage(self.store.layers_dir)
        except Exception as exc:
            self._fail(SwarmError(f"could not move {self.digest}: {exc}"), delete=True)

    def _adopt(self) -> None:
        try:
            self.store.save_torrent(self.digest, self.lt.metainfo)
            self.store.adopt(self.digest, self.lt.size, reserved=self._reserved)
        except Exception as exc:
            self._fail(SwarmError(f"could not store {self.digest}: {exc}"), delete=True)
            return
        self._reserved = 0
        with self._cond:
            self.verified = True
            self.complete.set()
            self._cond.notify_all()
        self.session.dispatcher.unsubscribe(self.name, self._on_event)
        log.info("%s downloaded, verified, seeding from the store", self.name)
        if self._on_done:
            self._on_done(self)

    # -- reader side -------------------------------------------------------
    def _want(self, reader, p: int) -> None:
        with self._cond:
            self._wants.setdefault(p, {})[id(reader)] = reader
            have = self._have[p] or self.verified
        if have:
            self._ask(p)

    def _unwant(self, reader) -> None:
        with self._cond:
            for p in list(self._wants):
                self._wants[p].pop(id(reader), None)
                if not self._wants[p]:
                    del self._wants[p]

    def _set_window(self, first: int) -> None:
        if self.verified or self.torrent is None:
            return
        if self.cfg.window_bytes <= 0:
            return                      # no deadlines: rarest-first only
        count = max(2, -(-self.cfg.window_bytes // self.lt.piece_length))
        k = 0
        try:
            for p in range(first, min(self.n, first + count)):
                if not self._have[p]:
                    self.torrent.set_piece_deadline(p, self.cfg.deadline_ms + k * self.cfg.deadline_step_ms)
                    k += 1
        except Exception:
            pass

    def _poll(self) -> None:
        """Refresh progress from the session (bytes inside unfinished pieces count too)."""
        now = time.monotonic()
        if now - self._last_poll < 0.5 or self.torrent is None or self.complete.is_set():
            return
        self._last_poll = now
        try:
            done = self.torrent.status()["done"]
        except Exception:
            return
        self._sample_peers()
        with self._cond:
            if done != self._last_done:
                self._last_done = done
                self._last_progress = now

    def stalled_for(self) -> float:
        with self._cond:
            return 0.0 if self.complete.is_set() else time.monotonic() - self._last_progress

    def stream(self, offset: int = 0) -> "LayerStream":
        return LayerStream(self, offset)


class LayerStream:
    """An in-order byte iterator over a layer from ``offset``; ``yielded`` counts bytes given out.

    Buffering is bounded: at most ``prefetch + 1`` pieces per reader.  Raises
    SwarmError on a stall (the caller continues from ``offset + yielded`` at
    the origin), DigestMismatch if the whole blob turns out wrong.
    """

    def __init__(self, dl: Download, offset: int = 0):
        if not 0 <= offset <= dl.lt.size:
            raise ValueError(f"offset {offset} outside 0..{dl.lt.size}")
        self.dl = dl
        self.size = dl.lt.size
        self.offset = offset
        self.yielded = 0
        self.first_byte_at: float | None = None
        self._bufs: dict = {}
        self._closed = False
        self._file = None
        with dl._cond:
            dl.readers += 1

    def _deliver(self, p: int, buf: bytes) -> None:  # under dl._cond
        if not self._closed:
            self._bufs[p] = buf

    def __iter__(self):
        dl, plen = self.dl, self.dl.lt.piece_length
        pos = self.offset
        try:
            while pos < self.size:
                p = pos // plen
                dl._set_window(p)
                for q in range(p, min(dl.n, p + 1 + dl.cfg.prefetch)):
                    if q not in self._bufs:
                        dl._want(self, q)
                buf = self._wait(p, last=(p == dl.n - 1))
                start = pos - p * plen
                chunk = buf[start:]
                pos += len(chunk)
                with dl._cond:
                    self._bufs.pop(p, None)
                if self.first_byte_at is None:
                    self.first_byte_at = time.monotonic()
                self.yielded += len(chunk)
                yield chunk
        finally:
            self.close()

    def _wait(self, p: int, last: bool) -> bytes:
        dl = self.dl
        asked = began = time.monotonic()
        while True:
            with dl._cond:
                buf = self._bufs.get(p)
                if dl.error is not None:
                    raise dl.error
                if buf is not None and (not last or dl.verified):
                    return buf
                verified = dl.verified
                have = dl._have[p] or verified
                if not verified:
                    dl._cond.wait(0.5)
            if verified:
                # The blob is whole, checked and in the store: read it from there.
                return self._read_stored(p)
            dl._poll()
            now = time.monotonic()
            if dl.stalled_for() > dl.cfg.stall_timeout:
                raise SwarmError(f"swarm stalled on {dl.digest}: no progress for {dl.cfg.stall_timeout:.0f}s")
            if not have and now - began > dl.cfg.stall_timeout:
                # Bytes keep arriving (a peer sending junk that fails the hash looks like
                # progress) but not this reader's piece: give the reader up to the origin.
                raise SwarmError(f"swarm stalled on {dl.digest}: piece {p} not received in "
                                 f"{dl.cfg.stall_timeout:.0f}s")
            if have and self._bufs.get(p) is None and now - asked > dl.cfg.piece_read_timeout:
                # read_piece answer lost (dropped alert or raced the move): ask again.
                with dl._cond:
                    dl._reads.pop(p, None)
                dl._want(self, p)
                asked = now

    def _read_stored(self, p: int) -> bytes:
        if self._file is None:
            self._file = open(self.dl.store.layer_path(self.dl.digest), "rb")
        start, end = self.dl.lt.piece_range(p)
        self._file.seek(start)
        return self._file.read(end - start)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._file is not None:
            self._file.close()
        self.dl._unwant(self)
        with self.dl._cond:
            self._bufs.clear()
            self.dl.readers -= 1


class FileStream:
    """The same reader interface over a blob already in the store."""

    def __init__(self, store, digest, offset: int = 0, chunk: int = 1 << 20):
        self.f = store.open(digest)
        self.size = store.size_of(digest)
        self.offset = offset
        self.yielded = 0
        self.chunk = chunk
        self.first_byte_at = None

    def __iter__(self):
        try:
            self.f.seek(self.offset)
            while True:
                b = self.f.read(self.chunk)
                if not b:
                    return
                if self.first_byte_at is None:
                    self.first_byte_at = time.monotonic()
                self.yielded += len(b)
                yield b
        finally:
            self.close()

    def close(self) -> None:
        self.f.close()
