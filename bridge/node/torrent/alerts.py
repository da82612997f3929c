"""libtorrent alerts turned into plain events, and the dispatcher that routes them.

Alerts die at the next ``pop_alerts()``, so the alert thread copies what
handlers need into an :class:`Event` first.  Handlers are keyed by the
torrent name, which for a layer torrent is its digest (``sha256:<hex>``);
tests drive the dispatcher with hand-made events, no session needed.
"""
from __future__ import annotations

import errno
import logging
import threading
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# Event kinds
PIECE_FINISHED = "piece_finished"      # data: piece
PIECE_READ = "piece_read"              # data: piece, buffer (bytes) or error
HASH_FAILED = "hash_failed"            # data: piece
FINISHED = "finished"                  # every wanted piece downloaded and checked
STATE = "state"                        # data: state (str), prev (str)
FILE_ERROR = "file_error"              # data: errno, message, disk_full (bool)
TORRENT_ERROR = "torrent_error"        # data: message
MOVED = "moved"                        # data: path
MOVE_FAILED = "move_failed"            # data: message
REMOVED = "removed"
DROPPED = "dropped"                    # alert queue overflowed: re-request anything pending
TRACKER_ERROR = "tracker_error"        # data: message
TRACKER_REPLY = "tracker_reply"        # data: num_peers
TRACKER_WARNING = "tracker_warning"    # data: message (the reply's ``warning message``, with libtorrent's prefix)


@dataclass
class Event:
    kind: str
    name: str = ""                     # torrent name == layer digest; "" for session-wide events
    data: dict = field(default_factory=dict)


def _errno_of(ec) -> int:
    try:
        return int(ec.value())
    except Exception:
        return 0


def _message(ec) -> str:
    try:
        return ec.message()
    except Exception:
        return str(ec)


def to_event(a) -> Event | None:
    """Copy one libtorrent alert into an Event (None for alerts we ignore)."""
    what = a.what()
    name = getattr(a, "torrent_name", "") or ""
    if what == "piece_finished":
        return Event(PIECE_FINISHED, name, {"piece": int(a.piece_index)})
    if what == "read_piece":
        ec = a.error
        if _errno_of(ec):
            return Event(PIECE_READ, name, {"piece": int(a.piece), "buffer": None, "error": _message(ec)})
        buf = a.buffer  # already a bytes copy: avoid a second one
        if len(buf) != a.size:
            buf = buf[:a.size]
        return Event(PIECE_READ, name, {"piece": int(a.piece), "buffer": buf})
    if what == "hash_failed":
        return Event(HASH_FAILED, name, {"piece": int(a.piece_index)})
    if what == "torrent_finished":
        return Event(FINISHED, name)
    if what == "state_changed":
        return Event(STATE, name, {"state": str(a.state), "prev": str(a.prev_state)})
    if what == "file_error":
        code = _errno_of(a.error)
        return Event(FILE_ERROR, name, {"errno": code, "message": _message(a.error),
                                        "disk_full": code in (errno.ENOSPC, errno.EDQUOT)})
    if what == "torrent_error":
        code = _errno_of(a.error)
        return Event(TORRENT_ERROR, name, {"message": _message(a.error), "errno": code,
                                           "disk_full": code in (errno.ENOSPC, errno.EDQUOT)})
    if what == "storage_moved":
        return Event(MOVED, name, {"path": a.storage_path})
    if what == "storage_moved_failed":
        return Event(MOVE_FAILED, name, {"message": _message(a.error)})
    if what == "torrent_removed":
        return Event(REMOVED, name)
    if what == "alerts_dropped":
        return Event(DROPPED)
    if what == "tracker_reply":
        return Event(TRACKER_REPLY, name, {"num_peers": int(getattr(a, "num_peers", 0))})
    if what == "tracker_warning":
        return Event(TRACKER_WARNING, name, {"message": a.message()})
    if what == "tracker_error":
        return Event(TRACKER_ERROR, name, {"message": a.message()})
    return None


class Dispatcher:
    """Routes events to the handlers registered for their layer (DROPPED goes to every handler), and
    to handlers of their kind, whatever the layer.

    A handler is any callable taking an Event.  Handlers run on the alert
    thread: they must be quick and never block on the session.  What a handler
    passes to :meth:`after_batch` runs once after the whole batch of events
    (the alert thread pops several at a time): a reader woken once for the
    pieces of a batch, not once per piece.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._by_name: dict = {}
        self._by_kind: dict = {}
        self._batch = threading.local()   # .after: callables to run at the end of this thread's batch

    def subscribe(self, name: str, handler) -> None:
        with self._lock:
            self._by_name.setdefault(name, []).append(handler)

    def subscribe_kind(self, kind: str, handler) -> None:
        """``handler`` gets every event of ``kind``, of any layer."""
        with self._lock:
            self._by_kind.setdefault(kind, []).append(handler)

    def unsubscribe(self, name: str, handler) -> None:
        with self._lock:
            hs = self._by_name.get(name, [])
            if handler in hs:
                hs.remove(handler)
            if not hs:
                self._by_name.pop(name, None)

    def dispatch(self, ev: Event) -> None:
        self.dispatch_all((ev,))

    def dispatch_all(self, events) -> None:
        """Each event to its handlers, then what they asked to run after the batch (once each)."""
        after: dict = {}
        outer = getattr(self._batch, "after", None)   # a handler dispatching: its batch ends first
        self._batch.after = after
        try:
            for ev in events:
                self._dispatch(ev)
        finally:
            self._batch.after = outer
        for fn in after:
            try:
                fn()
            except Exception:  # noqa: BLE001 - as for handlers: the alert thread goes on
                log.exception("after-batch callback failed")

    def after_batch(self, fn) -> None:
        """Run ``fn`` once at the end of the batch being dispatched (at once outside a dispatch)."""
        after = getattr(self._batch, "after", None)
        if after is None:
            fn()
        else:
            after[fn] = None

    def _dispatch(self, ev: Event) -> None:
        with self._lock:
            if ev.kind == DROPPED:
                targets = [h for hs in self._by_name.values() for h in hs]
            else:
                targets = list(self._by_name.get(ev.name, ()))
            targets += self._by_kind.get(ev.kind, ())
        for h in targets:
            try:
                h(ev)
            except Exception:  # one broken handler must not kill the alert thread
                log.exception("alert handler failed for %s", ev.kind)
