"""Alert logic without a session: the dispatcher and a Download driven by hand-made events."""
from __future__ import annotations

import threading
import time

import pytest

from layerswarm.bridge.format import layertorrent as tf
from layerswarm.bridge.format.digest import Digest
from layerswarm.bridge.format.errors import StoreFull, SwarmError
from layerswarm.bridge.node.store import LayerStore
from layerswarm.bridge.config import StreamSection
from layerswarm.bridge.node.stream import Download, stripe_priorities
from layerswarm.bridge.node.torrent.alerts import (DROPPED, FILE_ERROR, MOVED, PIECE_FINISHED, PIECE_READ,
                                                   TRACKER_REPLY, Dispatcher, Event)
from tests.fixtures import blob_bytes, wait_for


def test_dispatcher_routes_by_name_and_survives_bad_handlers():
    disp = Dispatcher()
    got = []
    disp.subscribe("a", lambda e: 1 / 0)
    disp.subscribe("a", got.append)
    disp.dispatch(Event(PIECE_FINISHED, "a", {"piece": 1}))
    disp.dispatch(Event(PIECE_FINISHED, "b", {"piece": 1}))
    disp.dispatch(Event(DROPPED))
    # DROPPED goes to every handler: anyone waiting on a read must ask again.
    assert [(g.name, g.kind) for g in got] == [("a", PIECE_FINISHED), ("", DROPPED)]


def test_what_handlers_defer_runs_once_after_the_whole_batch():
    """A download's readers are woken once per batch of alerts, not once per piece."""
    disp = Dispatcher()
    seen, woken = [], []

    def wake():
        woken.append(len(seen))

    def handler(e):
        seen.append(e.data["piece"])
        disp.after_batch(wake)
    disp.subscribe("a", handler)
    disp.dispatch_all([Event(PIECE_READ, "a", {"piece": p}) for p in range(3)])
    assert seen == [0, 1, 2] and woken == [3]           # once, after every event of the batch
    disp.dispatch(Event(PIECE_READ, "a", {"piece": 3}))
    assert woken == [3, 4]                              # one event is a batch of one
    disp.after_batch(wake)                              # outside a dispatch: at once
    assert woken == [3, 4, 4]
    disp.subscribe("b", lambda e: disp.after_batch(lambda: 1 / 0))
    disp.dispatch_all([Event(PIECE_READ, "b", {"piece": 0}), Event(PIECE_READ, "a", {"piece": 5})])
    assert woken == [3, 4, 4, 5]                        # a failing callback stops no other
    inner = []
    disp.subscribe("c", lambda e: (disp.dispatch(Event(PIECE_READ, "d", {})), disp.after_batch(wake)))
    disp.subscribe("d", lambda e: disp.after_batch(lambda: inner.append(len(woken))))
    disp.dispatch_all([Event(PIECE_READ, "c", {}), Event(PIECE_READ, "a", {"piece": 6})])
    assert inner == [4] and woken == [3, 4, 4, 5, 6]    # a nested dispatch ends its own batch only


class FakeTorrent:
    def __init__(self, n):
        self.reads, self.deadlines, self.moved_to = [], {}, None
        self.num_pieces = n
        self.priorities, self.leechers = None, None

    def prioritize(self, priorities):
        self.priorities = priorities

    def leechers_announced(self):
        return self.leechers

    def read_piece(self, p):
        self.reads.append(p)

    def set_piece_deadline(self, p, ms):
        self.deadlines[p] = ms

    def move_storage(self, path):
        self.moved_to = path

    def status(self):
        return {"done": 0}


class FakeSession:
    def __init__(self, from_file=False):
        self.dispatcher = Dispatcher()
        self.removed = []
        self.t = None
        self.verified_pieces_in_file = from_file   # the posix back-end: a verified piece is in the file
        self.prompt_log = []                         # (name, on) as the download asked

    def prompt(self, name, on):
        self.prompt_log.append((name, on))

    def add(self, metainfo, save_path, **kw):
        self.t = FakeTorrent(tf.parse_metainfo(metainfo).num_pieces)
        return self.t

    def remove(self, name, delete_files=False):
        self.removed.append((name, delete_files))

    def wait_removed(self, name, timeout=10):
        return True


def _setup(tmp_path, size=3 * tf.MIN_PIECE + 1000, from_file=False, **cfg):   # 4 pieces
    data = blob_bytes(size, b"fake")
    d = Digest.of_bytes(data)
    h = tf.PieceHasher(len(data))
    h.update(data)
    lt_ = tf.build_metainfo(d, len(data), h.pieces())
    ses, store = FakeSession(from_file), LayerStore(tmp_path)
    dl = Download(ses, store, lt_, config=StreamSection(**cfg)).start()
    return data, lt_, ses, store, dl


def _piece(lt_, data, p):
    a, b = lt_.piece_range(p)
    return data[a:b]


def test_download_streams_in_order_verifies_then_moves(tmp_path):
    data, lt_, ses, store, dl = _setup(tmp_path)
    name = str(lt_.digest)
    out = []
    reader = threading.Thread(target=lambda: out.append(b"".join(dl.stream(300_000))))   # from piece 2
    reader.start()
    disp = ses.dispatcher.dispatch
    for p in (2, 0, 3, 1):  # rarest-first order, not sequential
        disp(Event(PIECE_FINISHED, name, {"piece": p}))
    answered = 0   # libtorrent answers every read_piece: the reader's and the hash cursor's (in order)
    deadline = time.monotonic() + 10   # the verdict and the move run on the download's worker
    while ses.t.moved_to is None and time.monotonic() < deadline:
        for p in ses.t.reads[answered:]:
            disp(Event(PIECE_READ, name, {"piece": p, "buffer": _piece(lt_, data, p)}))
            answered += 1
        time.sleep(0.01)
    assert not ses.t.deadlines, "pieces came in time: the order stayed the swarm's (no deadlines)"
    assert ses.t.moved_to == store.layers_dir  # verified: libtorrent moves its own file
    (store.layers_dir / name).write_bytes(data)  # what move_storage would have done
    disp(Event(MOVED, name, {"path": str(store.layers_dir)}))
    reader.join(10)
    assert out == [data[300_000:]] and dl.verified and lt_.digest in store


def test_verified_pieces_are_read_from_the_file_when_the_back_end_wrote_them_there(tmp_path):
    """posix back-end: a piece is read from the partial file on the thread that learnt it is verified (no
    read_piece round trip), once; the hash cursor runs on through the pieces already there; the
    descriptor follows the file into the store and is closed once the blob is adopted."""
    data, lt_, ses, store, dl = _setup(tmp_path, 9 * tf.MIN_PIECE + 1000, from_file=True)   # 10 pieces
    name = str(lt_.digest)
    store.download_path(lt_.digest).write_bytes(data)   # what libtorrent's posix back-end wrote and hashed
    disp = ses.dispatcher.dispatch
    for p in (3, 7, 1, 9, 2, 4, 5, 6, 8):
        disp(Event(PIECE_FINISHED, name, {"piece": p}))
    assert dl._hash_next == 0 and dl.reads == 0   # no reader yet, and the cursor waits for piece 0
    disp(Event(PIECE_FINISHED, name, {"piece": 0}))
    assert dl._hash_next == dl.n and dl.reads == dl.n and ses.t.reads == []   # all ten, then and there
    out = []
    reader = threading.Thread(target=lambda: out.append(b"".join(dl.stream(0))))
    reader.start()
    assert wait_for(lambda: ses.t.moved_to == store.layers_dir, 10)
    store.download_path(lt_.digest).rename(store.layers_dir / name)   # the move; our descriptor follows it
    disp(Event(MOVED, name, {"path": str(store.layers_dir)}))
    reader.join(10)
    assert out == [data] and dl.verified and ses.t.reads == []
    assert wait_for(lambda: dl._fd is None, 10, "the descriptor closed after the adoption")


def test_alerts_are_prompt_for_the_first_byte_and_the_last_pieces_only(tmp_path):
    """With alert_batch the alert thread pauses between batches, except while a download waits for its first
    byte (from start until piece 0 is hashed) or nears its end (its last PROMPT_TAIL pieces and the move
    into the store): there each pause would add to a client's wait.  Once adopted it asks for nothing."""
    from layerswarm.bridge.node.stream import PROMPT_TAIL
    n = PROMPT_TAIL + 12
    data, lt_, ses, store, dl = _setup(tmp_path, (n - 1) * tf.MIN_PIECE + 1000, from_file=True, first_piece_gate=0)
    name = str(lt_.digest)
    store.download_path(lt_.digest).write_bytes(data)
    assert ses.prompt_log == [(name, True)]            # new: prompt until its first byte
    disp = ses.dispatcher.dispatch
    for p in (5, 6, 0):
        disp(Event(PIECE_FINISHED, name, {"piece": p}))
    assert ses.prompt_log[-1] == (name, False)          # piece 0 hashed: the pauses may gather alerts
    for p in [q for q in range(1, n) if q not in (5, 6)][:n - 3 - PROMPT_TAIL]:
        disp(Event(PIECE_FINISHED, name, {"piece": p}))
    assert ses.prompt_log[-1] == (name, True) and len(ses.prompt_log) == 3   # n - PROMPT_TAIL pieces in
    for p in range(n):
        disp(Event(PIECE_FINISHED, name, {"piece": p}))
    assert wait_for(lambda: ses.t.moved_to == store.layers_dir, 10)
    store.download_path(lt_.digest).rename(store.layers_dir / name)
    disp(Event(MOVED, name, {"path": str(store.layers_dir)}))
    assert wait_for(lambda: dl.verified, 10)
    assert wait_for(lambda: ses.prompt_log[-1] == (name, False), 10) and len(ses.prompt_log) == 4


def test_a_small_download_stays_prompt_from_start_to_end(tmp_path):
    """Fewer pieces than PROMPT_TAIL: its first piece is already among its last."""
    data, lt_, ses, store, dl = _setup(tmp_path, from_file=True, first_piece_gate=0)   # 4 pieces
    name = str(lt_.digest)
    store.download_path(lt_.digest).write_bytes(data)
    for p in range(dl.n):
        ses.dispatcher.dispatch(Event(PIECE_FINISHED, name, {"piece": p}))
    assert all(on for _, on in ses.prompt_log)
    dl.abort("test over")


def test_a_piece_the_file_cannot_give_is_read_through_libtorrent(tmp_path):
    """No partial file where the back-end should have written one (a failed disk, a race with the move):
    the piece is asked of libtorrent instead, and the stream goes on."""
    data, lt_, ses, store, dl = _setup(tmp_path, from_file=True)
    name = str(lt_.digest)
    disp = ses.dispatcher.dispatch
    disp(Event(PIECE_FINISHED, name, {"piece": 0}))
    assert ses.t.reads == [0]
    disp(Event(PIECE_READ, name, {"piece": 0, "buffer": _piece(lt_, data, 0)}))
    assert dl._hash_next == 1
    dl.abort("test over")


def test_readers_wake_only_for_the_pieces_they_wait_for(tmp_path):
    """Every reader thread woken costs CPU: pieces finishing and the hash cursor's own reads wake nobody."""
    data, lt_, ses, store, dl = _setup(tmp_path, 6 * tf.MIN_PIECE + 1000, first_piece_gate=0, prefetch=1)
    name = str(lt_.digest)
    token = dl.add_reader()
    dl.request(token, 3)   # a reader from piece 3 wants 3 and (prefetch) 4
    wakes = []
    notify_all = dl._cond.notify_all
    dl._cond.notify_all = lambda: (wakes.append(1), notify_all())
    woke = {}
    answered = 0
    for p in range(dl.n):
        before = len(wakes)
        ses.dispatcher.dispatch(Event(PIECE_FINISHED, name, {"piece": p}))
        assert len(wakes) == before, f"piece {p} finishing woke the readers"
        for q in ses.t.reads[answered:]:   # the hash cursor reads every piece in order
            before = len(wakes)
            ses.dispatcher.dispatch(Event(PIECE_READ, name, {"piece": q, "buffer": _piece(lt_, data, q)}))
            woke[q] = len(wakes) > before
            answered += 1
    assert woke == {0: False, 1: False, 2: False, 3: True, 4: True, 5: False, 6: False}
    assert dl.take(token, 3, last=False) == _piece(lt_, data, 3)
    dl.abort("test over")


def test_a_whole_reader_gets_a_piece_read_out_of_order_only_once_hashed_and_runs_in_one_chunk(tmp_path):
    """A reader from byte 0 is given only pieces the hash cursor has passed (a failure right after can
    still tell the hash of what it gave out); the cursor hashes the copies read for the reader instead of
    reading them again; the pieces read for it meanwhile go out as one chunk."""
    data, lt_, ses, store, dl = _setup(tmp_path, 6 * tf.MIN_PIECE + 1000, first_piece_gate=0, prefetch=2)
    name, disp = str(lt_.digest), ses.dispatcher.dispatch
    token = dl.add_reader(from_start=True)
    wakes = []
    notify_all = dl._cond.notify_all
    dl._cond.notify_all = lambda: (wakes.append(1), notify_all())
    dl.request(token, 0)                          # wants 0, 1, 2
    for p in (1, 2):                              # finished and read before piece 0 (out of order)
        disp(Event(PIECE_FINISHED, name, {"piece": p}))
        disp(Event(PIECE_READ, name, {"piece": p, "buffer": _piece(lt_, data, p)}))
    assert dl.take_run(token, 1) == []            # read for the reader, not hashed yet
    assert wakes == []                            # so it is not woken for them (it could take nothing)
    disp(Event(PIECE_FINISHED, name, {"piece": 0}))
    disp(Event(PIECE_READ, name, {"piece": 0, "buffer": _piece(lt_, data, 0)}))
    assert wakes == [1]                           # once, when the cursor passed 0, 1 and 2
    assert dl.take(token, 0, last=False) == _piece(lt_, data, 0)
    # the cursor hashed 1 and 2 from the copies read for the reader: no second read, and they are ready
    assert [ses.t.reads.count(p) for p in (0, 1, 2)] == [1, 1, 1]
    assert dl.take_run(token, 1) == [_piece(lt_, data, 1), _piece(lt_, data, 2)]
    assert dl.prefix_state(3 * lt_.piece_length, wait=0).actual() == Digest.of_bytes(data[:3 * lt_.piece_length])
    ranged = dl.add_reader()                      # a range reader is not held back by the cursor
    dl.request(ranged, 5)
    disp(Event(PIECE_FINISHED, name, {"piece": 5}))
    disp(Event(PIECE_READ, name, {"piece": 5, "buffer": _piece(lt_, data, 5)}))
    assert dl.take(ranged, 5, last=False) == _piece(lt_, data, 5)
    dl.abort("test over")


def test_a_reader_behind_the_hash_cursor_takes_the_pieces_it_read_instead_of_reading_them_again(tmp_path):
    """The cursor reads pieces as they verify, before a slower reader asks for them; the last few stay
    kept (2 x (prefetch + 1)), so the reader's request is answered without a second read_piece."""
    data, lt_, ses, store, dl = _setup(tmp_path, 12 * tf.MIN_PIECE + 1000, first_piece_gate=0, prefetch=1)
    name, disp = str(lt_.digest), ses.dispatcher.dispatch
    token = dl.add_reader(from_start=True)
    dl.request(token, 0)                                      # wants 0 and 1
    for p in range(9):                                        # the cursor reads 0..8 as they verify
        disp(Event(PIECE_FINISHED, name, {"piece": p}))
        disp(Event(PIECE_READ, name, {"piece": p, "buffer": _piece(lt_, data, p)}))
    assert ses.t.reads == list(range(9))
    assert dl.take(token, 0, last=False) == _piece(lt_, data, 0)
    assert dl.take_run(token, 1) == [_piece(lt_, data, 1)]
    assert len(dl._kept) == 4                                 # bounded: 5..8 kept, 2..4 given up
    dl.request(token, 2)                                      # 2, 3: read again; nothing else is
    assert ses.t.reads == list(range(9)) + [2, 3]
    dl.request(token, 5)                                      # 5, 6: kept, given at once
    assert dl.take_run(token, 5) == [_piece(lt_, data, 5), _piece(lt_, data, 6)]
    assert ses.t.reads == list(range(9)) + [2, 3] and dl.reads == 11
    dl.abort("test over")


def test_a_reader_kept_waiting_puts_deadlines_on_its_piece_and_the_next(tmp_path):
    data, lt_, ses, store, dl = _setup(tmp_path, 6 * tf.MIN_PIECE + 1000, deadline_after=0.3, first_piece_gate=0)
    name = str(lt_.digest)
    got = []

    def read():
        with pytest.raises(SwarmError, match="test over"):   # how the test ends the stream
            got.extend(dl.stream())
    reader = threading.Thread(target=read)
    reader.start()
    ses.dispatcher.dispatch(Event(PIECE_FINISHED, name, {"piece": 0}))
    wait_for(lambda: 0 in ses.t.reads, timeout=5, what="the read of piece 0", step=0.01)
    ses.dispatcher.dispatch(Event(PIECE_READ, name, {"piece": 0, "buffer": _piece(lt_, data, 0)}))
    wait_for(lambda: got, timeout=5, what="piece 0 at the reader", step=0.01)
    assert not ses.t.deadlines   # piece 0 came at once: no deadline
    wait_for(lambda: ses.t.deadlines, timeout=5, what="deadlines from the waiting reader", step=0.02)
    # kept waiting: the piece it needs and the rest of the 512 KiB window (4 pieces of 128 KiB)
    assert sorted(ses.t.deadlines) == [1, 2, 3, 4]
    dl.abort("test over")
    reader.join(5)


def test_disk_full_reaches_the_reader_as_store_full(tmp_path):
    data, lt_, ses, store, dl = _setup(tmp_path)
    s = dl.stream()
    ses.dispatcher.dispatch(Event(FILE_ERROR, str(lt_.digest), {"errno": 28, "message": "No space", "disk_full": True}))
    with pytest.raises(StoreFull):
        next(iter(s))
    assert ses.removed == [(str(lt_.digest), True)] and store._reserved == 0


def test_stall_is_detected_in_configured_time(tmp_path):
    data, lt_, ses, store, dl = _setup(tmp_path, stall_timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(SwarmError, match="stalled"):
        next(iter(dl.stream()))
    assert 0.9 < time.monotonic() - t0 < 5


def test_alert_thread_never_waits_for_the_move_or_the_store(tmp_path):
    data, lt_, ses, store, dl = _setup(tmp_path)
    name = str(lt_.digest)
    moving, go_on = threading.Event(), threading.Event()

    def slow_move(path):   # a slow disk: the move (and what follows) must not hold up other torrents' alerts
        moving.set()
        go_on.wait(10)
        ses.t.moved_to = path
    ses.t.move_storage = slow_move
    disp = ses.dispatcher.dispatch
    t0 = time.monotonic()
    for p in range(lt_.num_pieces):
        disp(Event(PIECE_FINISHED, name, {"piece": p}))
        disp(Event(PIECE_READ, name, {"piece": p, "buffer": _piece(lt_, data, p)}))
    assert time.monotonic() - t0 < 2 and moving.wait(10)
    go_on.set()
    (store.layers_dir / name).write_bytes(data)
    disp(Event(MOVED, name, {"path": str(store.layers_dir)}))
    assert dl.complete.wait(10) and dl.verified and lt_.digest in store


def test_stripes_split_the_pieces_among_the_first_ranks_at_every_level():
    """Ranks 0..7 at 3 levels: every piece but 0 is the top stripe piece (6) of exactly one rank; ranks 0
    and 1 (a fleet of two) prefer disjoint halves, ranks 0..3 disjoint quarters; piece 0 stays first."""
    n = 41
    prios = {r: stripe_priorities(n, r, 3) for r in range(8)}
    assert all(p[0] == 7 and len(p) == n and set(p[1:]) <= {3, 4, 5, 6} for p in prios.values())
    for piece in range(1, n):
        assert sorted(prios[r][piece] for r in range(8)) == [3, 3, 3, 3, 4, 4, 5, 6]
        assert {r % 2 for r in range(8) if prios[r][piece] >= 4} == {piece % 2}
        assert sum(prios[r][piece] >= 5 for r in range(4)) == 1
    assert stripe_priorities(n, 8, 3) == prios[0] and stripe_priorities(n, 13, 3) == prios[5]   # 8 stripes
    assert stripe_priorities(n, None, 3) == stripe_priorities(n, 5, 0) == [7] + [4] * (n - 1)  # plain


def test_a_download_takes_its_stripe_when_its_gate_opens_or_on_the_tracker_reply(tmp_path):
    """Gated: the stripe of the leecher count the tracker gave, when the gate opens; not gated (gate
    off, or a resumed download): on the first tracker reply that carries a count."""
    data, lt_, ses, store, dl = _setup(tmp_path, 9 * tf.MIN_PIECE + 1000)
    ses.t.leechers = 3
    ses.dispatcher.dispatch(Event(TRACKER_REPLY, str(lt_.digest), {}))
    assert ses.t.priorities is None   # gated: only piece 0 (and the last) wanted for now
    ses.dispatcher.dispatch(Event(PIECE_FINISHED, str(lt_.digest), {"piece": 0}))
    assert dl.rank == 2 and ses.t.priorities == stripe_priorities(dl.n, 2, 3)
    dl.abort("test over")

    data, lt_, ses, store, dl = _setup(tmp_path / "ungated", 9 * tf.MIN_PIECE + 1000, first_piece_gate=0)
    ses.dispatcher.dispatch(Event(TRACKER_REPLY, str(lt_.digest), {}))   # a reply without a count
    assert dl.rank is None and ses.t.priorities in (None, stripe_priorities(dl.n, None, 3))
    ses.t.leechers = 5
    ses.dispatcher.dispatch(Event(TRACKER_REPLY, str(lt_.digest), {}))
    assert dl.rank == 4 and ses.t.priorities == stripe_priorities(dl.n, 4, 3)
    dl.abort("test over")
