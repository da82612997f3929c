"""The host's content-addressed layer store.

Layout under the store root::

    layers/sha256:<hex>            verified blobs (the torrent name is the file
                                   name, so libtorrent's save_path is layers/)
    torrents/sha256:<hex>.torrent  the checked torrent each layer is seeded with
    downloads/sha256:<hex>         swarm downloads in progress (libtorrent save_path)
    incoming/sha256:<hex>.<n>      origin fetches / ingests being written and hashed
    index.json                     digest -> size, mtime_ns, last_used of verified blobs

A blob enters ``layers/`` only after its whole sha256 matched, by an atomic
rename of a file no torrent has open (incoming) or by libtorrent's own
``move_storage`` (downloads).  On restart only files whose size and mtime
match the index skip re-verification; anything else is rehashed or dropped.
"""
from __future__ import annotations

import errno
import hashlib
import itertools
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from layerswarm.bridge.format import layertorrent as tf
from layerswarm.bridge.format.digest import Digest
from layerswarm.bridge.format.errors import DigestMismatch, StoreFull

log = logging.getLogger(__name__)

INDEX_FLUSH_INTERVAL = 5.0
PARTIAL_MAX_AGE = 24 * 3600  # abandoned partial downloads older than this are dropped at startup


@dataclass
class Entry:
    size: int
    mtime_ns: int
    last_used: float


def _is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


class LayerStore:
    def __init__(self, root, cap_bytes: int | None = None):
        self.root = Path(root)
        self.cap = cap_bytes
        self.layers_dir = self.root / "layers"
        self.torrents_dir = self.root / "torrents"
        self.downloads_dir = self.root / "downloads"
        self.incoming_dir = self.root / "incoming"
        for d in (self.layers_dir, self.torrents_dir, self.downloads_dir, self.incoming_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._flush_lock = threading.Lock()
        self._gone = threading.Condition(self._lock)   # an eviction finished
        self._entries: dict = {}          # Digest -> Entry
        self._evicting: set = set()       # digests picked for eviction whose files are not deleted yet
        self._reserved = 0                # bytes promised to writers/downloads in flight
        self._seq = itertools.count()
        self._dirty_at = 0.0
        self.on_evict = None              # callable(Digest): stop seeding before the file goes (never under _lock)
        self.rehashed: list = []          # digests re-verified at load (not in the index)
        self._load()

    # -- paths -------------------------------------------------------------
    def layer_path(self, digest: Digest) -> Path:
        return self.layers_dir / str(digest)

    def torrent_path(self, digest: Digest) -> Path:
        return self.torrents_dir / f"{digest}.torrent"

    def download_path(self, digest: Digest) -> Path:
        return self.downloads_dir / str(digest)

    # -- index -------------------------------------------------------------
    def _load(self) -> None:
        try:
            raw = json.loads((self.root / "index.json").read_text())
        except (OSError, ValueError):
            raw = {}
        for name in os.listdir(self.incoming_dir):  # never trusted: a crash mid-write
            _unlink(self.incoming_dir / name)
        now = time.time()
        for name in os.listdir(self.downloads_dir):
            p = self.downloads_dir / name
            try:
                if now - p.stat().st_mtime > PARTIAL_MAX_AGE:
                    _unlink(p)
            except OSError:
                pass
        for name in os.listdir(self.layers_dir):
            p = self.layers_dir / name
            try:
                d = Digest.parse(name)
                st = p.stat()
            except (ValueError, OSError):
                _unlink(p)
                continue
            rec = raw.get(name)
            if rec and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns:
                self._entries[d] = Entry(st.st_size, st.st_mtime_ns, float(rec.get("last_used", now)))
                continue
            # Bytes we never recorded as verified (or that changed since): check them now.
            if _sha256_file(p) == d.hex:
                self._entries[d] = Entry(st.st_size, st.st_mtime_ns, now)
                self.rehashed.append(d)
            else:
                log.warning("dropping %s: bytes do not match its digest", name)
                _unlink(p)
                _unlink(self.torrent_path(d))
        self._flush(force=True)

    def _flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._dirty_at < INDEX_FLUSH_INTERVAL:
            return
        self._dirty_at = now
        # One writer at a time, each with the entries as they are when its turn comes: concurrent
        # commits shared one temporary file (one rename failed) and an older copy could land last.
        with self._flush_lock:
            with self._lock:
                data = {str(d): {"size": e.size, "mtime_ns": e.mtime_ns, "last_used": e.last_used}
                        for d, e in self._entries.items()}
            tmp = self.root / f"index.json.{os.getpid()}.tmp"
            try:
                tmp.write_text(json.dumps(data, sort_keys=True))
                os.replace(tmp, self.root / "index.json")
            except OSError as exc:
                _unlink(tmp)
                log.warning("could not write store index: %s", exc)

    def flush(self) -> None:
        self._flush(force=True)

    # -- queries -----------------------------------------------------------
    def path_if_present(self, digest: Digest) -> Path | None:
        with self._lock:
            return self.layer_path(digest) if digest in self._entries else None

    def __contains__(self, digest: Digest) -> bool:
        with self._lock:
            return digest in self._entries

    def size_of(self, digest: Digest) -> int | None:
        with self._lock:
            e = self._entries.get(digest)
            return e.size if e else None

    def digests(self) -> list:
        with self._lock:
            return sorted(self._entries, key=lambda d: self._entries[d].last_used)

    def used_bytes(self) -> int:
        with self._lock:
            return sum(e.size for e in self._entries.values())

    def open(self, digest: Digest):
        """Open a verified blob for reading (sendfile-able); touches it for LRU."""
        with self._lock:
            if digest not in self._entries:
                raise FileNotFoundError(str(digest))
            self.touch(digest)
            return open(self.layer_path(digest), "rb")

    def touch(self, digest: Digest) -> None:
        with self._lock:
            e = self._entries.get(digest)
            if e:
                e.last_used = time.time()
        self._flush()

    def saved_torrent(self, digest: Digest) -> bytes | None:
        try:
            return self.torrent_path(digest).read_bytes()
        except OSError:
            return None

    def save_torrent(self, digest: Digest, metainfo: bytes) -> None:
        p = self.torrent_path(digest)
        tmp = p.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(metainfo)
        os.replace(tmp, p)

    # -- space -------------------------------------------------------------
    def reserve(self, nbytes: int) -> None:
        """Promise ``nbytes`` to a writer/download, evicting least-recently-used layers.

        Victims are picked and dropped from the index under the lock (their
        space counts for this reservation only); seeding them stops and their
        files go after the lock is released.  It returns once no eviction is
        pending: the space a reservation counts on is free on disk before its
        writer writes (concurrent writers went past the cap on disk otherwise).
        """
        with self._lock:
            victims = []
            if self.cap is not None:
                if nbytes > self.cap:
                    raise StoreFull(f"a {nbytes}-byte layer does not fit a {self.cap}-byte store")
                need = self.used_bytes() + self._reserved + nbytes - self.cap
                for d in self.digests():
                    if need <= 0:
                        break
                    victims.append(d)
                    need -= self._entries[d].size
                if need > 0:
                    raise StoreFull(f"store cap {self.cap} bytes reached (the rest is promised to fetches)")
                for d in victims:
                    del self._entries[d]
                    self._evicting.add(d)
            self._reserved += nbytes
        for d in victims:
            self._drop(d)
        if victims:
            self._flush(force=True)
        with self._lock:
            while self._evicting:
                self._gone.wait()

    def release(self, nbytes: int) -> None:
        with self._lock:
            self._reserved = max(0, self._reserved - nbytes)

    def _drop(self, digest: Digest) -> None:
        """Outside the lock: stop seeding (may wait for libtorrent), then delete the files."""
        delete = True
        try:
            if self.on_evict is not None:
                self.on_evict(digest)
        except Exception as exc:  # a torrent may still hold the file: leave it (rehashed at restart)
            log.error("could not stop seeding %s (%s): its file stays", digest, exc)
            delete = False
        with self._lock:
            if delete:
                _unlink(self.layer_path(digest))
                _unlink(self.torrent_path(digest))
            self._evicting.discard(digest)
            self._gone.notify_all()
        log.info("evicted %s", digest)

    def _wait_evicted(self, digest: Digest) -> None:
        """Under the lock: a blob arriving again waits until its old files are gone."""
        while digest in self._evicting:
            self._gone.wait()

    # -- adding ------------------------------------------------------------
    def adopt(self, digest: Digest, size: int, reserved: int = 0) -> Path:
        """Record a blob already in ``layers/`` (moved there by libtorrent) as verified."""
        p = self.layer_path(digest)
        with self._lock:
            self._wait_evicted(digest)
            st = p.stat()
            if st.st_size != size:
                raise DigestMismatch(f"{digest}: {st.st_size} bytes on disk, expected {size}")
            self._entries[digest] = Entry(size, st.st_mtime_ns, time.time())
            self._reserved = max(0, self._reserved - reserved)
        self._flush(force=True)
        return p

    def writer(self, digest: Digest | None, size: int) -> "LayerWriter":
        """A writer for bytes from the origin (or an ingest): hash while writing, then commit."""
        self.reserve(size)
        return LayerWriter(self, digest, size, self.incoming_dir / f"{digest or 'unknown'}.{os.getpid()}.{next(self._seq)}")

    def commit_incoming(self, digest: Digest, path: Path, size: int, metainfo: bytes | None) -> Path:
        """Move a verified ``incoming/`` file into the store (atomic rename), record it, and free
        its reservation; a copy stored meanwhile wins and ``path`` is dropped."""
        dest = self.layer_path(digest)
        with self._lock:
            self._wait_evicted(digest)
            if metainfo is not None:
                self.save_torrent(digest, metainfo)
            if digest in self._entries:
                _unlink(path)
            else:
                os.replace(path, dest)
                s = dest.stat()
                self._entries[digest] = Entry(size, s.st_mtime_ns, time.time())
            self._reserved = max(0, self._reserved - size)
        self._flush(force=True)
        return dest


class LayerWriter:
    """Write a blob into ``incoming/`` while hashing it (sha256 + piece SHA-1s).

    ``verify()`` checks the digest (no second read); ``finish()`` then makes
    the file durable and returns the layer torrent; ``commit()`` renames the
    file into ``layers/``.  Readers of a fetch in progress read the file up to
    ``written``, and may have its last bytes once it verified.
    """

    def __init__(self, store: LayerStore, digest: Digest | None, size: int, path: Path):
        self.store = store
        self.digest = digest
        self.size = size
        self.path = path
        self.hasher = tf.PieceHasher(size)
        self.written = 0
        self._f = open(path, "wb")
        self._state = "writing"  # writing | finished | committed | aborted
        self._actual: Digest | None = None   # the digest the whole blob hashed to, once verified
        self.torrent: tf.LayerTorrent | None = None

    def write(self, data) -> None:
        if self._state != "writing":
            raise ValueError(f"writer is {self._state}")
        if self.written + len(data) > self.size:
            self.abort()
            raise DigestMismatch(f"more than the expected {self.size} bytes for {self.digest}")
        try:
            self._f.write(data)
            self._f.flush()  # a fetch's readers read the file: the bytes must be in the page cache
        except OSError as exc:
            self.abort()
            if _is_disk_full(exc):
                raise StoreFull(f"disk full writing {self.digest}: {exc.strerror}") from None
            raise
        self.hasher.update(data)
        self.written += len(data)

    def verify(self) -> Digest:
        """The digest the whole blob hashed to as it was written; DigestMismatch (and aborts) if it is not
        the expected one or bytes are missing."""
        if self._actual is None:
            if self.written != self.size:
                self.abort()
                raise DigestMismatch(f"got {self.written} bytes for {self.digest or 'blob'}, expected {self.size}")
            actual = self.hasher.digest()
            if self.digest is not None and actual != self.digest:
                self.abort()
                raise DigestMismatch(f"bytes hash to {actual}, not {self.digest}")
            self._actual = actual
        return self._actual

    def finish(self, trackers=()) -> tf.LayerTorrent:
        """Verify the whole blob and make it durable; returns its torrent.  Raises DigestMismatch (and
        aborts)."""
        if self._state == "finished":
            return self.torrent
        actual = self.verify()
        try:
            os.fsync(self._f.fileno())
            self._f.close()
        except OSError as exc:
            self.abort()
            if _is_disk_full(exc):
                raise StoreFull(f"disk full writing {actual}") from None
            raise
        self.digest = actual
        self.torrent = tf.build_metainfo(actual, self.size, self.hasher.pieces(), trackers)
        self._state = "finished"
        return self.torrent

    def commit(self, metainfo: bytes | None = None) -> Path:
        """Move the verified blob into the store (atomic rename) and record it."""
        if self._state != "finished":
            self.finish()
        dest = self.store.commit_incoming(self.digest, self.path, self.size, metainfo)
        self._state = "committed"
        return dest

    def abort(self) -> None:
        if self._state in ("committed", "aborted"):
            return
        try:
            self._f.close()
        except OSError:
            pass
        _unlink(self.path)
        self.store.release(self.size)
        self._state = "aborted"

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is not None or self._state == "writing":
            self.abort()


def disk_free(path) -> tuple:
    """(bytes, inodes) a writer can still take on ``path``'s filesystem; inodes None without an inode limit."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, (st.f_favail if st.f_files else None)


def space_problems(path, floor: int) -> list:
    """Why the store on ``path`` cannot take new layers (empty: it can): free space under ``floor``, no inodes."""
    try:
        free, inodes = disk_free(path)
    except OSError as exc:
        return [f"cannot read the store's filesystem: {exc.strerror or exc}"]
    out = []
    if free < floor:
        out.append(f"{free} bytes free on the store's filesystem, below the floor of {floor}")
    if inodes == 0:
        out.append("no inodes left on the store's filesystem")
    return out


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


def _unlink(p: Path) -> None:
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove %s: %s", p, exc)
