"""The host's one libtorrent session, its alert thread, and safe torrent handles.

This package is the only place that imports libtorrent.  One
:class:`TorrentSession` exists per process (the bridge, or ``layerswarm seed``
in the foreground); everything else talks to it through :class:`Torrent`
wrappers and the alert :class:`~bridge.torrent.alerts.Dispatcher`.

Secure fleet mode (a FleetTLS given): the session also listens on an SSL
socket and shows the host's certificate for every SSL torrent.  libtorrent
keeps certificates in memory only and announces an SSL torrent through the
torrent's own SSL context, so an SSL torrent is added paused, gets the
certificate, then starts; again on ``torrent_need_cert_alert``, and on every
torrent when the certificate files are rotated.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import NamedTuple

import libtorrent as lt

from layerswarm.bridge.node.torrent.alerts import Dispatcher, to_event
from layerswarm.bridge.config import BudgetSection, SessionSection
from layerswarm.bridge.node.torrent.settings import disk_io_constructor, settings_pack
from layerswarm.bridge.format.errors import SwarmError, TorrentGone, UserError
from layerswarm.bridge.format.threadnames import name_this_thread, native_threads_named

log = logging.getLogger(__name__)

_ALERT_MASK = (lt.alert.category_t.error_notification
               | lt.alert.category_t.storage_notification
               | lt.alert.category_t.status_notification
               | lt.alert.category_t.piece_progress_notification
               | lt.alert.category_t.tracker_notification)

# libtorrent wants DH parameters with every certificate (an empty buffer is a torrent error) although
# only TLS 1.2 DHE suites use them; fleet keys are ECDSA and negotiate TLS 1.3.  RFC 7919 ffdhe2048.
_DH_PARAMS = """-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""
_SSL_SOCKET = 1 << 18   # peer_info::ssl_socket, a flag the Python bindings do not name


def new_session(pack: dict, disk_io: str):
    """A libtorrent session with settings ``pack`` on the disk back-end ``disk_io`` (a constructor's
    name, settings.disk_io_constructor): the back-end can only be chosen when the session is made.
    The benchmarks' raw sessions are made here too, so they run on what the bridges run on."""
    params = lt.session_params()
    params.settings = pack
    params.disk_io_constructor = disk_io
    with native_threads_named("libtorrent"):   # its network and disk threads, told apart in /proc
        return lt.session(params)


class UploadCounters(NamedTuple):
    at: float       # when they were read (time.monotonic)
    sent: int       # payload bytes sent to peers so far
    wire: int       # and with BitTorrent's own messages: what the rate limit counts
    wanting: int    # peers with requests to us
    queued: int     # peers waiting for upload quota (the rate limit binds)
    asked: int = 0  # bytes those peers asked the limiter for and have not been granted yet


class Torrent:
    """A libtorrent handle whose every call tolerates the torrent vanishing."""

    def __init__(self, handle, name: str, num_pieces: int, piece_length: int, size: int, ssl: bool = False):
        self._h = handle
        self.name = name
        self.ssl = ssl   # an SSL torrent: peers only over TLS with a certificate from its CA
        self.num_pieces = num_pieces
        self.piece_length = piece_length
        self.size = size

    def _call(self, fn, *args):
        try:
            if not self._h.is_valid():
                raise TorrentGone(self.name)
            return getattr(self._h, fn)(*args)
        except RuntimeError as exc:  # "invalid torrent handle used"
            raise TorrentGone(self.name) from exc

    def read_piece(self, piece: int) -> None:
        self._call("read_piece", piece)

    def set_piece_deadline(self, piece: int, ms: int) -> None:
        self._call("set_piece_deadline", piece, int(ms))

    def prioritize(self, priorities: list) -> None:
        """libtorrent piece priorities (0 = not wanted .. 7), one per piece."""
        self._call("prioritize_pieces", priorities)

    def leechers_announced(self) -> int | None:
        """The tracker's count of the swarm's leechers (``incomplete``) in its latest announce reply
        (this host among them), or None before one came."""
        counts = [ih.get("scrape_incomplete", -1) for t in self._call("trackers")
                  for ep in t.get("endpoints", ()) for ih in ep.get("info_hashes", ())[:1]]
        n = max(counts, default=-1)
        return n if n >= 0 else None

    def move_storage(self, path: str) -> None:
        self._call("move_storage", str(path), lt.move_flags_t.dont_replace)

    def peers(self) -> list:
        """Connected peers: address, whether a seed, payload bytes we got from / sent to each, over TLS?"""
        out = []
        for pi in self._call("get_peer_info"):
            out.append({"ip": "%s:%s" % tuple(pi.ip), "seed": bool(pi.flags & pi.seed),
                        "down": pi.total_download, "up": pi.total_upload,
                        "incoming": not bool(pi.flags & pi.local_connection), "ssl": bool(pi.flags & _SSL_SOCKET)})
        return out

    def save_path(self) -> str:
        return self._call("save_path")

    def status(self) -> dict:
        st = self._call("status")
        return {
            "state": str(st.state),
            "progress": st.progress,
            "done": st.total_wanted_done,
            "wanted": st.total_wanted,
            "num_peers": st.num_peers,
            "num_seeds": st.num_seeds,
            "download_rate": st.download_rate,
            "upload_rate": st.upload_rate,
            "total_upload": st.all_time_upload,
            "is_seeding": st.is_seeding,
            "error": _message(st.errc) if st.errc.value() else "",
        }


def check_settings(overrides: dict) -> None:
    """UserError for the first ``--lt-setting`` libtorrent would refuse (an unknown name or a value of
    the wrong type); libtorrent itself raises KeyError/TypeError from inside the session."""
    known = lt.default_settings()
    for name, value in overrides.items():
        if name not in known:
            raise UserError(f"--lt-setting {name}: libtorrent has no such setting")
        want = type(known[name])
        if want is bool:
            ok = isinstance(value, bool)
        elif want is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, want)
        if not ok:
            raise UserError(f"--lt-setting {name}={value!r}: libtorrent wants {'a number' if want is int else want.__name__}")


def _message(ec) -> str:
    try:
        return ec.message()
    except Exception:
        return str(ec)


class TorrentSession:
    """Owns ``lt.session`` and the alert thread; all torrents go through here."""

    def __init__(self, cfg: SessionSection | None = None, tls=None, budgets: BudgetSection | None = None):
        """``tls``: the host's FleetTLS in secure fleet mode (None: open mode, no SSL torrents);
        ``budgets``: the host's upload/download budgets (rate limits that bind LAN peers too)."""
        self.cfg = cfg or SessionSection()
        self._tls = tls
        self._cert = tls.host_pair() if tls is not None else None   # (certificate, key) PEM
        check_settings(self.cfg.lt_settings)
        pack = settings_pack(self.cfg, secure=tls is not None, budgets=budgets)
        pack["alert_mask"] = int(_ALERT_MASK)
        self._ses = new_session(pack, disk_io_constructor(self.cfg))
        # posix writes and hashes from the file: a piece libtorrent calls verified can be read from there
        self.verified_pieces_in_file = self.cfg.disk_io == "posix"
        if tls is not None:   # applied once more: the SSL listen socket can vanish otherwise
            self._ses.apply_settings({"listen_interfaces": pack["listen_interfaces"]})
        if budgets is not None and (budgets.upload_budget or budgets.download_budget):
            self._limit_every_peer()
        self._stats_cond = threading.Condition()
        self._stats = UploadCounters(0.0, 0, 0, 0, 0, 0)
        self.dispatcher = Dispatcher()
        self._prompt: set = set()   # who must not wait for the pause (alert_batch): torrents, the budget
        self._torrents: dict = {}
        self._removing: dict = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._alert_loop, name="lt-alerts", daemon=True)
        self._thread.start()

    # -- rate limits -------------------------------------------------------
    def _limit_every_peer(self) -> None:
        """Every peer in the global class, whose limits are the session's rate limits.

        By default libtorrent puts peers on private, link-local and loopback addresses in a "local"
        class that no rate limit binds (and that ignores unchoke slots): in a fleet every peer is
        local, so a budget would limit nobody.  Measured: a 2 MiB/s upload limit, one loopback
        leecher, 24 MiB/s sent without this filter."""
        every = lt.ip_filter()
        glob = 1 << self._ses.global_peer_class_id
        every.add_rule("0.0.0.0", "255.255.255.255", glob)
        every.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", glob)
        self._ses.set_peer_class_filter(every)

    def set_upload_limit(self, rate: int) -> None:
        """Bytes per second of upload (all peers); at least 1 (0 is no limit to libtorrent)."""
        self._ses.apply_settings({"upload_rate_limit": max(1, int(rate))})

    def upload_counters(self, wait: float) -> "UploadCounters":
        """libtorrent's upload counters, read within ``wait`` seconds (else the last reading)."""
        with self._stats_cond:
            last = self._stats
            self._ses.post_session_stats()
            self._stats_cond.wait_for(lambda: self._stats is not last, wait)
            return self._stats

    def _on_stats(self, values) -> None:
        with self._stats_cond:
            self._stats = UploadCounters(time.monotonic(), values["net.sent_payload_bytes"], values["net.sent_bytes"],
                                         values["peer.num_peers_up_requests"], values["net.limiter_up_queue"],
                                         values["net.limiter_up_bytes"])
            self._stats_cond.notify_all()

    # -- alerts -----------------------------------------------------------
    def _alert_loop(self) -> None:
        name_this_thread()
        while not self._stop.is_set():
            if self._tls is not None:
                self._check_rotation()
            # wait_for_alert releases the GIL; a short timeout keeps shutdown prompt.
            if self._ses.wait_for_alert(250) is None:
                continue
            events = []
            for a in self._ses.pop_alerts():
                if a.what() == "torrent_need_cert":
                    self._show_certificate(a.handle)
                    continue
                if a.what() == "session_stats":
                    self._on_stats(a.values)
                    continue
                try:
                    ev = to_event(a)
                except Exception:
                    log.exception("could not read alert %s", a.what())
                    continue
                if ev is not None:
                    events.append(ev)
            self.dispatcher.dispatch_all(events)
            if self.cfg.alert_batch > 0 and not self._prompt:
                # Let the next alerts gather: libtorrent wakes this thread for the first alert posted to an
                # empty queue, so without a pause a warm download pops ~1 alert per wake-up (one a piece with
                # posix; two with the back-ends that read pieces through read_piece).  Not while a torrent
                # waits for its first byte or its end (prompt): there each pause would add to a client's wait.
                time.sleep(self.cfg.alert_batch)   # not Event.wait: that is Python code, this is one C call

    def prompt(self, name: str, on: bool) -> None:
        """While ``name`` (a torrent, or another waiter such as the upload budget) is prompt (``on``), the
        alert thread does not pause between batches (alert_batch); else it may."""
        with self._lock:
            if on:
                self._prompt.add(name)
            else:
                self._prompt.discard(name)

    # -- certificates (secure fleet mode) --------------------------------
    def _show_certificate(self, handle) -> None:
        with self._lock:
            cert, key = self._cert or (None, None)
        if cert is None:
            return
        try:
            handle.set_ssl_certificate_buffer(cert.decode(), key.decode(), _DH_PARAMS)
        except RuntimeError:   # the torrent is gone
            pass

    def _check_rotation(self) -> None:
        """Rotated certificate files (cert-manager rewrites them in place) go to every SSL torrent."""
        if not self._tls.maybe_reload():
            return
        try:
            pair = self._tls.host_pair()
        except UserError as exc:   # half-written: the rest of the rotation changes the files again
            log.warning("fleet certificate files changed but are not usable yet (%s); keeping the old one", exc)
            return
        with self._lock:
            self._cert = pair
            handles = [t._h for t in self._torrents.values() if t.ssl]
        for h in handles:
            self._show_certificate(h)
        log.info("fleet certificate files changed: %d SSL torrents show the new certificate", len(handles))

    # -- torrents ---------------------------------------------------------
    @property
    def listen_port(self) -> int:
        return self._ses.listen_port()

    @property
    def ssl_listen_port(self) -> int | None:
        """The SSL peer socket's port (secure fleet mode), else None."""
        return self._ses.ssl_listen_port() if self._tls is not None else None

    def add(self, metainfo: bytes, save_path, *, seed_mode: bool = False, trackers=(),
            sequential: bool = False, first_piece_only: bool = False) -> Torrent:
        """Add a layer torrent (bencoded .torrent bytes) and return its wrapper.

        ``seed_mode`` skips the piece check: only for bytes verified against
        the digest.  Without it an existing file is rechecked (a partial
        download resumes safely).  ``trackers`` replaces the torrent's own
        announce list (the host announces to its configured trackers).  An
        SSL torrent starts only once it has the host's certificate.
        """
        ti = lt.torrent_info(lt.bdecode(metainfo))
        ssl = bool(ti.ssl_cert())
        if ssl and self._cert is None:
            raise SwarmError(f"{ti.name()} is an SSL torrent: it needs secure fleet mode (a fleet certificate)")
        atp = lt.add_torrent_params()
        atp.ti = ti
        atp.save_path = str(save_path)
        atp.storage_mode = lt.storage_mode_t.storage_mode_sparse
        if first_piece_only and ti.num_pieces() > 2:
            # piece 0 first; the last piece too (lowest priority), so that piece 0 alone does not make the
            # torrent "finished" (see close_redundant_connections in settings.py)
            atp.piece_priorities = [7] + [0] * (ti.num_pieces() - 2) + [1]
        flags = atp.flags
        flags &= ~lt.torrent_flags.auto_managed   # every layer seeds: no queue
        if ssl:
            flags |= lt.torrent_flags.paused   # no announce or connection before it has a certificate
        else:
            flags &= ~lt.torrent_flags.paused
        flags |= lt.torrent_flags.duplicate_is_error
        if seed_mode:
            flags |= lt.torrent_flags.seed_mode
        if sequential:
            flags |= lt.torrent_flags.sequential_download
        if trackers:
            # Without override_trackers libtorrent merges these with the torrent's own list, and the
            # host would announce to the publisher's trackers as well (checked with 2.1.1).
            flags |= lt.torrent_flags.override_trackers
            atp.trackers = list(trackers)
        atp.flags = flags
        name = ti.name()
        with self._lock:
            if self._stop.is_set():
                raise TorrentGone(name)
            h = self._ses.add_torrent(atp)
            t = Torrent(h, name, ti.num_pieces(), ti.piece_length(), ti.total_size(), ssl)
            self._torrents[name] = t
            if ssl:   # under the lock: a rotation either sees this torrent or is seen by it
                self._show_certificate(h)
                h.resume()
        return t

    def get(self, name: str) -> Torrent | None:
        with self._lock:
            return self._torrents.get(name)

    def remove(self, name: str, delete_files: bool = False) -> None:
        with self._lock:
            t = self._torrents.pop(name, None)
            if t is None:
                return
            self._removing[name] = t._h
        try:
            self._ses.remove_torrent(t._h, lt.session.delete_files if delete_files else 0)
        except RuntimeError:
            pass

    def wait_removed(self, name: str, timeout: float = 10.0) -> bool:
        """Block until libtorrent has let go of the torrent (its handle turns invalid)."""
        with self._lock:
            h = self._removing.get(name)
        if h is None:
            return True
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if not h.is_valid():
                    return True
                time.sleep(0.02)
            return False
        finally:
            with self._lock:
                if self._removing.get(name) is h:
                    del self._removing[name]

    def close(self) -> None:
        """Stop within seconds: stop_tracker_timeout bounds the teardown."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(5)
        with self._lock:
            self._torrents.clear()
        try:
            self._ses.pause()
        except RuntimeError:
            pass
        ses, self._ses = self._ses, None
        del ses  # the destructor sends event=stopped, bounded by stop_tracker_timeout
