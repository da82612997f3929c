"""The bridge as a pass-through mirror: real docker-registry origins, a real bridge process (slow)."""
from __future__ import annotations

import json
import socket
import time

import pytest
import requests

from layerswarm.bridge.devstack import imagegen
from layerswarm.bridge.format.digest import Digest
from layerswarm.bridge.devstack import daemons as devstack
from tests.fixtures import stats, upstream_count

pytestmark = pytest.mark.slow

DOCKERD_ACCEPTS = [  # dockerd sends these as six separate Accept headers
    imagegen.MT_DOCKER_MANIFEST, imagegen.MT_DOCKER_LIST, imagegen.MT_OCI_MANIFEST, imagegen.MT_OCI_INDEX,
    "application/vnd.docker.distribution.manifest.v1+prettyjws", "application/json",
]


@pytest.fixture(scope="module")
def env(registry_factory, tmp_path_factory):
    origin = registry_factory()
    second = registry_factory()
    img = imagegen.make_image((300_000, 5_000_000), seed=b"api")
    imagegen.push(origin.url, "library/app", "v1", img)
    oci = imagegen.make_image((40_000,), seed=b"oci-amd64", oci=True)
    oci_arm = imagegen.make_image((41_000,), seed=b"oci-arm64", oci=True, arch="arm64")
    idx = imagegen.make_index([oci, oci_arm], [("linux", "amd64"), ("linux", "arm64")], oci=True)
    imagegen.push(origin.url, "library/multi", "v1", idx)
    d1 = imagegen.make_image((50_000,), seed=b"list-a")
    d2 = imagegen.make_image((51_000,), seed=b"list-b", arch="arm64")
    dlist = imagegen.make_index([d1, d2], [("linux", "amd64"), ("linux", "arm64")], oci=False)
    imagegen.push(origin.url, "library/dlist", "v1", dlist)
    big = imagegen.make_image((24 << 20,), seed=b"big")
    imagegen.push(origin.url, "library/big", "v1", big)
    other = imagegen.make_image((70_000,), seed=b"second")
    imagegen.push(second.url, "team/tool", "v2", other)
    b = devstack.start_bridge(tmp_path_factory.mktemp("bridge"), upstream=origin.url, aliases={"second": second.url},
                              extra=("--tag-ttl", "2", "--read-timeout", "20"))
    yield dict(origin=origin, second=second, bridge=b, img=img, idx=idx, oci=oci, dlist=dlist, big=big,
               other=other)
    b.stop()


def get(b, path, **kw):
    kw.setdefault("timeout", 30)
    return requests.get(b.url + path, **kw)


def manifest_headers():
    return [("Accept", a) for a in DOCKERD_ACCEPTS]


def raw_request(url_base, method, path, headers):
    """Send a request with repeated headers (requests folds duplicates)."""
    host, port = url_base.split("//")[1].split(":")
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers]
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *hdr_lines = head.decode().split("\r\n")
    hdrs = {}
    for line in hdr_lines:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return int(status_line.split()[1]), hdrs, body


def test_base(env):
    # dockerd learns the auth scheme only from /v2/: a Bearer challenge whose realm is this bridge.
    b = env["bridge"]
    r = get(b, "/v2/")
    assert r.status_code == 401 and r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert r.headers["WWW-Authenticate"] == f'Bearer realm="{b.url}/_layerswarm/token",service="layerswarm"'
    tok = get(b, "/_layerswarm/token?service=layerswarm").json()["token"]
    r = get(b, "/v2/", headers={"Authorization": f"Bearer {tok}"})
    assert r.status_code == 200 and r.json() == {}


def test_manifest_head_and_get_with_six_accept_headers(env):
    b, img = env["bridge"], env["img"]
    status, h, body = raw_request(b.url, "HEAD", "/v2/library/app/manifests/v1", manifest_headers())
    assert status == 200 and body == b""
    assert h["docker-content-digest"] == str(img.manifest_digest)
    assert h["content-type"] == imagegen.MT_DOCKER_MANIFEST
    assert int(h["content-length"]) == len(img.manifest)
    status, h, body = raw_request(b.url, "GET", f"/v2/library/app/manifests/{img.manifest_digest}",
                                  manifest_headers())
    assert status == 200 and body == img.manifest
    assert h["docker-content-digest"] == str(img.manifest_digest)
    assert "content-encoding" not in h
    # by tag with GET, and HEAD by digest (now cached on disk)
    r = get(b, "/v2/library/app/manifests/v1", headers={"Accept": ", ".join(DOCKERD_ACCEPTS)})
    assert r.status_code == 200 and r.content == img.manifest
    r = requests.head(f"{b.url}/v2/library/app/manifests/{img.manifest_digest}", timeout=10)
    assert r.status_code == 200 and int(r.headers["Content-Length"]) == len(img.manifest)
    st = stats(b)
    assert st["manifests"]["hit"] >= 2
    assert list((b.store / "manifests" / "sha256").glob(img.manifest_digest.hex))


def test_single_component_name_via_default(env):
    # plain `docker pull localhost:PORT/app` style: name without library/ on a non-Hub upstream
    r = get(env["bridge"], "/v2/library/app/manifests/v1", headers={"Accept": imagegen.MT_DOCKER_MANIFEST})
    assert r.status_code == 200


def test_oci_index_and_children(env):
    b, idx, oci = env["bridge"], env["idx"], env["oci"]
    r = get(b, "/v2/library/multi/manifests/v1", headers={"Accept": imagegen.MT_OCI_INDEX})
    assert r.status_code == 200 and r.content == idx.manifest
    assert r.headers["Content-Type"] == imagegen.MT_OCI_INDEX
    assert r.headers["Docker-Content-Digest"] == str(idx.manifest_digest)
    r = get(b, f"/v2/library/multi/manifests/{oci.manifest_digest}", headers={"Accept": imagegen.MT_OCI_MANIFEST})
    assert r.status_code == 200 and r.content == oci.manifest
    assert r.headers["Content-Type"] == imagegen.MT_OCI_MANIFEST
    r = get(b, f"/v2/library/multi/blobs/{oci.layers[0].digest}")
    assert r.status_code == 200 and r.content == oci.layers[0].data


def test_docker_manifest_list(env):
    b, dl = env["bridge"], env["dlist"]
    accept = ", ".join([imagegen.MT_DOCKER_MANIFEST, imagegen.MT_DOCKER_LIST])
    r = get(b, "/v2/library/dlist/manifests/v1", headers={"Accept": accept})
    assert r.status_code == 200 and r.content == dl.manifest
    assert r.headers["Content-Type"] == imagegen.MT_DOCKER_LIST


def test_manifest_unknown(env):
    r = get(env["bridge"], "/v2/library/app/manifests/nope")
    assert r.status_code == 404 and r.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    r = get(env["bridge"], "/v2/library/app/manifests/sha256:" + "0" * 64)
    assert r.status_code == 404 and r.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


def test_blob_get_streams_correct_bytes(env):
    b, img = env["bridge"], env["img"]
    before = stats(b)["blob_bytes"]["origin"]
    for blob in img.blobs:
        r = get(b, f"/v2/library/app/blobs/{blob.digest}", headers={"Accept-Encoding": "gzip"})
        assert r.status_code == 200, r.text
        assert r.content == blob.data
        assert "Content-Encoding" not in r.headers
        assert int(r.headers["Content-Length"]) == len(blob.data)
        assert r.headers["Docker-Content-Digest"] == str(blob.digest)
    assert stats(b)["blob_bytes"]["origin"] - before == sum(len(x.data) for x in img.blobs)


def test_blob_unknown(env):
    r = get(env["bridge"], "/v2/library/app/blobs/sha256:" + "1" * 64)
    assert r.status_code == 404 and r.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
    r = requests.head(env["bridge"].url + "/v2/library/app/blobs/sha256:" + "1" * 64, timeout=10)
    assert r.status_code == 404


def test_blob_head_never_downloads(env):
    b, origin, big = env["bridge"], env["origin"], env["big"]
    layer = big.layers[0]
    gets_before = upstream_count(b, "GET", "blob")
    r = requests.head(f"{b.url}/v2/library/big/blobs/{layer.digest}", timeout=10,
                      headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200 and r.content == b""
    assert int(r.headers["Content-Length"]) == len(layer.data)
    assert r.headers["Docker-Content-Digest"] == str(layer.digest)
    assert upstream_count(b, "GET", "blob") == gets_before
    assert upstream_count(b, "HEAD", "blob") >= 1
    log = origin.log_text(tail=10**7)
    assert f"HEAD /v2/library/big/blobs/{layer.digest}" in log
    assert f"GET /v2/library/big/blobs/{layer.digest}" not in log
    # HEAD with a Range: 206 headers, still no body
    r = requests.head(f"{b.url}/v2/library/big/blobs/{layer.digest}", headers={"Range": "bytes=10-"}, timeout=10)
    assert r.status_code == 206 and r.headers["Content-Range"] == f"bytes 10-{len(layer.data) - 1}/{len(layer.data)}"
    assert upstream_count(b, "GET", "blob") == gets_before


def test_range_206_and_416(env):
    b, img = env["bridge"], env["img"]
    blob = img.layers[1]
    n = len(blob.data)
    u = f"/v2/library/app/blobs/{blob.digest}"
    r = get(b, u, headers={"Range": "bytes=1000-"})
    assert r.status_code == 206 and r.content == blob.data[1000:]
    assert r.headers["Content-Range"] == f"bytes 1000-{n - 1}/{n}"
    r = get(b, u, headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == blob.data[10:20]
    assert r.headers["Content-Range"] == f"bytes 10-19/{n}" and r.headers["Content-Length"] == "10"
    r = get(b, u, headers={"Range": f"bytes={n - 5}-{n + 100}"})
    assert r.status_code == 206 and r.content == blob.data[-5:]
    r = get(b, u, headers={"Range": f"bytes={n}-"})
    assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{n}"


def test_resume_after_cut_connection(env):
    b, big = env["bridge"], env["big"]
    layer = big.layers[0]
    r = requests.get(f"{b.url}/v2/library/big/blobs/{layer.digest}", stream=True, timeout=30)
    assert r.status_code == 200
    got = b""
    for chunk in r.raw.stream(65536, decode_content=False):
        got += chunk
        if len(got) >= 3_000_000:
            break
    r.close()  # cut the connection mid-blob
    r = requests.get(f"{b.url}/v2/library/big/blobs/{layer.digest}", headers={"Range": f"bytes={len(got)}-"},
                     timeout=60)
    assert r.status_code == 206
    assert r.headers["Content-Range"] == f"bytes {len(got)}-{len(layer.data) - 1}/{len(layer.data)}"
    whole = got + r.content
    assert Digest.of_bytes(whole) == layer.digest


def test_alias_and_ns(env):
    b, other, second = env["bridge"], env["other"], env["second"]
    host = second.url.split("//")[1]
    for path in ("/v2/second/team/tool/manifests/v2", f"/v2/team/tool/manifests/v2?ns={host}"):
        r = get(b, path, headers={"Accept": imagegen.MT_DOCKER_MANIFEST})
        assert r.status_code == 200, (path, r.text)
        assert r.content == other.manifest
    layer = other.layers[0]
    r = get(b, f"/v2/second/team/tool/blobs/{layer.digest}")
    assert r.status_code == 200 and r.content == layer.data
    r = get(b, f"/v2/team/tool/blobs/{layer.digest}?ns={host}")
    assert r.status_code == 200 and r.content == layer.data
    # the default upstream does not have it
    r = get(b, f"/v2/team/tool/blobs/{layer.digest}")
    assert r.status_code == 404
    # ns=docker.io maps to the default upstream; unknown hosts are refused (not an open proxy)
    r = get(b, "/v2/library/app/manifests/v1?ns=docker.io", headers={"Accept": imagegen.MT_DOCKER_MANIFEST})
    assert r.status_code == 200
    r = get(b, "/v2/library/app/manifests/v1?ns=evil.example.com")
    assert r.status_code == 403 and r.json()["errors"][0]["code"] == "DENIED"


@pytest.mark.parametrize("path,code", [
    ("/v2/library/../etc/manifests/v1", "NAME_INVALID"),
    ("/v2/Library/App/manifests/v1", "NAME_INVALID"),
    ("/v2/library%2fapp/manifests/v1", "NAME_INVALID"),
    ("/v2/library%2Fapp/blobs/sha256:" + "a" * 64, "NAME_INVALID"),
    ("/v2/-bad/manifests/v1", "NAME_INVALID"),
    ("/v2/library/app/blobs/sha256:abc", "DIGEST_INVALID"),
    ("/v2/library/app/blobs/md5:" + "a" * 32, "DIGEST_INVALID"),
    ("/v2/library/app/blobs/latest", "DIGEST_INVALID"),
    ("/v2/library/app/manifests/sha256:xyz", "DIGEST_INVALID"),
    ("/v2/library/app/manifests/.bad", "TAG_INVALID"),
    ("/v2/library/app/manifests/" + "t" * 129, "TAG_INVALID"),
])
def test_bad_input_rejected_before_upstream(env, path, code):
    b = env["bridge"]
    before = sum(stats(b)["upstream_requests"].values())
    status, h, body = raw_request(b.url, "GET", path, [])
    assert status == 400, body
    assert json.loads(body)["errors"][0]["code"] == code
    assert sum(stats(b)["upstream_requests"].values()) == before


@pytest.mark.parametrize("path", ["/v2/_catalog", "/v2/library/app/tags/list/x", "/nope", "/v2/library/app"])
def test_unknown_paths(env, path):
    r = get(env["bridge"], path)
    assert r.status_code == 404
    assert r.json()["errors"][0]["code"]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_write_methods_405(env, method):
    b = env["bridge"]
    for path in ("/v2/library/app/blobs/uploads/", "/v2/library/app/manifests/v1",
                 "/v2/library/app/blobs/sha256:" + "a" * 64):
        r = requests.request(method, b.url + path, data=b"x", timeout=10)
        assert r.status_code == 405
        assert r.json()["errors"][0]["code"] == "UNSUPPORTED"


def test_metrics_endpoints(env):
    b = env["bridge"]
    get(b, "/v2/")
    text = get(b, "/metrics").text
    assert "layerswarm_bridge_requests_total" in text
    assert "layerswarm_bridge_blob_bytes_total" in text
    st = stats(b)
    assert st["requests"].get("base GET 200", 0) >= 1
    assert set(st["blob_bytes"]) >= {"origin", "store", "peer", "relay"}


def test_tag_answers_cached_briefly(env):
    b, origin = env["bridge"], env["origin"]
    img2 = imagegen.make_image((1000,), seed=b"retag-1")
    imagegen.push(origin.url, "library/retag", "t", img2)
    h = {"Accept": imagegen.MT_DOCKER_MANIFEST}
    assert get(b, "/v2/library/retag/manifests/t", headers=h).content == img2.manifest
    heads = upstream_count(b, "HEAD", "manifest")
    assert get(b, "/v2/library/retag/manifests/t", headers=h).content == img2.manifest
    assert upstream_count(b, "HEAD", "manifest") == heads  # answered from the tag cache
    img3 = imagegen.make_image((1000,), seed=b"retag-2")
    imagegen.push(origin.url, "library/retag", "t", img3)
    time.sleep(2.2)  # --tag-ttl 2
    assert get(b, "/v2/library/retag/manifests/t", headers=h).content == img3.manifest


def test_long_streams_do_not_starve_manifests(env):
    b, big, img = env["bridge"], env["big"], env["img"]
    layer = big.layers[0]
    streams = []
    for _ in range(3):
        r = requests.get(f"{b.url}/v2/library/big/blobs/{layer.digest}", stream=True, timeout=30)
        assert r.status_code == 200
        next(r.raw.stream(65536, decode_content=False))  # in flight, then stall the reader
        streams.append(r)
    try:
        t0 = time.monotonic()
        r = get(b, f"/v2/library/app/manifests/{img.manifest_digest}", headers={"Accept": img.manifest_media_type},
                timeout=10)
        assert r.status_code == 200 and r.content == img.manifest
        assert time.monotonic() - t0 < 3
        r = get(b, "/healthz", timeout=10)
        assert r.status_code == 200
    finally:
        for r in streams:
            r.close()
