"""In-order byte readers over a layer: from a swarm :class:`~.stream.Download`, or from the store.

Both have the same interface: iterate bytes from ``offset``; ``yielded``
counts bytes given out; ``first_byte_at`` is when the first came.  A swarm
reader from byte 0 given the client's socket may also yield ``Sent`` markers:
bytes its download wrote to that socket itself (format/directsend.py).
"""
from __future__ import annotations

import time

from layerswarm.bridge.format.directsend import Sent, SocketSink
from layerswarm.bridge.format.errors import SwarmError


class _Counted:
    """What both readers count: bytes given out and when the first one went."""

    yielded: int                    # set by each reader's __init__
    first_byte_at: float | None

    def _given(self, n: int) -> None:
        if self.first_byte_at is None:
            self.first_byte_at = time.monotonic()
        self.yielded += n


class LayerStream(_Counted):
    """An in-order byte iterator over a layer from ``offset``; ``yielded`` counts bytes given out.

    Buffering is bounded: at most ``prefetch + 1`` pieces per reader.  Raises
    SwarmError on a stall (the caller continues from ``offset + yielded`` at
    the origin), DigestMismatch if the whole blob turns out wrong.
    """

    def __init__(self, dl, offset: int = 0, socket=None):
        """``socket``: the request's SocketSlot (format/directsend.py), for a whole reader to let the
        download write pieces to the client itself once the listener offers the socket."""
        if not 0 <= offset <= dl.lt.size:
            raise ValueError(f"offset {offset} outside 0..{dl.lt.size}")
        self.dl = dl
        self.size = dl.lt.size
        self.offset = offset
        self.yielded = 0
        self.first_byte_at: float | None = None
        self._closed = False
        self._file = None
        self._slot = socket if offset == 0 else None
        self._sink: SocketSink | None = None
        self._token = dl.add_reader(from_start=offset == 0)

    def __iter__(self):
        dl, plen = self.dl, self.dl.lt.piece_length
        pos = self.offset
        try:
            while pos < self.size:
                p = pos // plen
                fd = self._slot.fd if self._slot is not None else None
                if fd is not None and pos == p * plen:
                    sent, rest, failure = self._direct(p, fd)
                    if sent:
                        pos += sent
                        self._given(sent)
                        yield Sent(sent)
                    if rest:
                        pos += len(rest)
                        self._given(len(rest))
                        yield rest
                    if failure is not None:
                        raise failure
                    if sent or rest:
                        continue
                dl.request(self._token, p)
                buf = self._wait(p, last=(p == dl.n - 1))
                chunk = buf[pos - p * plen:]
                run = dl.take_run(self._token, p + 1)   # read for us while we waited: out with it
                if run:
                    chunk = b"".join([chunk, *run])
                pos += len(chunk)
                self._given(len(chunk))
                yield chunk
        finally:
            self.close()

    def _wait(self, p: int, last: bool) -> bytes:
        dl, cfg = self.dl, self.dl.cfg
        asked = began = time.monotonic()
        hurried = False
        while True:
            hurried = self._hurry(p, began, hurried)
            # take() returns when this piece has been read; wake in time for the deadline step too
            buf = dl.take(self._token, p, last, self._wait_for(began, hurried))
            if buf is not None:
                return buf
            if dl.verified:
                # The blob is whole, checked and in the store: read it from there.
                return self._read_stored(p)
            have = self._check_stall(p, began)
            now = time.monotonic()
            if have and now - asked > cfg.piece_read_timeout:
                dl.ask_again(self._token, p)
                asked = now

    def _wait_for(self, began: float, hurried: bool) -> float:
        """Seconds to wait for a piece waited for since ``began``: up to 0.5, waking in time to hurry it."""
        hurry_in = began + self.dl.cfg.deadline_after - time.monotonic()
        return min(0.5, max(0.01, hurry_in)) if not hurried and hurry_in > 0 else 0.5

    def _hurry(self, p: int, began: float, hurried: bool) -> bool:
        """Deadlines on piece ``p`` and the window after it, once, when it has been waited for
        ``deadline_after`` and is still missing; whether that was done."""
        if not hurried and time.monotonic() - began >= self.dl.cfg.deadline_after and not self.dl.has_piece(p):
            self.dl.hurry(p)
            return True
        return hurried

    def _check_stall(self, p: int, began: float) -> bool:
        """SwarmError when the swarm made no progress for ``stall_timeout``, or piece ``p``, waited for since
        ``began``, has not come in that long; else whether it is verified here."""
        dl, cfg = self.dl, self.dl.cfg
        dl.poll()
        if dl.stalled_for() > cfg.stall_timeout:
            raise SwarmError(f"swarm stalled on {dl.digest}: no progress for {cfg.stall_timeout:.0f}s")
        have = dl.has_piece(p)
        if not have and time.monotonic() - began > cfg.stall_timeout:
            # Bytes keep arriving (a peer sending junk that fails the hash looks like
            # progress) but not this reader's piece: give the reader up to the origin.
            raise SwarmError(f"swarm stalled on {dl.digest}: piece {p} not received in "
                             f"{cfg.stall_timeout:.0f}s")
        return have

    def _direct(self, p: int, fd: int) -> tuple:
        """Let the download write from piece ``p`` on to the offered socket ``fd`` until the sink is
        disarmed; (bytes it wrote, the tail it left for this thread or None, the error that ended the wait
        or None).  Nothing armed (the cursor is not at ``p``) is (0, None, None): this thread takes it."""
        if self._sink is None:
            self._sink = SocketSink(fd)
        if not self.dl.arm(self._token, self._sink, p):
            return 0, None, None
        failure = None
        try:
            self._wait_direct(p)
        except Exception as exc:  # noqa: BLE001 - raised once the bytes written are counted
            failure = exc
        sent, rest = self.dl.disarm(self._token)
        return sent, rest, failure

    def _wait_direct(self, p: int) -> None:
        """While the sink is armed: the same stall guard as _wait, on the piece the sink waits for."""
        dl, cfg = self.dl, self.dl.cfg
        asked = began = time.monotonic()
        hurried = False
        while True:
            nxt = dl.wait_sink(self._token, self._wait_for(began, hurried))
            if nxt is None or self._slot.fd is None:   # disarmed, or the listener withdrew the socket
                return
            if nxt != p:   # pieces went out: the guard starts over on the next one
                p, hurried = nxt, False
                asked = began = time.monotonic()
                continue
            hurried = self._hurry(p, began, hurried)
            have = self._check_stall(p, began)
            now = time.monotonic()
            if have and now - asked > cfg.piece_read_timeout:
                dl.nudge(p)
                asked = now

    def sent_prefix(self, nbytes: int):
        """The sha256 (a DigestVerifier) of the blob's first ``nbytes``, which this reader gave out from
        offset 0, as the download's whole-blob check hashed them; None if it cannot tell.  A whole
        answer continued from the origin checks the assembled blob from there, instead of hashing
        every piece a second time."""
        if self.offset != 0 or nbytes > self.yielded:
            return None
        return self.dl.prefix_state(nbytes)

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
        self.dl.remove_reader(self._token)   # the cursor writes to its sink no more
        if self._sink is not None:
            self._sink.close()


class FileStream(_Counted):
    """The same reader interface over a blob already in the store."""

    def __init__(self, store, digest, offset: int = 0, chunk: int = 1 << 20):
        self.store = store
        self.digest = digest
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
                self._given(len(b))
                yield b
        finally:
            self.close()

    def sent_prefix(self, nbytes: int):
        """The sha256 (a DigestVerifier) of the first ``nbytes`` given out from offset 0, read back from
        the stored blob; None if it cannot tell."""
        if self.offset != 0 or nbytes > self.yielded:
            return None
        v = self.digest.hasher()
        try:
            with self.store.open(self.digest) as f:
                v.update_from(f, nbytes)
        except OSError:
            return None
        return v

    def close(self) -> None:
        self.f.close()
