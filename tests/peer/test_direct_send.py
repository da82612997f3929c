"""The hash cursor writing a whole reader's pieces to its client's socket (format/directsend.py): every
byte once and in order, the last piece only after the verdict, a full socket handed back to the reader's
thread, and a stall counted at the bytes that went out; then the same through the real listener."""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from layerswarm.bridge.format import layertorrent as tf
from layerswarm.bridge.format.directsend import SLOT_KEY, Sent, SocketSink, SocketSlot
from layerswarm.bridge.format.errors import DigestMismatch, SwarmError
from layerswarm.bridge.http.wsgi import Listener
from layerswarm.bridge.node.readers import LayerStream
from layerswarm.bridge.node.torrent.alerts import MOVED, PIECE_FINISHED, Event
from tests.fixtures import wait_for
from tests.peer.test_alerts import _setup

PIECES = 12
WMEM_MAX = int(Path("/proc/sys/net/core/wmem_max").read_text())


def _on_disk(tmp_path, **cfg):
    """A download of PIECES pieces whose verified pieces the posix back-end wrote to the partial file."""
    data, lt_, ses, store, dl = _setup(tmp_path, (PIECES - 1) * tf.MIN_PIECE + 1000, from_file=True,
                                       first_piece_gate=0, **cfg)
    store.download_path(lt_.digest).write_bytes(data)
    return data, lt_, ses, store, dl


class Pump:
    """What the listener does with a body on plain TCP: the first chunk, then the socket offered to the
    body (SocketSlot) and the rest written by this thread, Sent markers skipped."""

    def __init__(self, stream_of, sndbuf: int | None = None):
        self.server, self.client = socket.socketpair()
        self.server.settimeout(30)                # O_NONBLOCK underneath, as the listener's sockets are
        # the system's largest buffer by default (room for two pieces), or a small one: a slow client
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf or WMEM_MAX)
        self.slot = SocketSlot()
        self.stream: LayerStream = stream_of(self.slot)
        self.marked = self.written = 0
        self.error: BaseException | None = None
        self.received = bytearray()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.reader = threading.Thread(target=self._read, daemon=True)

    def start(self, read_every: float = 0.0) -> "Pump":
        self.read_every = read_every
        self.thread.start()
        self.reader.start()
        return self

    def _run(self):
        try:
            for i, chunk in enumerate(self.stream):
                if i == 0:
                    self.server.sendall(chunk)
                    self.written += len(chunk)
                    self.slot.fd = self.server.fileno()
                elif chunk.__class__ is Sent:
                    self.marked += len(chunk)
                else:
                    self.server.sendall(chunk)
                    self.written += len(chunk)
        except BaseException as exc:  # noqa: BLE001 - what the test looks at
            self.error = exc
        finally:
            self.slot.fd = None
            self.server.shutdown(socket.SHUT_WR)

    def _read(self):
        while b := self.client.recv(1 << 16):
            self.received += b
            if self.read_every:
                time.sleep(self.read_every)

    def join(self):
        self.thread.join(20)
        self.reader.join(20)
        self.server.close()
        self.client.close()


def _finish(ses, store, lt_, data, name):
    assert wait_for(lambda: ses.t.moved_to == store.layers_dir, 10, "the verdict")
    store.download_path(lt_.digest).rename(store.layers_dir / name)
    ses.dispatcher.dispatch(Event(MOVED, name, {"path": str(store.layers_dir)}))


def test_a_sink_never_waits_for_the_client_and_keeps_what_the_socket_did_not_take():
    """Even on a blocking socket (the alert thread writes through it): a full socket leaves the tail in
    ``rest`` and disarms; a client gone leaves the whole piece, for the reader's own write to fail on."""
    a, b = socket.socketpair()
    a.setblocking(True)
    sink = SocketSink(a.fileno())
    sink.arm(5)
    piece = bytes(range(256)) * 4096              # 1 MiB: more than the socket holds
    t0 = time.monotonic()
    assert sink.push(piece) is False and time.monotonic() - t0 < 1
    assert not sink.armed and sink.next == 6 and 0 < sink.sent < len(piece)
    assert sink.rest == piece[sink.sent:]
    sink.arm(6)
    b.close()
    assert sink.push(b"x" * 1000) is False and sink.sent == 0 and sink.rest == b"x" * 1000
    sink.close()
    sink.close()                                  # twice is harmless
    os.fstat(a.fileno())                          # the listener's own descriptor stays open
    a.close()


def test_the_cursor_writes_each_piece_to_the_socket_once_and_the_last_after_the_verdict(tmp_path):
    data, lt_, ses, store, dl = _on_disk(tmp_path)
    name, disp = str(lt_.digest), ses.dispatcher.dispatch
    pump = Pump(lambda slot: LayerStream(dl, 0, slot)).start()
    disp(Event(PIECE_FINISHED, name, {"piece": 0}))
    assert wait_for(lambda: pump.slot.fd is not None, 5, "piece 0 out, the socket offered")
    assert wait_for(lambda: dl._sinks.get(pump.stream._token) is not None, 5, "the sink armed")
    wakes = []
    notify_all = dl._cond.notify_all
    dl._cond.notify_all = lambda: (wakes.append(1), notify_all())
    plen = lt_.piece_length
    for p in (2, 1, 4, 3, 6, 5, 8, 7, 10, 9):     # rarest-first: the cursor writes them as it passes them
        disp(Event(PIECE_FINISHED, name, {"piece": p}))
        assert wait_for(lambda: len(pump.received) == dl._hash_next * plen, 5, "the client caught up", 0.005)
    assert wait_for(lambda: len(pump.received) == (PIECES - 1) * plen, 5, "every piece but the last")
    assert bytes(pump.received) == data[:(PIECES - 1) * plen]
    assert wakes == [1]                           # the reader's thread woke once: its last piece is due
    disp(Event(PIECE_FINISHED, name, {"piece": PIECES - 1}))
    time.sleep(0.2)
    assert len(pump.received) == (PIECES - 1) * plen   # hashed, but out only once the blob verified
    _finish(ses, store, lt_, data, name)
    pump.join()
    assert pump.error is None and bytes(pump.received) == data
    assert pump.marked == (PIECES - 2) * plen     # pieces 1..10 went out from the cursor, counted as Sent
    assert pump.marked + pump.written == pump.stream.yielded == len(data) and dl.reads == PIECES


def test_a_full_socket_hands_the_rest_back_to_the_readers_thread(tmp_path):
    """A slow client: the cursor writes what the socket takes; the reader's thread sends the rest of the
    piece (with the listener's back-pressure), then takes pieces itself until it catches the cursor up."""
    data, lt_, ses, store, dl = _on_disk(tmp_path)
    name, disp = str(lt_.digest), ses.dispatcher.dispatch
    pump = Pump(lambda slot: LayerStream(dl, 0, slot), sndbuf=32 << 10).start(read_every=0.002)
    disp(Event(PIECE_FINISHED, name, {"piece": 0}))
    assert wait_for(lambda: dl._sinks, 5, "the sink armed")
    for p in range(1, PIECES):
        disp(Event(PIECE_FINISHED, name, {"piece": p}))
    _finish(ses, store, lt_, data, name)
    pump.join()
    assert pump.error is None and bytes(pump.received) == data
    assert 0 < pump.marked < len(data) - lt_.piece_length   # some went from the cursor, the rest by the thread
    assert pump.marked + pump.written == len(data) == pump.stream.yielded


def test_a_poisoned_blob_never_gets_its_last_piece_out(tmp_path):
    data, lt_, ses, store, dl = _on_disk(tmp_path)
    bad = bytearray(data)
    bad[-10] ^= 1                                 # the last piece passed libtorrent's check, not the digest
    store.download_path(lt_.digest).write_bytes(bad)
    name, disp = str(lt_.digest), ses.dispatcher.dispatch
    pump = Pump(lambda slot: LayerStream(dl, 0, slot)).start()
    disp(Event(PIECE_FINISHED, name, {"piece": 0}))
    assert wait_for(lambda: dl._sinks, 5, "the sink armed")
    for p in range(1, PIECES):
        disp(Event(PIECE_FINISHED, name, {"piece": p}))
    pump.join()
    assert isinstance(pump.error, DigestMismatch)
    assert bytes(pump.received) == data[:(PIECES - 1) * lt_.piece_length]


def test_a_stall_counts_what_the_cursor_wrote_before_the_reader_gives_up(tmp_path):
    """The origin continues at the reader's offset: the bytes the cursor wrote are yielded (as Sent)
    before the stall error, so nothing is sent twice or skipped."""
    data, lt_, ses, store, dl = _on_disk(tmp_path, stall_timeout=1.0)
    name, disp = str(lt_.digest), ses.dispatcher.dispatch
    pump = Pump(lambda slot: LayerStream(dl, 0, slot)).start()
    for p in range(4):
        disp(Event(PIECE_FINISHED, name, {"piece": p}))
    pump.join()
    assert isinstance(pump.error, SwarmError) and "stalled" in str(pump.error)
    assert pump.stream.yielded == len(pump.received) == 4 * lt_.piece_length
    assert bytes(pump.received) == data[:4 * lt_.piece_length]
    assert not dl._sinks                          # the reader left: the cursor writes for nobody
    dl.abort("test over")


def test_the_listener_offers_plain_sockets_and_skips_what_the_body_sent(tmp_path):
    """Through the real listener: the body gets the connection's SocketSlot (plain TCP, a known
    length), the cursor writes most of the blob, and the client reads it whole and in order."""
    data, lt_, ses, store, dl = _on_disk(tmp_path)
    name, disp = str(lt_.digest), ses.dispatcher.dispatch
    seen = {}

    def app(environ, start_response):
        slot = environ.get(SLOT_KEY)
        seen["slot"] = slot
        start_response("200 OK", [("Content-Length", str(len(data)))])

        def body():
            for chunk in LayerStream(dl, 0, slot):
                if chunk.__class__ is Sent:
                    seen["sent"] = seen.get("sent", 0) + len(chunk)
                yield chunk
        return body()

    listener = Listener("client", app, "127.0.0.1:0", 2)
    listener.start()
    feeder = threading.Thread(target=lambda: [disp(Event(PIECE_FINISHED, name, {"piece": p}))
                                              for p in range(PIECES) if time.sleep(0.02) is None])
    try:
        feeder.start()
        finisher = threading.Thread(target=_finish, args=(ses, store, lt_, data, name))
        finisher.start()
        r = requests.get(f"http://127.0.0.1:{listener.port}/blob", timeout=30)
        assert r.status_code == 200 and r.content == data
        assert isinstance(seen["slot"], SocketSlot)
        assert seen.get("sent", 0) >= (PIECES - 3) * lt_.piece_length
    finally:
        feeder.join(10)
        listener.stop()


@pytest.mark.parametrize("offset", [0, 300_000])
def test_no_slot_or_a_range_reader_takes_every_piece_itself(tmp_path, offset):
    data, lt_, ses, store, dl = _on_disk(tmp_path)
    name, disp = str(lt_.digest), ses.dispatcher.dispatch
    slot = None
    if offset:                                    # a range reader, even with a socket offered
        pair = socket.socketpair()
        slot = SocketSlot()
        slot.fd = pair[0].fileno()
    out = []
    reader = threading.Thread(target=lambda: out.extend(LayerStream(dl, offset, slot)))
    reader.start()
    for p in range(PIECES):
        disp(Event(PIECE_FINISHED, name, {"piece": p}))
    _finish(ses, store, lt_, data, name)
    reader.join(10)
    assert b"".join(out) == data[offset:] and not dl._sinks
    assert not any(c.__class__ is Sent for c in out)
    if slot is not None:
        pair[0].close()
        pair[1].close()


def test_stopping_the_listener_withdraws_the_socket_and_cuts_a_direct_stream(tmp_path):
    """The cursor writes while the reader's thread waits: a stop reaches that thread through the slot
    (withdrawn), so the stream is cut and its body closed as any other."""
    data, lt_, ses, store, dl = _on_disk(tmp_path)
    name, disp = str(lt_.digest), ses.dispatcher.dispatch
    closed = threading.Event()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", str(len(data)))])

        def body():
            try:
                yield from LayerStream(dl, 0, environ[SLOT_KEY])
            finally:
                closed.set()
        return body()

    listener = Listener("client", app, "127.0.0.1:0", 2, grace=0.2)
    listener.start()
    s = socket.create_connection(("127.0.0.1", listener.port))
    stop_feeding = threading.Event()

    def feed():   # a piece every 0.3 s: the stream would run for 3.6 s
        for p in range(PIECES):
            disp(Event(PIECE_FINISHED, name, {"piece": p}))
            if stop_feeding.wait(0.3):
                return
    feeder = threading.Thread(target=feed)
    try:
        s.sendall(b"GET /blob HTTP/1.1\r\nHost: x\r\n\r\n")
        feeder.start()
        assert wait_for(lambda: dl._sinks, 5, "the sink armed", 0.01)
        t0 = time.monotonic()
        listener.stop()
        assert closed.wait(5), "the body was not closed"
        assert time.monotonic() - t0 < 2.5      # within a piece or two of the grace time, not the blob's end
        s.settimeout(5)
        got = b""
        try:
            while b := s.recv(1 << 16):
                got += b
        except ConnectionResetError:
            pass
        assert len(got) < len(data) and not dl._sinks
    finally:
        stop_feeding.set()
        feeder.join(5)
        s.close()
        dl.abort("test over")
