"""Upstream trouble becomes bounded, well-formed errors (never a hang, never bad bytes).

The bridge app runs in this process, served on loopback; the upstreams are fakes on loopback.
"""
from __future__ import annotations

import hashlib
import socket
import threading
import time

import pytest
import requests
from flask import Flask, Response

from tests.fixtures import free_port

DIGEST = "sha256:" + "ab" * 32


def test_upstream_down_is_503_quickly(local_bridge):
    dead = free_port()
    b = local_bridge("--upstream", f"http://127.0.0.1:{dead}", "--connect-timeout", "2")
    for path in ("/v2/library/x/manifests/v1", f"/v2/library/x/blobs/{DIGEST}"):
        t0 = time.monotonic()
        r = requests.get(b.url + path, timeout=20)
        assert r.status_code == 503, r.text
        assert r.json()["errors"][0]["code"] == "UNAVAILABLE"
        assert time.monotonic() - t0 < 3


@pytest.fixture
def silent_server():
    """Accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    conns = []
    stop = threading.Event()

    def loop():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = srv.accept()
                conns.append(c)
            except OSError:
                pass
    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join()
    for c in conns:
        c.close()
    srv.close()


def test_upstream_slow_is_504_within_bound(local_bridge, silent_server):
    b = local_bridge("--upstream", silent_server, "--read-timeout", "1.5")
    for method, path in (("GET", "/v2/library/x/manifests/v1"), ("HEAD", f"/v2/library/x/blobs/{DIGEST}"),
                         ("GET", f"/v2/library/x/blobs/{DIGEST}")):
        t0 = time.monotonic()
        r = requests.request(method, b.url + path, timeout=20)
        took = time.monotonic() - t0
        assert r.status_code == 504, (method, path, r.text)
        assert 1.0 < took < 5, took
    r = requests.get(b.url + "/v2/library/x/manifests/v1", timeout=20)
    assert r.json()["errors"][0]["code"] == "UNAVAILABLE"


GOOD = b"g" * 300_000
BAD = b"b" * 300_000
GOOD_D = "sha256:" + hashlib.sha256(GOOD).hexdigest()
SHORT_D = "sha256:" + hashlib.sha256(b"s" * 300_000).hexdigest()
MANIFEST = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}'
MANIFEST_D = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


def fake_upstream():
    app = Flask("fake-upstream")

    @app.route("/v2/")
    def base():
        return "{}"

    @app.route("/v2/<path:p>", methods=["GET", "HEAD"])
    def any_(p):
        if p.startswith("limited/"):
            return Response('{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}', 429,
                            {"Retry-After": "17", "Content-Type": "application/json"})
        if p.startswith("lying/manifests/"):  # claims MANIFEST_D, serves other bytes
            body = MANIFEST.replace(b"2", b"3")
            return Response(body, 200, {"Docker-Content-Digest": MANIFEST_D, "Content-Length": str(len(body)),
                                        "Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        if p.startswith("broken/"):
            return Response("oops", 500)
        if p.endswith("/tags/list") and not p.startswith("nothere/"):   # may an anonymous client pull
            return {"name": p[:-len("/tags/list")], "tags": ["v1"]}
        if p == f"lying/blobs/{GOOD_D}":  # right size, wrong bytes
            return Response(BAD, 200, {"Content-Type": "application/octet-stream"})
        if p == f"empty/blobs/{GOOD_D}":  # nothing at all for a non-empty blob
            return Response(b"", 200, {"Content-Type": "application/octet-stream"})
        if p == f"short/blobs/{SHORT_D}":  # promises 300000, sends 1000 and hangs up
            def gen():
                yield b"s" * 1000
                raise ConnectionAbortedError("cut")
            return Response(gen(), 200, {"Content-Length": "300000"})
        return Response('{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}', 404,
                        {"Content-Type": "application/json"})
    return app


def test_429_passes_retry_after_and_5xx_is_502(local_bridge, thread_server):
    up = thread_server(fake_upstream())
    b = local_bridge("--upstream", up.url)
    r = requests.get(b.url + "/v2/limited/x/manifests/v1", timeout=20)
    assert r.status_code == 429 and r.headers["Retry-After"] == "17"
    assert r.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    r = requests.get(b.url + f"/v2/limited/x/blobs/{DIGEST}", timeout=20)
    assert r.status_code == 429 and r.headers["Retry-After"] == "17"
    r = requests.get(b.url + "/v2/broken/x/manifests/v1", timeout=20)
    assert r.status_code == 502 and r.json()["errors"][0]["code"] == "UNAVAILABLE"
    r = requests.get(b.url + "/v2/nothere/manifests/v1", timeout=20)
    assert r.status_code == 404 and r.json()["errors"][0]["code"] in ("NAME_UNKNOWN", "MANIFEST_UNKNOWN")
    r = requests.get(b.url + f"/v2/nothere/blobs/{DIGEST}", timeout=20)
    assert r.status_code == 404 and r.json()["errors"][0]["code"] == "NAME_UNKNOWN"


def test_wrong_or_short_origin_bytes_cut_the_connection(local_bridge, thread_server):
    up = thread_server(fake_upstream())
    b = local_bridge("--upstream", up.url)
    for path, n in ((f"/v2/lying/blobs/{GOOD_D}", len(GOOD)), (f"/v2/short/blobs/{SHORT_D}", 300_000)):
        r = requests.get(b.url + path, stream=True, timeout=20)
        assert r.status_code == 200 and int(r.headers["Content-Length"]) == n
        got = b""
        with pytest.raises(requests.exceptions.RequestException):
            for chunk in r.iter_content(65536):
                got += chunk
        assert len(got) < n  # never a complete (wrong) blob
    assert requests.get(b.url + "/healthz", timeout=10).status_code == 200  # still serving


def test_an_empty_answer_for_a_non_empty_blob_is_refused(local_bridge, thread_server):
    up = thread_server(fake_upstream())
    b = local_bridge("--upstream", up.url)
    for method in ("GET", "HEAD"):
        r = requests.request(method, b.url + f"/v2/empty/blobs/{GOOD_D}", timeout=20)
        assert r.status_code == 502 and r.content[:0] == b"", (method, r.status_code)
    empty = "sha256:" + hashlib.sha256(b"").hexdigest()   # the empty blob itself is fine to serve empty
    assert requests.get(b.url + f"/v2/nothere/blobs/{empty}", timeout=20).status_code == 404


def test_manifest_not_matching_its_digest_is_refused(local_bridge, thread_server):
    up = thread_server(fake_upstream())
    b = local_bridge("--upstream", up.url)
    for ref in (MANIFEST_D, "v1"):
        r = requests.get(b.url + f"/v2/lying/manifests/{ref}", timeout=20)
        assert r.status_code == 502, r.text
        assert r.json()["errors"][0]["code"] == "UNAVAILABLE"
    assert not list((b.store / "manifests" / "sha256").glob("[0-9a-f]*"))
