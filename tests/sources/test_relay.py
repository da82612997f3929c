"""The relay view and the relay client against each other on a loopback werkzeug server."""
from __future__ import annotations

import socket
import ssl
import threading
import time

import pytest
import requests
from flask import Flask
from werkzeug.serving import make_server

from layerswarm.bridge.devstack.certs import FleetPKI
from layerswarm.bridge.format.errors import UpstreamError
from layerswarm.bridge.http.relay import relay_blueprint
from layerswarm.bridge.node.budget import Uploads
from layerswarm.bridge.node.store import LayerStore
from layerswarm.bridge.sources.relayclient import SIZE_HEADER, RelayClient
from tests.sources.fakes import blob, chunked


class FakeFetch:
    def __init__(self, data):
        self.data = data

    def wait_size(self, timeout):
        return len(self.data)

    def chunks(self, start, end, hold_tail):
        assert not hold_tail   # a relay never holds back: the asking bridge verifies
        yield from chunked(self.data[start:end + 1])


@pytest.fixture
def relay(tmp_path):
    store = LayerStore(tmp_path)
    fetches: dict = {}
    app = Flask(__name__)
    app.register_blueprint(relay_blueprint(store, fetches.get, first_byte_timeout=5, uploads=Uploads(session=None)))
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_port}", store, fetches
    srv.shutdown()


def test_relay_serves_stored_and_in_progress_blobs_from_an_offset(relay):
    url, store, fetches = relay
    client = RelayClient(connect_timeout=5, relay_timeout=5)
    d, data = blob(300_000)
    w = store.writer(d, len(data))
    w.write(data)
    w.commit()
    size, body = client.open(url, d, 1000)
    assert size == len(data) and b"".join(body) == data[1000:]
    d2, data2 = blob(250_000, b"fetching")
    fetches[d2] = FakeFetch(data2)
    size, body = client.open(url + "/", d2, 0)
    assert size == len(data2) and b"".join(body) == data2


def test_relay_refusals_reach_the_client_as_upstream_errors(relay):
    url, store, fetches = relay
    client = RelayClient(connect_timeout=5, relay_timeout=5)
    d, data = blob(1000)
    with pytest.raises(UpstreamError, match="404"):
        client.open(url, d, 0)
    fetches[d] = FakeFetch(data)
    with pytest.raises(UpstreamError, match="416"):
        client.open(url, d, 1001)
    r = requests.get(f"{url}/_layerswarm/relay/sha256:nothex?offset=0", timeout=5)
    assert r.status_code == 400
    r = requests.get(f"{url}/_layerswarm/relay/{d}?offset=10", timeout=5)
    assert r.status_code == 200 and r.headers[SIZE_HEADER] == "1000" and r.content == data[10:]


def test_bad_relays_are_remembered():
    client = RelayClient(connect_timeout=1, relay_timeout=1)
    client.mark_bad({"http://a.invalid"})
    assert client.is_bad("http://a.invalid") and not client.is_bad("http://b.invalid")


class _Trickle:
    """A relay response whose body arrives a few bytes at a time on a fake clock."""

    def __init__(self, clock, step: float, n: int):
        self.clock, self.step, self.left, self.closed = clock, step, n, False
        self.raw = self

    def read1(self, amt):
        if not self.left:
            return b""
        self.left -= 1
        self.clock[0] += self.step
        return b"x" * 100

    def close(self):
        self.closed = True


def test_a_trickling_relay_is_dropped():
    clock = [0.0]
    client = RelayClient(1, relay_timeout=10, min_rate=1000, clock=lambda: clock[0])
    r = _Trickle(clock, step=1.0, n=100)          # 100 bytes/s, below the 1000 bytes/s floor
    with pytest.raises(UpstreamError, match="too slow"):
        for _ in client._body(r, None):
            pass
    assert r.closed and clock[0] <= 11
    fast = _Trickle(clock, step=0.01, n=500)      # 10 kB/s: fine
    assert sum(len(c) for c in client._body(fast, None)) == 50_000


def test_a_relay_past_its_overall_deadline_is_dropped():
    """Fast enough in every window, but the whole blob would take longer than size / floor rate."""
    clock = [0.0]
    client = RelayClient(1, relay_timeout=10, min_rate=1000, clock=lambda: clock[0])
    r = _Trickle(clock, step=0.05, n=10_000)       # 2 kB/s: above the floor in every window
    with pytest.raises(UpstreamError, match="overall deadline"):
        for _ in client._body(r, deadline=30.0):
            pass
    assert r.closed and 30 <= clock[0] <= 31


class _DrippingRelay:
    """A relay on a raw socket that sends its answer 4 KiB at a time and keeps the connection open after
    it (no end of stream to end a read early): plain, or TLS with ``context``."""

    def __init__(self, body: bytes, context=None, hold_after_first: threading.Event | None = None):
        self.body, self.context = body, context
        self.hold = hold_after_first   # the first 4 KiB come 0.2 s after the head, the rest when it is set (3 s)
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.done = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()
        self.url = f"{'https' if context else 'http'}://127.0.0.1:{self.srv.getsockname()[1]}"

    def _serve(self):
        conn, _ = self.srv.accept()
        if self.context is not None:
            conn = self.context.wrap_socket(conn, server_side=True)
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s: %d\r\n\r\n"
                         % (len(self.body), SIZE_HEADER.encode(), len(self.body)))
            if self.hold is not None:
                time.sleep(0.2)   # the first bytes come after the head, as from a relay still fetching
            for i in range(0, len(self.body), 4096):
                conn.sendall(self.body[i:i + 4096])
                if i == 0 and self.hold is not None:
                    self.hold.wait(3)
                time.sleep(0.0005)
            self.done.wait(10)

    def close(self):
        self.done.set()
        self.srv.close()


@pytest.mark.parametrize("tls", [False, True])
def test_relay_bytes_are_read_in_large_pieces_and_the_tail_does_not_wait(tmp_path, tls):
    """A relay's bytes arrive a few KiB at a time; every read costs a file write, a hash update and
    wake-ups, so the socket is told to wake the read for LOW_WATER bytes, or for the rest of the blob
    (the connection stays open after it: nothing else would end that last read before the timeout)."""
    d, data = blob(300 * 1024)
    context, options = None, {}
    if tls:
        pki = FleetPKI(tmp_path)
        host = pki.host("relay")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(host.cert, host.key)
        options = {"verify": str(pki.ca)}
    relay = _DrippingRelay(data, context)
    try:
        client = RelayClient(connect_timeout=5, relay_timeout=5)
        client._tls_options = options
        t0 = time.monotonic()
        size, body = client.open(relay.url, d, 0)
        chunks = list(body)
        took = time.monotonic() - t0
    finally:
        relay.close()
    assert size == len(data) and b"".join(chunks) == data
    assert took < 3   # well before the 5 s read timeout: the tail did not wait for LOW_WATER bytes
    # 75 writes of 4 KiB: in reads of 64 KiB about 5 (over TLS a read returns one record: 75)
    assert len(chunks) <= (75 if tls else 8), [len(c) for c in chunks]


def test_the_first_bytes_of_a_relay_are_not_held_for_low_water():
    """Each hop of a relay chain would add LOW_WATER at the relay's rate to its clients' first byte: the
    first read returns what has come."""
    d, data = blob(300 * 1024)
    first_seen = threading.Event()
    relay = _DrippingRelay(data, hold_after_first=first_seen)
    try:
        client = RelayClient(connect_timeout=5, relay_timeout=5)
        t0 = time.monotonic()
        size, body = client.open(relay.url, d, 0)
        chunks = [next(body)]
        first_after = time.monotonic() - t0
        first_seen.set()
        chunks += list(body)
    finally:
        relay.close()
    assert size == len(data) and b"".join(chunks) == data
    assert len(chunks[0]) == 4096 and first_after < 2, (len(chunks[0]), first_after)   # not the relay's 3 s hold
    assert len(chunks) <= 9, [len(c) for c in chunks]   # the rest still in reads of LOW_WATER
