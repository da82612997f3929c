"""Swarm downloads into the store, exposed as in-order byte streams.

One :class:`Download` per digest is shared by every reader of that layer.
A verified piece is read from the partial file when the session's disk back-end
writes and hashes there (posix: ``verified_pieces_in_file``); with a back-end that
caches writes (pread, mmap) the file right after ``piece_finished`` can hold stale
bytes, so the piece comes out of libtorrent with ``read_piece`` (-> a PIECE_READ
event).  A hash cursor feeds each piece, in order, to the whole-blob
sha256, so the blob is verified without a second read (the cursor and the
readers share the last few pieces read); only then does the
last piece reach any reader, so a poisoned torrent ends every stream with
DigestMismatch instead of a clean end.

The alert thread only does piece bookkeeping (bitmaps, reads, handing pieces
to readers, and writing them to the sockets of whole readers that armed a sink:
format/directsend.py, non-blocking); the verdict, the move into the store, the index
writes and the teardown after a failure run on the download's own worker
thread.  Readers (node/readers.py) use the public reader methods only.

Piece selection: rarest-first, so a fleet starting together spreads different
pieces and trades them instead of all asking the seeder for the same window.
A reader that has waited ``deadline_after`` for its next piece puts deadlines
on it and the next ones (libtorrent's time-critical pieces): a stall guard, not
the order.  For its first moment (``first_piece_gate``) a new download wants
piece 0 and the last piece only: its first requests at the seeder are the ones
the client waits for; after that piece 0 keeps the top priority until it came.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import os
import threading
import time

from layerswarm.bridge.config import StreamSection
from layerswarm.bridge.format import layertorrent as tf
from layerswarm.bridge.format.digest import DigestVerifier
from layerswarm.bridge.format.errors import DigestMismatch, StoreFull, SwarmError
from layerswarm.bridge.node.readers import LayerStream
from layerswarm.bridge.node.worker import Worker
from layerswarm.bridge.node.torrent import alerts as ev

log = logging.getLogger(__name__)


# A download's last pieces and the move into the store each take an alert hop: from this many pieces before
# its end the session pauses no more between alert batches (SessionSection.alert_batch), as before its first.
PROMPT_TAIL = 8


def stripe_priorities(n: int, rank: int | None, levels: int) -> list:
    """Piece priorities of a download of ``n`` pieces: piece 0 (the client's first byte) first, then
    rarest-first with this host's stripe preferred (StreamSection.stripe_levels).  Piece p gets 3 plus
    one for each l in 1..levels with p = rank (mod 2^l); libtorrent orders pieces by availability x
    (8 - priority), so a preferred piece goes first unless it is a few times more common."""
    if rank is None or levels == 0:
        return [7] + [4] * (n - 1)
    return [7] + [3 + sum(1 for lv in range(1, levels + 1) if (p - rank) % (1 << lv) == 0) for p in range(1, n)]


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
        self._on_done = on_done          # (download, verified): it ended; a verified one before its readers know
        self._cond = threading.Condition()
        self._have = bytearray(self.n)
        self._have_count = 0
        self._reads: dict = {}           # piece -> when its read began (from the file or read_piece)
        self._wants: dict = {}           # piece -> set of reader tokens waiting for it
        self._bufs: dict = {}            # reader token -> {piece: bytes} read for that reader
        # piece -> bytes: the last pieces read, oldest first, for whichever of the hash cursor and the
        # readers asks next (a reader just behind the cursor, the cursor just behind a reader): one
        # read_piece per piece instead of ~1.5.  Bounded like the readers' own buffers.
        self._kept: dict = {}
        self._keep = 2 * (self.cfg.prefetch + 1)
        self.reads = 0                   # piece reads, file or read_piece (one a piece when cursor and readers share)
        self._whole: set = set()         # tokens of readers from byte 0: given only pieces already hashed
        self._sinks: dict = {}           # token -> SocketSink of a whole reader the cursor writes for
        self._tokens = itertools.count()
        self._hash_next = 0
        self._sha = hashlib.sha256()
        self._hashed = [self._sha.copy()]   # [k]: the whole-blob hash after k pieces (sent_prefix; ~250 B each)
        self._last_progress = time.monotonic()
        self._last_done = -1
        self._last_poll = 0.0
        self.error: Exception | None = None
        self.verified = False
        self.complete = threading.Event()   # verified and in the store, or failed
        self._ending = False                # a failure is being torn down (on the worker)
        self._reserved = 0
        self._worker = Worker(f"dl-{torrent.digest.short()}")
        self.torrent = None
        self._gated = False              # only piece 0 wanted so far (StreamSection.first_piece_gate)
        self.rank: int | None = None     # arrival among the swarm's leechers: the stripe preferred
        self._t0 = time.monotonic()
        self._marks: dict = {}           # first tracker reply / piece / read, seconds after start (TTFB parts)
        self._peer_down: dict = {}       # "ip:port" -> payload bytes received (sampled while downloading)
        self._peer_ssl: set = set()      # "ip:port" of peers seen connected over TLS (SSL torrents)
        # Verified pieces straight from the partial file (see the module's docstring); the descriptor
        # follows the file through the move into the store, and is closed once the download ended.
        self._from_file = session.verified_pieces_in_file
        self._file_lock = threading.Lock()
        self._fd: int | None = None
        self._file_closed = False

    def _mark(self, what: str) -> None:
        if what not in self._marks:
            self._marks[what] = round(time.monotonic() - self._t0, 3)

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> "Download":
        self._t0 = time.monotonic()
        self.store.reserve(self.lt.size)
        self._reserved = self.lt.size
        self.session.dispatcher.subscribe(self.name, self._on_event)
        self.session.prompt(self.name, True)   # until the first piece is out (_on_piece)
        try:
            # Without seed_mode an existing partial file is rechecked: resumes safely.
            # not for a partial download resumed (piece 0 may be there already)
            gate = (self.cfg.first_piece_gate > 0 and self.n > 2
                    and not self.store.download_path(self.digest).exists())
            self.torrent = self.session.add(self.lt.metainfo, self.store.downloads_dir, trackers=self._trackers,
                                            first_piece_only=gate)
            self._gated = gate
        except Exception as exc:
            self._stop_listening()
            self.store.release(self._reserved)
            raise SwarmError(f"cannot add torrent for {self.digest}: {exc}") from None
        return self

    def _stop_listening(self) -> None:
        """This download's alerts go nowhere any more, and never hold back the alert thread's pauses."""
        self.session.dispatcher.unsubscribe(self.name, self._on_event)
        self.session.prompt(self.name, False)

    def abort(self, reason: str) -> None:
        """Wake every reader with SwarmError(reason) (the host is shutting down)."""
        with self._cond:
            self.error = self.error or SwarmError(reason)
            self._cond.notify_all()

    def _fail(self, exc: Exception, delete: bool) -> None:
        with self._cond:
            if self.complete.is_set() or self._ending:
                return
            self._ending = True
        self._worker.submit(self._teardown, exc, delete)

    def _teardown(self, exc: Exception, delete: bool) -> None:
        """On the worker: stop the torrent, give back the space, then tell the readers and the owner."""
        self._stop_listening()
        self._close_file()
        self.session.remove(self.name, delete_files=delete)
        self.store.release(self._reserved)
        self._reserved = 0
        with self._cond:
            self.error = exc
            self.complete.set()
            self._cond.notify_all()
        if self._on_done:
            self._on_done(self, False)
        if delete:
            self._drop_partial()
        self._worker.stop()

    def _drop_partial(self) -> None:
        self.session.wait_removed(self.name)
        try:
            self.store.download_path(self.digest).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove partial %s: %s", self.name, exc)

    # -- alert thread: piece bookkeeping only; slow steps go to the worker ---
    def _on_event(self, e) -> None:
        k = e.kind
        if k == ev.PIECE_FINISHED:
            p = e.data["piece"]
            self._mark("piece")
            if p == 0:
                self._mark("piece0")
            self._open_gate()
            with self._cond:
                if 0 <= p < self.n and not self._have[p]:
                    self._have[p] = 1
                    self._have_count += 1
                    if self._have_count == max(1, self.n - PROMPT_TAIL):   # the end is near: no pauses
                        self.session.prompt(self.name, True)
                self._last_progress = time.monotonic()
                ask = (p in self._wants) or p == self._hash_next
                # no notify: a reader wakes when its piece has been read (or on its own timeout)
            if ask:
                self._ask(p)
        elif k == ev.PIECE_READ:
            nxt = self._on_piece(e.data["piece"], e.data.get("buffer"), e.data.get("error"))
            if nxt is not None:
                self._ask(nxt)
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
            self._worker.submit(self._adopt)
        elif k == ev.MOVE_FAILED:
            self._fail(SwarmError(f"could not move {self.digest} into the store: {e.data.get('message')}"),
                       delete=True)
        elif k == ev.TRACKER_REPLY:
            self._mark("tracker")
            if not self._gated and self.rank is None and self.cfg.stripe_levels:
                # no rank yet: not gated (resumed, gate off), or the gate opened before any reply
                self._want_every_piece()
        elif k == ev.FINISHED:
            if not self._gated:
                self._mark("finished")
            self._open_gate()   # the gate's pieces both arrived before it opened
        elif k == ev.HASH_FAILED:
            log.info("%s: piece %s failed its hash check (a bad peer); refetching", self.name, e.data["piece"])

    def _ask(self, p: int | None) -> None:
        """Read verified piece ``p`` for whoever waits for it, and on from there the pieces the hash
        cursor can take next: from the file at once, or through libtorrent (a PIECE_READ to come)."""
        while p is not None:
            with self._cond:
                if p in self._reads or self.complete.is_set():   # ended: readers read the store's file
                    return
                # (never a kept piece: _want hands those out, and the cursor hashes them as it passes)
                self._reads[p] = time.monotonic()
                self.reads += 1
            buf = self._read_file(p) if self._from_file else None
            if buf is not None:
                p = self._on_piece(p, buf, None)
                continue
            try:
                self.torrent.read_piece(p)
            except Exception:
                with self._cond:
                    self._reads.pop(p, None)
            return

    def _read_file(self, p: int) -> bytes | None:
        """Verified piece ``p`` from the partial file; None once the download ended or the file cannot be
        read (the caller asks libtorrent instead)."""
        start, end = self.lt.piece_range(p)
        with self._file_lock:
            if self._file_closed:
                return None
            try:
                if self._fd is None:
                    self._fd = os.open(self.store.download_path(self.digest), os.O_RDONLY | os.O_CLOEXEC)
                buf = os.pread(self._fd, end - start, start)
            except OSError:
                return None
        return buf if len(buf) == end - start else None

    def _close_file(self) -> None:
        with self._file_lock:
            self._file_closed = True
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _on_piece(self, p: int, buf, err) -> int | None:
        """Piece ``p``'s bytes: to the readers waiting for it and through the hash cursor.  Returns the
        next piece the cursor can read (verified, not read yet), for the caller to ask for."""
        finalize = False
        nxt = None
        with self._cond:
            self._reads.pop(p, None)
            if buf is None:
                # Not readable (yet): let the waiters' timeout ask again.
                self._cond.notify_all()
                return None
            self._mark("read")
            self._kept.pop(p, None)
            self._kept[p] = buf
            while len(self._kept) > self._keep:
                del self._kept[next(iter(self._kept))]
            given = False
            for token in self._wants.pop(p, ()):
                if token in self._bufs:
                    self._bufs[token][p] = buf
                    # a reader from byte 0 gets it once the cursor has passed it (then woken below)
                    given = given or token not in self._whole or p < self._hash_next
            while p == self._hash_next:
                self._sha.update(buf)
                self._hash_next += 1
                if p == 0 and self._have_count < self.n - PROMPT_TAIL:   # the first byte is out
                    self.session.prompt(self.name, False)
                self._hashed.append(self._sha.copy())
                if self._sinks and self._send(p, buf):
                    given = True
                # a piece read for a reader before the cursor got to it (reads complete out of order)
                given = given or any(p in b for b in self._bufs.values())
                if self._hash_next == self.n:
                    finalize = True
                    break
                p = self._hash_next
                buf = self._kept.get(p)   # read for a reader ahead of the cursor: hash that copy
                if buf is None:
                    if self._have[p]:
                        nxt = p
                    break
        if given:   # the hash cursor's own reads wake nobody: every reader thread woken costs CPU
            self.session.dispatcher.after_batch(self._wake_readers)
        if finalize:
            self._worker.submit(self._finalize)
        return nxt

    def _send(self, p: int, buf: bytes) -> bool:
        """(Under the lock, hashed piece ``p``.) Write it to the sockets of the readers whose sink waits for
        it; True if one of them must wake: its socket did not take it all, or its last piece is next."""
        wake = False
        for sink in self._sinks.values():
            if sink.armed and sink.next == p:
                if not sink.push(buf) or sink.next == self.n - 1:
                    sink.armed = False
                    wake = True
        return wake

    def _wake_readers(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _sample_peers(self) -> None:
        try:
            peers = self.torrent.peers()
        except Exception:
            return
        for p in peers:
            self._peer_down[p["ip"]] = max(self._peer_down.get(p["ip"], 0), p["down"])
            if p["ssl"]:
                self._peer_ssl.add(p["ip"])

    def _log_swarm(self) -> None:
        """Where the bytes came from (one INFO line per layer): tells a seeder-bound swarm from a trading one."""
        self._sample_peers()
        by_ip: dict = {}
        for addr, b in self._peer_down.items():
            ip = addr.rsplit(":", 1)[0]
            by_ip[ip] = by_ip.get(ip, 0) + b
        log.info("%s: done in %.2fs %s; stripe rank %s; %d reads for %d pieces; %d peers seen (%d over TLS); "
                 "payload MB by peer %s",
                 self.name, time.monotonic() - self._t0, self._marks, self.rank, self.reads, self.n,
                 len(self._peer_down),
                 len(self._peer_ssl),
                 {ip: round(b / 1e6, 1) for ip, b in sorted(by_ip.items())})

    def _finalize(self) -> None:
        """On the worker: the whole-blob check's verdict, then libtorrent moves the file into the store."""
        self._log_swarm()
        if self._sha.hexdigest() != self.digest.hex:
            log.error("%s: whole blob does not match its digest: torrent %s is poisoned", self.name, self.lt.info_hash)
            self._fail(DigestMismatch(f"{self.digest}: downloaded bytes do not match the digest"), delete=True)
            if self._on_mismatch:
                self._worker.submit(self._on_mismatch, self)
            return
        # Verified: let libtorrent move its own file (never rename under a live torrent).
        try:
            self.torrent.move_storage(self.store.layers_dir)
        except Exception as exc:
            self._fail(SwarmError(f"could not move {self.digest}: {exc}"), delete=True)

    def _adopt(self) -> None:
        """On the worker: record the moved file in the store (index and torrent written to disk)."""
        with self._cond:
            if self.complete.is_set() or self._ending:
                return
        try:
            self.store.save_torrent(self.digest, self.lt.metainfo)
            self.store.adopt(self.digest, self.lt.size, reserved=self._reserved)
        except Exception as exc:
            self._fail(SwarmError(f"could not store {self.digest}: {exc}"), delete=True)
            return
        self._reserved = 0
        if self._on_done:   # the host lists the layer as seeding before any reader gets its last byte
            self._on_done(self, True)
        with self._cond:
            self.verified = True
            self.complete.set()
            self._cond.notify_all()
        self._close_file()   # readers of a verified blob read the store's file (node/readers.py)
        self._stop_listening()
        log.info("%s downloaded, verified, seeding from the store", self.name)
        self._worker.stop()

    # -- reader side (LayerStream) ----------------------------------------
    @property
    def readers(self) -> int:
        with self._cond:
            return len(self._bufs)

    def add_reader(self, from_start: bool = False) -> int:
        """A token for a new reader; pieces it requests are kept for it until it takes them.  A reader
        ``from_start`` (a whole answer) is given a piece only once the hash cursor has passed it, so the
        hash of what it gave out can always be told (prefix_state) even if the download fails next."""
        with self._cond:
            token = next(self._tokens)
            self._bufs[token] = {}
            if from_start:
                self._whole.add(token)
            return token

    def remove_reader(self, token: int) -> None:
        with self._cond:
            self._bufs.pop(token, None)
            self._sinks.pop(token, None)
            self._whole.discard(token)
            self._drop_wants(token)

    def _drop_wants(self, token: int) -> None:
        """(Under the lock.) The reader ``token`` waits for no piece any more."""
        for p in list(self._wants):
            self._wants[p].discard(token)
            if not self._wants[p]:
                del self._wants[p]

    def request(self, token: int, first: int) -> None:
        """The reader needs piece ``first`` now and the next ``prefetch`` soon: read them as they verify."""
        for p in range(first, min(self.n, first + 1 + self.cfg.prefetch)):
            self._want(token, p)

    def hurry(self, first: int) -> None:
        """A reader has waited too long for piece ``first``: deadlines on it and the window after it."""
        self._set_window(first)

    def _ready(self, token: int, p: int, last: bool) -> bool:
        """Piece ``p`` may go to the reader now (under the lock): read for it, the last one only once the
        blob verified, and for a reader from byte 0 only once the hash cursor has passed it."""
        return (p in self._bufs.get(token, ()) and (not last or self.verified)
                and (p < self._hash_next or token not in self._whole))

    def take(self, token: int, p: int, last: bool, wait: float = 0.5) -> bytes | None:
        """Piece ``p`` for the reader (see _ready), else None after waiting up to ``wait`` seconds.
        Raises the download's error."""
        with self._cond:
            if self.error is not None:
                raise self.error
            if self._ready(token, p, last):
                return self._bufs[token].pop(p)
            if not self.verified:
                self._cond.wait(wait)
            return None

    def take_run(self, token: int, first: int) -> list:
        """The pieces from ``first`` on that are ready for the reader, in order, without waiting: sent
        with the piece before them, a run of pieces costs the reader and the listener one wake-up and
        one write instead of one per piece."""
        out = []
        with self._cond:
            p = first
            while self._ready(token, p, last=p == self.n - 1):
                out.append(self._bufs[token].pop(p))
                p += 1
        return out

    def arm(self, token: int, sink, p: int) -> bool:
        """Let the hash cursor write pieces ``p``, ``p + 1``, ... to a whole reader's socket as it hashes
        them (format/directsend.py), the last one excepted; False (nothing armed) unless the cursor is at
        ``p``: pieces it passed already go through the reader's own thread."""
        with self._cond:
            if (self.error is not None or token not in self._whole or p != self._hash_next
                    or p >= self.n - 1 or self.complete.is_set()):
                return False
            # what was asked or read for the reader from p on is the cursor's to write now
            self._drop_wants(token)
            self._bufs[token].clear()
            sink.arm(p)
            self._sinks[token] = sink
            return True

    def wait_sink(self, token: int, wait: float) -> int | None:
        """The piece the reader's armed sink waits for, after waiting up to ``wait`` seconds for it to be
        disarmed; None once it is.  Raises the download's error."""
        with self._cond:
            sink = self._sinks.get(token)
            if self.error is None and sink is not None and sink.armed:
                self._cond.wait(wait)
            if self.error is not None:
                raise self.error
            return sink.next if sink is not None and sink.armed else None

    def disarm(self, token: int) -> tuple:
        """(bytes the sink wrote since it was armed, the tail of a piece it could not write or None)."""
        with self._cond:
            sink = self._sinks.pop(token, None)
            if sink is None:
                return 0, None
            sink.armed = False
            return sink.sent, sink.rest

    def nudge(self, p: int) -> None:
        """The hash cursor waits for verified piece ``p`` longer than a read takes (a read_piece answer
        lost): read it again."""
        with self._cond:
            if p != self._hash_next or not self._have[p]:
                return
            self._reads.pop(p, None)
        self._ask(p)

    def prefix_state(self, nbytes: int, wait: float = 5.0) -> DigestVerifier | None:
        """The whole-blob hash after the blob's first ``nbytes`` (a piece boundary, or the size), once the
        hash cursor got there (waiting up to ``wait`` seconds for it); None if it does not."""
        plen = self.lt.piece_length
        if not 0 <= nbytes <= self.lt.size or (nbytes % plen and nbytes != self.lt.size):
            return None
        k = -(-nbytes // plen)
        give_up = time.monotonic() + wait
        while True:
            with self._cond:
                if len(self._hashed) > k:
                    return DigestVerifier(self.digest, self._hashed[k], nbytes)
                nxt = self._hash_next if self._have[self._hash_next] else None
            if time.monotonic() >= give_up:
                return None
            if nxt is not None:
                self._ask(nxt)   # no-op while its read is on the way
            time.sleep(0.05)

    def has_piece(self, p: int) -> bool:
        with self._cond:
            return bool(self._have[p]) or self.verified

    def ask_again(self, token: int, p: int) -> None:
        """A read_piece answer got lost (dropped alert, raced the move): read the piece again."""
        with self._cond:
            if p in self._bufs.get(token, {}):
                return
            self._reads.pop(p, None)
        self._want(token, p)

    def _want(self, token: int, p: int) -> None:
        with self._cond:
            bufs = self._bufs.get(token)
            if bufs is None or p in bufs:
                return
            if p in self._kept:     # the cursor (or another reader) read it a moment ago
                bufs[p] = self._kept[p]
                return
            self._wants.setdefault(p, set()).add(token)
            have = self._have[p] or self.verified
        if have:
            self._ask(p)

    def _set_window(self, first: int) -> None:
        if self.verified or self.torrent is None:
            return
        if self.cfg.window_bytes <= 0:
            return                      # no deadlines: rarest-first only
        self._mark("window")
        count = max(2, -(-self.cfg.window_bytes // self.lt.piece_length))
        k = 0
        try:
            for p in range(first, min(self.n, first + count)):
                if not self._have[p]:
                    self.torrent.set_piece_deadline(p, self.cfg.deadline_ms + k * self.cfg.deadline_step_ms)
                    k += 1
        except Exception:
            pass

    def _open_gate(self) -> None:
        """Every piece wanted (rarest-first, this host's stripe first): a piece arrived, or the gate's
        time is up.  The first announce is usually answered by then (0.5 s; on a LAN in milliseconds);
        if not, the stripe comes with the first tracker reply."""
        with self._cond:
            if not self._gated:
                return
            self._gated = False
        self._want_every_piece()

    def _want_every_piece(self) -> None:
        """Every piece wanted: piece 0 first, this host's stripe (by its rank, once the tracker
        answered an announce) before the rest."""
        try:
            leechers = self.torrent.leechers_announced()
            self.rank = leechers - 1 if leechers else None
            self.torrent.prioritize(stripe_priorities(self.n, self.rank, self.cfg.stripe_levels))
        except Exception:   # the torrent is gone (removed, failed): nothing to prioritize
            pass

    def poll(self) -> None:
        """Refresh progress from the session (bytes inside unfinished pieces count too)."""
        now = time.monotonic()
        if self._gated and now - self._t0 > self.cfg.first_piece_gate:
            self._open_gate()
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

    def stream(self, offset: int = 0) -> LayerStream:
        return LayerStream(self, offset)
