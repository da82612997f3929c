"""Real registry clients pulling through a real ``layerswarm bridge`` process.

dockerd falls back to its upstream when a mirror errors (here: a dead
loopback proxy, so no pull leaves the host), containerd falls back per
request: every test asserts on the bridge's counters and the origin's access
log, not only on the pull succeeding.
"""
import hashlib
import secrets

import pytest
import requests

from layerswarm.bridge.devstack import imagegen
from layerswarm.bridge.devstack import clients
from layerswarm.bridge.devstack import daemons as devstack
from layerswarm.bridge.format.errors import DaemonError
from tests.fixtures import origin_blob_gets, stats
from tests.integration import helpers

pytestmark = pytest.mark.slow


def test_dockerd_mirror_pulls_library_image_through_bridge(docker, origin, start_bridge, bridge_mode):
    bridge = start_bridge(upstream=origin.url, **bridge_mode)
    name = helpers.unique("app")
    img = helpers.push_image(origin.url, f"library/{name}", layer_sizes=(1 << 20, 2 << 20, 300 << 10))
    docker.set_mirrors([bridge.url])

    docker.pull(f"{name}:v1")
    assert docker.image_inspect(f"{name}:v1")["Id"] == str(img.config.digest)
    st = helpers.assert_bridge_served(bridge, img)
    gets = origin_blob_gets(origin, f"library/{name}")
    assert gets == {str(b.digest): 1 for b in img.blobs}, "each blob leaves the origin exactly once"
    assert helpers.blob_bytes_from(st, "origin") >= sum(len(b.data) for b in img.layers)


def test_dockerd_second_pull_comes_from_bridge_store(docker, origin, tracker, start_bridge):
    bridge = start_bridge(upstream=origin.url, tracker=tracker.url)  # with a tracker the bridge keeps layers
    name = helpers.unique("again")
    img = helpers.push_image(origin.url, f"library/{name}", layer_sizes=(1 << 20, 200 << 10))
    docker.set_mirrors([bridge.url])
    docker.pull(f"{name}:v1")
    st = helpers.assert_bridge_served(bridge, img)
    gets = origin_blob_gets(origin, f"library/{name}")

    # Second pull (image removed locally): every blob comes from the bridge's store.
    docker.remove_all_images()
    docker.pull(f"{name}:v1")
    assert docker.image_inspect(f"{name}:v1")["Id"] == str(img.config.digest)
    st2 = helpers.assert_bridge_served(bridge, img, before=st)
    layer_gets = {str(b.digest): gets[str(b.digest)] for b in img.layers}
    now = origin_blob_gets(origin, f"library/{name}")
    assert {d: now[d] for d in layer_gets} == layer_gets, "second pull must not fetch layers from the origin"
    assert helpers.blob_bytes_from(st2, "store") - helpers.blob_bytes_from(st, "store") >= \
        sum(len(b.data) for b in img.layers)


def test_dockerd_pulls_alias_path_through_bridge(docker, origin, origin2, start_bridge, bridge_mode):
    bridge = start_bridge(upstream=origin.url, aliases={"second": origin2.url}, **bridge_mode)
    name = helpers.unique("team/app")
    img = helpers.push_image(origin2.url, name)
    ref = f"localhost:{bridge.port}/second/{name}:v1"

    docker.pull(ref)
    assert docker.image_inspect(ref)["Id"] == str(img.config.digest)
    helpers.assert_bridge_served(bridge, img)
    assert set(origin_blob_gets(origin2, name)) == {str(b.digest) for b in img.blobs}
    assert origin_blob_gets(origin) == {}, "the default upstream is not involved"


def test_containerd_hosts_dir_through_bridge_ns(containerd, origin, origin2, start_bridge, tmp_path, bridge_mode):
    bridge = start_bridge(upstream=origin.url, aliases={"second": origin2.url}, **bridge_mode)
    name = helpers.unique("team/app")
    img = helpers.push_image(origin2.url, name)
    host = origin2.url.split("://", 1)[1]  # 127.0.0.1:PORT -> ?ns=127.0.0.1:PORT -> alias "second"
    clients.write_hosts_toml(tmp_path / "hosts", host, bridge.url, fallback=False)

    containerd.pull(f"{host}/{name}:v1", tmp_path / "hosts")
    assert f"{host}/{name}:v1" in containerd.ctr("images", "ls", "-q").split()
    helpers.assert_bridge_served(bridge, img)
    assert set(origin_blob_gets(origin2, name)) == {str(b.digest) for b in img.blobs}


def test_skopeo_registries_conf_mirror_prefix_through_bridge(origin, origin2, start_bridge, tmp_path, bridge_mode):
    bridge = start_bridge(upstream=origin.url, aliases={"second": origin2.url}, **bridge_mode)
    name = helpers.unique("app")
    img = helpers.push_image(origin2.url, f"team/{name}", oci=True)
    conf = clients.write_registries_conf(tmp_path / "registries.conf", "registry.layerswarm.test",
                                            f"127.0.0.1:{bridge.port}/second/team")
    out = tmp_path / "out"
    # The primary registry is behind the dead proxy: only the mirror can answer.
    clients.skopeo_copy(conf, f"docker://registry.layerswarm.test/{name}:v1", f"dir:{out}", tmp_path / "sk")
    for b in img.blobs:
        assert (out / b.digest.hex).read_bytes() == b.data
    helpers.assert_bridge_served(bridge, img)
    assert set(origin_blob_gets(origin2, f"team/{name}")) == {str(b.digest) for b in img.blobs}


@pytest.mark.parametrize("oci", [True, False], ids=["oci-index", "docker-manifest-list"])
def test_dockerd_pulls_multi_platform_index(docker, origin, start_bridge, oci, bridge_mode):
    bridge = start_bridge(upstream=origin.url, **bridge_mode)
    name = helpers.unique("multi")
    amd64 = imagegen.make_image((512 << 10, 256 << 10), seed=secrets.token_bytes(8), oci=oci, arch="amd64")
    arm64 = imagegen.make_image((384 << 10,), seed=secrets.token_bytes(8), oci=oci, arch="arm64")
    index = imagegen.make_index([arm64, amd64], [("linux", "arm64"), ("linux", "amd64")], oci=oci)
    imagegen.push(origin.url, f"library/{name}", "v1", index)
    docker.set_mirrors([bridge.url])

    docker.pull(f"{name}:v1")
    info = docker.image_inspect(f"{name}:v1")
    assert info["Id"] == str(amd64.config.digest) and info["Architecture"] == "amd64"
    helpers.assert_bridge_served(bridge, amd64)
    gets = origin_blob_gets(origin, f"library/{name}")
    assert set(gets) == {str(b.digest) for b in amd64.blobs}, "only linux/amd64 blobs are fetched"


def test_blob_range_resume_against_bridge_process(origin, start_bridge, bridge_mode):
    bridge = start_bridge(upstream=origin.url, **bridge_mode)
    name = helpers.unique("range")
    img = helpers.push_image(origin.url, f"library/{name}", layer_sizes=(3 << 20,))
    layer = img.layers[0]
    url = f"{bridge.url}/v2/library/{name}/blobs/{layer.digest}"
    total = len(layer.data)

    # First attempt cut mid-way by the client (as when dockerd's connection drops).
    got = b""
    with requests.get(url, stream=True, timeout=60) as r:
        assert r.status_code == 200
        assert int(r.headers["Content-Length"]) == total
        for chunk in r.iter_content(64 << 10):
            got += chunk
            if len(got) >= total // 3:
                break
    n = len(got)
    assert 0 < n < total

    r = requests.get(url, headers={"Range": f"bytes={n}-"}, timeout=60)
    assert r.status_code == 206, r.status_code
    assert r.headers["Content-Range"] == f"bytes {n}-{total - 1}/{total}"
    assert int(r.headers["Content-Length"]) == total - n
    whole = got + r.content
    assert hashlib.sha256(whole).hexdigest() == layer.digest.hex
    assert "Content-Encoding" not in r.headers

    # A ranged GET also works when the blob is already in the store.
    r = requests.get(url, headers={"Range": "bytes=10-19"}, timeout=60)
    assert r.status_code == 206 and r.content == layer.data[10:20]
    assert r.headers["Content-Range"] == f"bytes 10-19/{total}"


def test_dockerd_resumes_a_cut_blob_with_range_through_bridge(docker, origin, start_bridge, bridge_mode):
    from tests.integration.cutproxy import CutProxy
    bridge = start_bridge(upstream=origin.url, **bridge_mode)
    name = helpers.unique("cut")
    img = helpers.push_image(origin.url, f"library/{name}", layer_sizes=(4 << 20,))
    layer = img.layers[0]
    proxy = CutProxy(bridge.port, str(layer.digest), cut_after=1 << 20)
    try:
        docker.set_mirrors([proxy.url])
        docker.pull(f"{name}:v1")
    finally:
        proxy.close()
    assert docker.image_inspect(f"{name}:v1")["Id"] == str(img.config.digest)
    assert proxy.cuts == 1
    ranges = proxy.ranges_for(str(layer.digest))
    assert ranges and ranges[0].startswith("bytes=") and ranges[0].endswith("-"), proxy.requests
    assert 0 < int(ranges[0][len("bytes="):-1]) <= 1 << 20
    st = stats(bridge)
    assert st["requests"].get("blob GET 206", 0) >= 1, st


def test_dockerd_pull_of_unknown_image_fails_and_stays_on_loopback(docker, origin, start_bridge):
    bridge = start_bridge(upstream=origin.url)
    docker.set_mirrors([bridge.url])
    name = helpers.unique("missing")
    with pytest.raises(DaemonError):
        docker.docker("pull", f"{name}:v1", timeout=120)
    st = stats(bridge)
    # dockerd asked the mirror first; its fallback to Docker Hub hit the dead loopback proxy
    assert any(k.startswith("manifest ") and k.endswith(" 404") for k in st["requests"]), st
    assert [p for m, p, s, _ in devstack.access_log(origin.log) if name in p], "the bridge asked the origin"


def test_dockerd_second_host_gets_layers_from_peers(docker, origin, tracker, start_bridge):
    """Two hosts (two bridges, one tracker): the second pull's layers come from the first bridge."""
    first = start_bridge(upstream=origin.url, tracker=tracker.url)
    second = start_bridge(upstream=origin.url, tracker=tracker.url)
    name = helpers.unique("p2p")
    img = helpers.push_image(origin.url, f"library/{name}", layer_sizes=(3 << 20, 2 << 20))
    layer_bytes = sum(len(b.data) for b in img.layers)

    docker.set_mirrors([first.url])
    docker.pull(f"{name}:v1")
    helpers.assert_bridge_served(first, img)
    gets = origin_blob_gets(origin, f"library/{name}")
    assert all(gets.get(str(b.digest)) == 1 for b in img.layers), gets

    docker.remove_all_images()
    docker.set_mirrors([second.url])
    docker.pull(f"{name}:v1")
    assert docker.image_inspect(f"{name}:v1")["Id"] == str(img.config.digest)
    st = helpers.assert_bridge_served(second, img)
    assert helpers.blob_bytes_from(st, "peer") + helpers.blob_bytes_from(st, "relay") >= layer_bytes, st
    now = origin_blob_gets(origin, f"library/{name}")
    assert all(now.get(str(b.digest)) == 1 for b in img.layers), f"layers left the origin again: {now}"
