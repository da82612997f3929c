"""The bridge's HTTP listener (bridge/http/wsgi.py) streaming a body from an app thread: order,
back-pressure, the write deadline for a client that stops reading, and a stop that cuts a stream;
each for both ways a body goes out: written by the app thread to the socket (a known length on plain TCP)
and chunk by chunk through the loop (no length)."""
from __future__ import annotations

import hashlib
import socket
import threading
import time

import pytest
import requests

from layerswarm.bridge.http.wsgi import Listener

CHUNK = 256 << 10


class Body:
    """A WSGI body of numbered 256 KiB chunks (``count``, or until closed), recording what it gave."""

    def __init__(self, count: int | None, declared: int | None | str = "count"):
        """``declared``: the Content-Length (None: none, the body is chunked), by default ``count`` chunks."""
        self.count = count
        if declared == "count":
            declared = None if count is None else count * CHUNK
        self.declared = declared
        self.given = 0
        self.closed = threading.Event()

    def app(self, environ, start_response):
        headers = [("Content-Type", "application/octet-stream")]
        if self.declared is not None:
            headers.append(("Content-Length", str(self.declared)))
        start_response("200 OK", headers)
        return self._chunks()

    def _chunks(self):
        try:
            i = 0
            while self.count is None or i < self.count:
                self.given += 1
                yield chunk(i)
                i += 1
        finally:
            self.closed.set()


def chunk(i: int) -> bytes:
    return i.to_bytes(4, "big") * (CHUNK // 4)


def started(body: Body, **kw) -> Listener:
    listener = Listener("client", body.app, "127.0.0.1:0", 2, **kw)
    listener.start()
    return listener


@pytest.fixture
def loop_writes(monkeypatch):
    """How many bodies went out chunk by chunk through the loop (the rest the app thread wrote)."""
    count = [0]
    pump = Listener._pump

    def counted(self, *args):
        count[0] += 1
        return pump(self, *args)
    monkeypatch.setattr(Listener, "_pump", counted)
    return count


# an endless body either way: with a Content-Length (1 TiB) the app thread writes it, without one the loop
ENDLESS = [pytest.param(1 << 40, id="thread-writes"), pytest.param(None, id="loop-writes")]


def stalled_client(listener: Listener, s: socket.socket) -> None:
    """``s`` asks for the body, reads its first bytes, then reads nothing more."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    s.connect(("127.0.0.1", listener.port))
    s.sendall(b"GET /blob HTTP/1.1\r\nHost: x\r\n\r\n")
    s.recv(1024)


def connection_closed(s: socket.socket, within: float = 10.0) -> bool:
    """The server closed ``s``: reading what is buffered ends in EOF or a reset within ``within`` s."""
    s.settimeout(within)
    try:
        while s.recv(1 << 20):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def test_a_streamed_body_arrives_whole_and_in_order_to_a_slow_reader(loop_writes):
    body = Body(40)
    listener = started(body)
    try:
        want = hashlib.sha256(b"".join(chunk(i) for i in range(40))).hexdigest()
        with requests.Session() as http:
            for _ in range(2):   # twice on one kept-alive connection: the second answer follows the first
                with http.get(f"http://127.0.0.1:{listener.port}/blob", stream=True, timeout=30) as r:
                    assert r.status_code == 200
                    got = hashlib.sha256()
                    for part in r.iter_content(64 << 10):
                        got.update(part)
                        time.sleep(0.001)   # slower than the app: writes wait for the client
                assert got.hexdigest() == want
                assert body.closed.wait(5)
                body.closed.clear()
        assert loop_writes[0] == 0, "a body of known length on plain TCP went through the loop"
    finally:
        listener.stop()


def test_a_body_without_a_length_goes_through_the_loop_in_order(loop_writes):
    body = Body(12, declared=None)   # chunked: aiohttp frames it, so the loop writes it
    listener = started(body)
    try:
        r = requests.get(f"http://127.0.0.1:{listener.port}/blob", timeout=30)
        assert r.content == b"".join(chunk(i) for i in range(12))
        assert loop_writes[0] == 1
    finally:
        listener.stop()


@pytest.mark.parametrize("declared", ENDLESS)
def test_a_client_that_stops_reading_is_cut_after_the_write_timeout_and_the_body_closed(declared):
    body = Body(None, declared)   # endless: only back-pressure and the deadline stop it
    listener = started(body, write_timeout=1.0)
    s = socket.socket()
    try:
        stalled_client(listener, s)
        assert body.closed.wait(20), "the stream was never cut"
        # back-pressure: the app made no more than the socket buffers and two writes in flight hold
        assert body.given < 64, body.given
        assert not listener._writes, "a cut stream left writes behind"   # it would grow with every such client
        assert connection_closed(s), "the cut connection stayed open"
        # the listener still answers others
        other = Body(2)
        listener.app = other.app
        r = requests.get(f"http://127.0.0.1:{listener.port}/blob", timeout=10)
        assert r.content == chunk(0) + chunk(1)
    finally:
        s.close()
        listener.stop()


@pytest.mark.parametrize("declared", ENDLESS)
def test_stopping_the_listener_cuts_a_running_stream_and_closes_its_body(declared):
    body = Body(None, declared)
    listener = started(body, grace=0.5, write_timeout=30.0)
    s = socket.socket()
    try:
        stalled_client(listener, s)
        deadline = time.monotonic() + 10
        while body.given < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        t0 = time.monotonic()
        listener.stop()
        # cut after the grace time, well before the 30 s write deadline
        assert body.closed.wait(10)
        assert time.monotonic() - t0 < 15
    finally:
        s.close()
