"""Chained authorization with raw HTTP: every path answers a repository only to clients the upstream lets pull it.

A real docker-registry with token auth (alice pulls everything; bob and anonymous
pull ``public/`` only), a tracker, bridge A (no service credentials: fetches with
the client's own) and bridge B (service credentials: alice's), both open mode.
"""
from __future__ import annotations

import base64
import time

import pytest
import requests

from layerswarm.bridge.devstack import daemons as devstack
from layerswarm.bridge.devstack.tokenserver import TEST_PASSWORDS
from tests.fixtures import FleetPKI, stats, stop_all, wait_for

pytestmark = pytest.mark.slow   # real docker-registry, tracker and bridges

MANIFEST_ACCEPT = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module")
def hosts(token_origin, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chained")
    made = []
    try:
        tracker = devstack.start_tracker(tmp / "tracker", extra=("--interval", "5", "--lease-ttl", "10"))
        made.append(tracker)
        common = ("--tiny-blob-bytes", "65536", "--alias", f"corp={token_origin.url}")
        a = devstack.start_bridge(tmp, upstream=token_origin.url, tracker=tracker.url, name="bridge-a",
                                  store=tmp / "store-a", extra=("--host-id", "a", *common))
        made.append(a)
        b = devstack.start_bridge(tmp, upstream=token_origin.url, tracker=tracker.url, name="bridge-b",
                                  store=tmp / "store-b", env={"LAYERSWARM_UPSTREAM_PASSWORD": "alice-pw"},
                                  extra=("--host-id", "b", "--upstream-user", "alice", "--auth-ttl", "4", *common))
        made.append(b)
        yield {"origin": token_origin, "tracker": tracker, "a": a, "b": b}
    finally:
        stop_all(made)


def token(bridge, user: str | None, *names: str, ns: str | None = None, password: str | None = None) -> str:
    auth = (user, password or TEST_PASSWORDS[user]) if user else None
    params = {"service": "layerswarm", "scope": [f"repository:{n}:pull" for n in names]}
    if ns:
        params["ns"] = ns
    r = requests.get(f"{bridge.url}/_layerswarm/token", params=params, auth=auth, timeout=20)
    assert r.status_code == 200, r.text
    return r.json()["token"]


def bearer(tok: str) -> dict:
    return {"Authorization": f"Bearer {tok}"}


def paths(img, name: str, ns: str | None = None) -> list:
    """(method, path, headers) of every way to read ``img`` under ``name``."""
    q = f"?ns={ns}" if ns else ""
    layer = img.layers[0].digest
    return [("GET", f"/v2/{name}/manifests/v1{q}", {"Accept": MANIFEST_ACCEPT}),
            ("HEAD", f"/v2/{name}/manifests/v1{q}", {"Accept": MANIFEST_ACCEPT}),
            ("GET", f"/v2/{name}/manifests/{img.manifest_digest}{q}", {"Accept": MANIFEST_ACCEPT}),
            ("GET", f"/v2/{name}/blobs/{layer}{q}", {}),
            ("HEAD", f"/v2/{name}/blobs/{layer}{q}", {}),
            ("GET", f"/v2/{name}/blobs/{layer}{q}", {"Range": "bytes=10-99"}),
            ("GET", f"/v2/{name}/blobs/{img.config.digest}{q}", {})]


def call(bridge, method, path, headers, extra=None):
    return requests.request(method, bridge.url + path, headers={**headers, **(extra or {})}, timeout=30)


def assert_refused(r, code="UNAUTHORIZED"):
    assert r.status_code in (401, 404), (r.status_code, r.request.method, r.request.url)
    if r.request.method != "HEAD":
        assert r.json()["errors"][0]["code"] == code
        assert len(r.content) < 300      # an error body, never a blob or manifest
    if r.status_code == 401:
        assert r.headers["WWW-Authenticate"].startswith("Bearer realm=")


def pull_all(bridge, img, name, extra=None, ns=None):
    for method, path, headers in paths(img, name, ns):
        r = call(bridge, method, path, headers, extra)
        assert r.status_code in (200, 206), (r.status_code, method, path, r.text[:200])
        if method == "GET" and "/blobs/" in path:
            want = {str(b.digest): b.data for b in img.blobs}[path.split("/blobs/")[1].split("?")[0]]
            assert r.content == (want[10:100] if "Range" in headers else want)
    for layer in img.layers[1:]:
        r = call(bridge, "GET", f"/v2/{name}/blobs/{layer.digest}" + (f"?ns={ns}" if ns else ""), {}, extra)
        assert r.status_code == 200 and r.content == layer.data


def test_v2_challenges_everyone_without_a_token(hosts):
    for name in ("a", "b"):
        br = hosts[name]
        r = requests.get(br.url + "/v2/", timeout=10)
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"] == f'Bearer realm="{br.url}/_layerswarm/token",service="layerswarm"'
        assert requests.get(br.url + "/v2/", auth=("alice", "alice-pw"), timeout=10).status_code == 200
        assert requests.get(br.url + "/v2/", auth=("alice", "nope"), timeout=10).status_code == 401
        assert requests.get(br.url + "/v2/", headers=bearer(token(br, None)), timeout=10).status_code == 200


def test_public_image_for_everyone_private_only_for_alice(hosts):
    o = hosts["origin"]
    for name in ("a", "b"):
        br = hosts[name]
        # Anonymous without a token (curl), anonymous and bob with tokens, alice: the public image.
        pull_all(br, o.public_img, "public/app")
        pull_all(br, o.public_img, "public/app", bearer(token(br, None, "public/app")))
        pull_all(br, o.public_img, "public/app", bearer(token(br, "bob", "public/app")))
        # Alice reads the private image, on the bridge that fetches with her credentials (A) and on
        # the one with service credentials (B); with Basic straight away too.
        pull_all(br, o.private_img, "private/app", bearer(token(br, "alice", "private/app")))
        pull_all(br, o.private_img, "private/app", {"Authorization": "Basic " + base64.b64encode(
            b"alice:alice-pw").decode()})
        # Now it is cached on this bridge: nobody else gets a byte of it, by any path.
        for extra in (None, bearer(token(br, None, "private/app")), bearer(token(br, "bob", "private/app")),
                      bearer(token(br, "alice", "public/app")),
                      {"Authorization": "Basic " + base64.b64encode(b"bob:bob-pw").decode()}):
            for method, path, headers in paths(o.private_img, "private/app") + \
                    paths(o.private_img, "corp/private/app") + \
                    paths(o.private_img, "private/app", ns=o.url.split("//")[1]):
                assert_refused(call(br, method, path, headers, extra))


def test_a_public_name_is_no_window_onto_private_layers(hosts):
    o = hosts["origin"]
    for name in ("a", "b"):
        br = hosts[name]
        pull_all(br, o.private_img, "private/app", bearer(token(br, "alice", "private/app")))
        for extra in (None, bearer(token(br, "alice", "public/app")), bearer(token(br, "bob", "public/app"))):
            for blob in o.private_img.blobs:
                for method in ("GET", "HEAD"):
                    assert_refused(call(br, method, f"/v2/public/app/blobs/{blob.digest}", {}, extra),
                                   "BLOB_UNKNOWN")
            r = call(br, "GET", f"/v2/public/app/manifests/{o.private_img.manifest_digest}",
                     {"Accept": MANIFEST_ACCEPT}, extra)
            assert_refused(r, "MANIFEST_UNKNOWN")


def test_open_mode_private_layers_take_no_torrent_lease_or_relay(hosts):
    o, a, b = hosts["origin"], hosts["a"], hosts["b"]
    pull_all(a, o.public_img, "public/app")
    pull_all(a, o.private_img, "private/app", bearer(token(a, "alice", "private/app")))
    tracker = hosts["tracker"].url
    layer = o.public_img.layers[0].digest
    wait_for(lambda: requests.get(f"{tracker}/metainfo/{layer}", timeout=5).status_code == 200,
             what="public layer published")
    for blob in o.private_img.layers:
        assert requests.get(f"{tracker}/metainfo/{blob.digest}", timeout=5).status_code == 404
        for br in (a, b):
            assert requests.get(f"{br.fleet_url}/_layerswarm/relay/{blob.digest}", timeout=5).status_code == 404
            assert not list(br.store.rglob(blob.digest.hex + "*")), "a private layer in an open-mode store"
    # The private manifest is not shared through the tracker either.
    assert requests.get(f"{tracker}/manifests/{o.private_img.manifest_digest}", timeout=5).status_code == 404


def test_tokens_of_another_bridge_expired_or_forged_are_refused(hosts):
    o, a, b = hosts["origin"], hosts["a"], hosts["b"]
    path = f"/v2/private/app/blobs/{o.private_img.layers[0].digest}"
    tok_a = token(a, "alice", "private/app")
    assert call(a, "GET", path, {}, bearer(tok_a)).status_code == 200
    r = call(b, "GET", path, {}, bearer(tok_a))
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    head, payload, sig = tok_a.split(".")
    forged = ".".join((head, payload, sig[:-4] + ("AAAA" if sig[-4:] != "AAAA" else "BBBB")))
    assert call(a, "GET", path, {}, bearer(forged)).status_code == 401
    tok_b = token(b, "alice", "private/app")      # bridge B: --auth-ttl 4
    assert call(b, "GET", path, {}, bearer(tok_b)).status_code == 200
    time.sleep(5)
    r = call(b, "GET", path, {}, bearer(tok_b))
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]


@pytest.mark.parametrize("header,status", [
    ("Basic !!!notbase64", 401),
    ("Basic " + base64.b64encode(b"no-colon").decode(), 401),
    ("Basic " + base64.b64encode(b"\xff\xfe:\x00").decode(), 401),
    ("Digest username=alice", 401),
    ("Bearer", 401),
    ("Bearer not.a.jwt", 401),
    ("Basic " + "A" * 9000, 400),
    ("Bearer " + "x" * 7000, 401),
])
def test_odd_credentials_are_a_clean_error(hosts, header, status):
    o, a = hosts["origin"], hosts["a"]
    for path in ("/v2/", f"/v2/private/app/manifests/v1", f"/v2/public/app/blobs/{o.public_img.layers[0].digest}"):
        r = requests.get(a.url + path, headers={"Authorization": header}, timeout=10)
        assert r.status_code == status, (path, r.status_code, r.text)
        assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    r = requests.get(a.url + "/_layerswarm/token", headers={"Authorization": header}, timeout=10)
    assert r.status_code in (200, status) and r.status_code != 500


def test_a_huge_header_is_a_400(hosts):
    r = requests.get(hosts["a"].url + "/v2/", headers={"Authorization": "Basic " + "A" * 40_000}, timeout=10)
    assert r.status_code == 400


def test_realm_speaks_docker_and_containerd(hosts):
    a = hosts["a"]
    scope = "repository:private/app:pull"
    # docker login: account, client_id, offline_token, no scope; a wrong password fails.
    login = {"account": "alice", "client_id": "docker", "offline_token": "true", "service": "layerswarm"}
    assert requests.get(f"{a.url}/_layerswarm/token", params=login, auth=("alice", "alice-pw"),
                        timeout=10).status_code == 200
    assert requests.get(f"{a.url}/_layerswarm/token", params=login, auth=("alice", "wrong"),
                        timeout=10).status_code == 401
    # containerd: POST password grant; a refresh grant is not offered.
    r = requests.post(f"{a.url}/_layerswarm/token", data={"grant_type": "password", "username": "alice",
                      "password": "alice-pw", "scope": scope, "service": "layerswarm", "client_id": "ctr"},
                      timeout=10)
    assert r.status_code == 200 and r.json()["expires_in"] <= 60
    assert call(a, "GET", "/v2/private/app/manifests/v1", {"Accept": MANIFEST_ACCEPT},
                bearer(r.json()["access_token"])).status_code == 200
    r = requests.post(f"{a.url}/_layerswarm/token", data={"grant_type": "refresh_token", "refresh_token": "x"},
                      timeout=10)
    assert r.status_code == 400
    r = requests.post(f"{a.url}/_layerswarm/token", data={"grant_type": "password", "username": "alice",
                      "password": "wrong", "scope": scope}, timeout=10)
    assert r.status_code == 401


def test_no_credential_in_logs(hosts):
    for br in (hosts["a"], hosts["b"]):
        text = br.log_text(10 ** 8)
        for secret in ("alice-pw", "bob-pw", base64.b64encode(b"alice:alice-pw").decode()):
            assert secret not in text


def test_a_secure_fleet_moves_private_layers_and_each_bridge_still_asks_the_upstream(token_origin, tmp_path):
    """Secure fleet mode: bridge 2 gets alice's private layers from bridge 1 (over TLS), then answers
    them only to alice; the origin sent each private layer once."""
    o = token_origin
    private_gets = lambda: [p for m, p, status, _ in o.access_log() if m == "GET" and status == 200  # noqa: E731
                            and p.startswith("/v2/private/app/blobs/")]
    before = private_gets()
    pki = FleetPKI(tmp_path / "fleet")
    tcert = pki.host("tracker")
    made = []
    try:
        tracker = devstack.start_tracker(tmp_path / "tracker", tls=(tcert.cert, tcert.key, pki.ca),
                                         extra=("--interval", "5", "--lease-ttl", "10"))
        made.append(tracker)
        for i in (1, 2):
            made.append(devstack.start_bridge(tmp_path, upstream=o.url, tracker=tracker.url, name=f"bridge-s{i}",
                                              fleet=pki, store=tmp_path / f"store-s{i}",
                                              extra=("--host-id", f"s{i}", "--tiny-blob-bytes", "65536")))
        b1, b2 = made[1:]
        pull_all(b1, o.private_img, "private/app", bearer(token(b1, "alice", "private/app")))
        tls_kw = {"verify": str(pki.ca), "cert": tcert.pair}
        wait_for(lambda: all(requests.get(f"{tracker.url}/metainfo/{layer.digest}", timeout=10,
                                          **tls_kw).status_code == 200 for layer in o.private_img.layers),
                 what="private layers published in the secure fleet")
        for extra in (None, bearer(token(b2, None, "private/app")), bearer(token(b2, "bob", "private/app"))):
            for method, path, headers in paths(o.private_img, "private/app"):
                assert_refused(call(b2, method, path, headers, extra))
        pull_all(b2, o.private_img, "private/app", bearer(token(b2, "alice", "private/app")))
        st = stats(b2)
        size = sum(len(layer.data) for layer in o.private_img.layers)
        assert st["fetched"]["peer"] + st["fetched"]["relay"] >= size, st["fetched"]
        assert st["fetched"]["origin"] == 0, st["fetched"]
        gets = private_gets()[len(before):]
        for layer in o.private_img.layers:
            assert gets.count(f"/v2/private/app/blobs/{layer.digest}") == 1, gets
        # Bridge 2 holds them now; a public name still shows nothing of them.
        for blob in o.private_img.layers:
            assert_refused(call(b2, "GET", f"/v2/public/app/blobs/{blob.digest}", {}), "BLOB_UNKNOWN")
    finally:
        stop_all(made)
