"""The host's peer: one libtorrent session, the layer store and the tracker client, working together.

Create one :class:`Peer` per process (``Peer.open`` wires the parts).  The
swarm source calls ``stream`` and ``publish_writer`` (its cold fetches write
with ``store.writer``); ``layerswarm seed`` and the admin views call
``add_blob``/``seed``/``seed_torrent``.

In secure fleet mode every torrent the peer makes, adopts or downloads is the
fleet's SSL torrent (format 2: ``ssl-cert`` = the fleet CA); any other torrent
is refused, and torrents stored in the other mode are rebuilt from their piece
hashes when the store is seeded again.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from layerswarm.bridge.config import BudgetSection, SessionSection, StreamSection
from layerswarm.bridge.format import layertorrent as tf
from layerswarm.bridge.format.digest import Digest
from layerswarm.bridge.format.errors import (PublishConflict, PublishRejected, SwarmError, TorrentConflict,
                                             TrackerUnavailable, UserError)
from layerswarm.bridge.node.budget import UploadBudget, Uploads
from layerswarm.bridge.node.store import LayerStore
from layerswarm.bridge.node.readers import FileStream, LayerStream
from layerswarm.bridge.node.stream import Download
from layerswarm.bridge.node.torrent.alerts import TRACKER_WARNING
from layerswarm.bridge.node.worker import Worker
from layerswarm.bridge.node.trackerclient import TrackerClient

log = logging.getLogger(__name__)


@dataclass
class SeedInfo:
    digest: Digest
    size: int
    info_hash: str
    source: str   # "published" (tracker's, checked), "own" (we published), "record" (restart, no rehash)

    def as_dict(self) -> dict:
        return {"digest": str(self.digest), "size": self.size, "info_hash": self.info_hash, "source": self.source}


class Peer:
    def __init__(self, store: LayerStore, tracker: TrackerClient, session, stream: StreamSection,
                 ssl_cert: bytes | None = None, uploads: Uploads | None = None):
        """``session`` is the process's one TorrentSession; ``stream`` tunes every swarm download;
        ``ssl_cert`` is the fleet's torrent root (``tf.root_cert``) in secure fleet mode, else None;
        ``uploads``: what the host sends other hosts (an UploadBudget paces it)."""
        self.store = store
        self.tracker = tracker
        self.session = session
        self.uploads = uploads or Uploads(session)
        self.stream_cfg = stream
        self.ssl_cert = ssl_cert
        self.store.on_evict = self._stop_seeding
        self._lock = threading.Lock()
        self._downloads: dict = {}
        self._seeding: dict = {}     # Digest -> SeedInfo
        self._republishing: set = set()
        self._republisher = Worker("republish")   # tracker calls stay off the alert thread
        self._closed = False
        session.dispatcher.subscribe_kind(TRACKER_WARNING, self._on_tracker_warning)

    @classmethod
    def open(cls, store_dir: str, trackers, *, publish_token: str | None = None, host_id: str = "",
             cache_max: int | None = None, session: SessionSection | None = None,
             stream: StreamSection | None = None, tracker_timeout: float = 10.0, tls=None,
             budgets: BudgetSection | None = None) -> "Peer":
        """A peer with its own store, tracker client and libtorrent session (one per process).

        ``trackers``: the tracker's base URL, or several (replicas sharing one store).
        ``tls``: the host's FleetTLS in secure fleet mode (SSL torrents, HTTPS to the tracker), else None;
        ``budgets``: the host's upload and download budgets.
        """
        from layerswarm.bridge.node.torrent.session import TorrentSession  # the libtorrent import
        ssl_cert = tf.root_cert(tls.ca_pem) if tls is not None else None
        store = LayerStore(store_dir, cache_max)
        tracker = TrackerClient(trackers, publish_token, host_id, tracker_timeout, tls=tls)
        ses = TorrentSession(session or SessionSection(), tls, budgets)
        upload = budgets.upload_budget if budgets is not None else None
        return cls(store, tracker, ses, stream or StreamSection(), ssl_cert,
                   UploadBudget(ses, upload).start() if upload else Uploads(ses))

    # -- seeding -----------------------------------------------------------
    def seed_stored(self) -> list:
        """Seed every stored layer again (startup): from the saved, checked torrent with seed_mode.

        Only bytes the store verified before (index record matches size and
        mtime) get here, so no recheck is needed.
        """
        out = []
        for d in self.store.digests():
            if d in self._seeding:
                continue
            meta = self.store.saved_torrent(d)
            try:
                saved = tf.parse_metainfo(meta, d) if meta is not None else None
                if saved is not None and tf.fleet_mismatch(saved, self.ssl_cert) is None:
                    out.append(self.seed_torrent(saved, "record"))
                elif saved is not None:   # the fleet switched mode or CA: same pieces, new info-hash
                    out.append(self.seed(d, tf.for_fleet(saved, self.ssl_cert)))
                else:
                    out.append(self.seed(d))
            except Exception as exc:  # one bad layer must not stop the others
                log.warning("not seeding %s: %s", d, exc)
        return out

    def seed(self, digest: Digest, own: tf.LayerTorrent | None = None) -> SeedInfo:
        """Publish-or-adopt the torrent for a stored layer and seed it."""
        if digest in self._seeding:
            return self._seeding[digest]
        path = self.store.path_if_present(digest)
        if path is None:
            raise FileNotFoundError(str(digest))
        if own is None:
            own = tf.torrent_for_file(path, trackers=self.tracker.announce_urls, ssl_cert=self.ssl_cert,
                                      expect=digest)
        chosen, source = self.resolve_torrent(own, path)
        self.store.save_torrent(digest, chosen.metainfo)
        return self.seed_torrent(chosen, source)

    def resolve_torrent(self, own: tf.LayerTorrent, path) -> tuple:
        """The torrent to seed for the verified bytes in file ``path`` whose own build is ``own``.

        The tracker's published torrent wins if its pieces match our bytes; we
        publish ours only when none of our mode is published.  A published
        torrent that disagrees is reported and raises TorrentConflict.
        ``own`` may be built for either mode: it is rebuilt for ours.  One
        built by the other piece-length rule (a fleet part upgraded) is checked
        against the bytes hashed again in its piece length.
        """
        own = tf.for_fleet(own, self.ssl_cert)
        published = self._ours_or_none(self.tracker.get_metainfo(own.digest))
        if published is None:
            try:
                self.tracker.put_metainfo(own)
                return own, "own"
            except PublishConflict:
                published = self.tracker.get_metainfo(own.digest)  # lost a publish race
                if published is None:
                    raise TorrentConflict(f"tracker refused the torrent for {own.digest} and serves none")
                why = tf.fleet_mismatch(published, self.ssl_cert)
                if why:
                    raise TorrentConflict(f"tracker keeps {why} for {own.digest} and refuses ours") from None
            except PublishRejected as exc:
                raise UserError(str(exc)) from None
        if published.piece_length != own.piece_length:
            log.info("%s: the tracker publishes it in %d-byte pieces; hashing ours again to compare",
                     own.digest, published.piece_length)
            own = tf.torrent_for_file(path, own.trackers, own.ssl_cert, own.digest, published.piece_length)
        if _same_pieces(published, own):
            return published, "published"
        self.tracker.report(own.digest, published.info_hash,
                            "piece hashes do not match the verified blob")
        raise TorrentConflict(f"tracker publishes torrent {published.info_hash} for {own.digest} whose pieces "
                              "do not match the blob (reported)")

    def _ours_or_none(self, torrent: tf.LayerTorrent | None) -> tf.LayerTorrent | None:
        """A published torrent of another mode or CA is none of ours (we offer ours; the tracker decides)."""
        why = tf.fleet_mismatch(torrent, self.ssl_cert) if torrent is not None else None
        if why:
            log.info("%s: the tracker publishes %s; offering ours", torrent.digest, why)
            return None
        return torrent

    def _require_ours(self, torrent: tf.LayerTorrent) -> None:
        why = tf.fleet_mismatch(torrent, self.ssl_cert)
        if why:
            raise SwarmError(f"refusing the torrent {torrent.info_hash} of {torrent.digest}: {why}")

    def seed_torrent(self, torrent: tf.LayerTorrent, source: str) -> SeedInfo:
        """Seed a checked torrent of a verified stored blob (seed_mode: no recheck)."""
        self._require_ours(torrent)
        d = torrent.digest
        with self._lock:
            current = self._seeding.get(d)
        if current is not None and current.info_hash == torrent.info_hash.hex:
            return current   # seeded already (a layer given again, e.g. a second `seed` of one tarball)
        self.session.add(torrent.metainfo, self.store.layers_dir, seed_mode=True,
                         trackers=self.tracker.announce_urls)
        info = SeedInfo(d, torrent.size, torrent.info_hash.hex, source)
        with self._lock:
            self._seeding[d] = info
        return info

    def _stop_seeding(self, digest: Digest) -> None:
        with self._lock:
            self._seeding.pop(digest, None)
        self.session.remove(str(digest))
        if not self.session.wait_removed(str(digest)):
            raise SwarmError(f"libtorrent still holds {digest}")

    def _on_tracker_warning(self, ev) -> None:
        """The tracker publishes no torrent for a layer we seed (its store lost it in a failover, it
        restarted, or the torrent was dropped): give ours back, as only a host holding the bytes can."""
        if tf.UNPUBLISHED_WARNING not in ev.data.get("message", ""):
            return
        try:
            digest = Digest.parse(ev.name)
        except ValueError:
            return
        with self._lock:
            if digest not in self._seeding or digest in self._republishing:
                return
            self._republishing.add(digest)
        self._republisher.submit(self._republish, digest)

    def _republish(self, digest: Digest) -> None:
        try:
            meta = self.store.saved_torrent(digest)
            path = self.store.path_if_present(digest)
            if meta is None or path is None:
                return
            _, source = self.resolve_torrent(tf.parse_metainfo(meta, digest), path)
            log.info("%s: the tracker had no torrent for it; %s", digest,
                     "published ours again" if source == "own" else "it has one again")
        except (TrackerUnavailable, TorrentConflict, UserError, ValueError) as exc:
            log.warning("%s: could not publish its torrent again: %s", digest, exc)
        finally:
            with self._lock:
                self._republishing.discard(digest)

    def seeding(self) -> list:
        with self._lock:
            return list(self._seeding.values())

    def add_blob(self, chunks, size: int, digest: Digest | None = None) -> SeedInfo:
        """Store bytes (an iterable of chunks), verify, publish, seed.  Nothing is kept on failure."""
        if digest is not None and digest in self.store:
            for _ in chunks:  # drain the source; the stored copy is already verified
                pass
            return self.seed(digest)
        w = self.store.writer(digest, size)
        with w:
            for c in chunks:
                w.write(c)
            own = w.finish(self.tracker.announce_urls)
            if own.digest in self.store:
                w.abort()
                return self.seed(own.digest)
            chosen, source = self.resolve_torrent(own, w.path)  # before commit: a conflict leaves nothing behind
            w.commit(chosen.metainfo)
        return self.seed_torrent(chosen, source)

    def publish_writer(self, writer) -> SeedInfo:
        own = writer.finish(self.tracker.announce_urls)
        chosen, source = self.resolve_torrent(own, writer.path)
        writer.commit(chosen.metainfo)
        return self.seed_torrent(chosen, source)

    # -- downloading -------------------------------------------------------
    def stream(self, digest: Digest, offset: int = 0, metainfo: tf.LayerTorrent | None = None, socket=None):
        """An in-order byte stream of a layer from ``offset``: from the store, or from the swarm (which may
        write to the client's ``socket`` itself: a SocketSlot, format/directsend.py).

        Raises SwarmError when there is no torrent or the tracker is down (fall back to the origin).
        """
        if digest in self.store:
            return FileStream(self.store, digest, offset)
        return LayerStream(self.download(digest, metainfo), offset, socket)

    def _running(self, digest: Digest) -> Download | None:
        """The download of ``digest`` still running (under ``self._lock``)."""
        dl = self._downloads.get(digest)
        return dl if dl is not None and not dl.complete.is_set() else None

    def downloading(self, digest: Digest) -> tf.LayerTorrent | None:
        """The torrent of the swarm download of ``digest`` running on this host, or None."""
        with self._lock:
            dl = self._running(digest)
            return dl.lt if dl is not None else None

    def download(self, digest: Digest, metainfo: tf.LayerTorrent | None = None) -> Download:
        """The shared download of ``digest`` (started if needed)."""
        with self._lock:
            dl = self._running(digest)
            if dl is not None:
                return dl
        if metainfo is None:
            try:
                metainfo = self.tracker.get_metainfo(digest)
            except TrackerUnavailable as exc:
                raise SwarmError(str(exc)) from None
            if metainfo is None:
                raise SwarmError(f"no torrent published for {digest}")
        self._require_ours(metainfo)   # SwarmError: the bridge falls back to the origin
        with self._lock:
            dl = self._running(digest)
            if dl is not None:
                return dl
            dl = Download(self.session, self.store, metainfo, trackers=self.tracker.announce_urls,
                          config=self.stream_cfg, on_mismatch=self._report_mismatch, on_done=self._download_done)
            self._downloads[digest] = dl
        try:
            dl.start()
        except Exception:
            with self._lock:
                self._downloads.pop(digest, None)
            raise
        return dl

    def _download_done(self, dl: Download, verified: bool) -> None:
        with self._lock:
            if self._downloads.get(dl.digest) is dl:
                del self._downloads[dl.digest]
            if verified:
                self._seeding[dl.digest] = SeedInfo(dl.digest, dl.lt.size, dl.lt.info_hash.hex, "downloaded")

    def _report_mismatch(self, dl: Download) -> None:
        self.tracker.report(dl.digest, dl.lt.info_hash, "downloaded blob does not hash to the digest")

    # -- admin -------------------------------------------------------------
    def status(self) -> dict:
        with self._lock:
            downloads = {str(d): {"readers": dl.readers, "size": dl.lt.size} for d, dl in self._downloads.items()}
        return {"listen_port": self.session.listen_port, "ssl_listen_port": self.session.ssl_listen_port,
                "secure": self.ssl_cert is not None, "store_bytes": self.store.used_bytes(),
                "store_cap": self.store.cap, "seeding": [s.as_dict() for s in self.seeding()],
                "downloads": downloads}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._lock:
            dls = list(self._downloads.values())
        for dl in dls:
            dl.abort("peer shutting down")
        self._republisher.stop()
        self.uploads.close()
        self.store.flush()
        self.session.close()


def _same_pieces(a: tf.LayerTorrent, b: tf.LayerTorrent) -> bool:
    return a.size == b.size and a.piece_length == b.piece_length and a.pieces == b.pieces
