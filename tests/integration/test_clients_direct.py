"""The real clients against a plain docker-registry (no bridge).

These check the harness itself — dockerd with registry-mirrors, containerd
with a hosts.toml, skopeo with a registries.conf mirror with a path prefix —
so that a failure in the bridge tests is about the bridge, not the set-up.
"""
import pytest

from layerswarm.bridge.devstack import clients
from layerswarm.bridge.devstack import daemons as devstack
from layerswarm.bridge.format.errors import DaemonError
from tests.fixtures import origin_blob_gets, require_root
from tests.integration import helpers

pytestmark = pytest.mark.slow


def test_dockerd_mirror_plain_registry(docker, origin):
    name = helpers.unique("direct")
    img = helpers.push_image(origin.url, f"library/{name}")
    docker.set_mirrors([origin.url])
    docker.pull(f"{name}:v1")
    assert docker.image_inspect(f"{name}:v1")["Id"] == str(img.config.digest)
    gets = origin_blob_gets(origin, f"library/{name}")
    assert set(gets) == {str(b.digest) for b in img.blobs}


def test_dockerd_without_mirror_stays_on_loopback(docker):
    # Docker Hub is behind a dead loopback proxy: the pull fails at once, no DNS, no egress.
    with pytest.raises(DaemonError) as exc:
        docker.docker("pull", "layerswarm-no-such-image:v1", timeout=60)
    assert "127.0.0.1:9" in str(exc.value) or "proxy" in str(exc.value).lower()


def test_containerd_hosts_dir_plain_registry(containerd, origin, tmp_path):
    name = helpers.unique("direct")
    img = helpers.push_image(origin.url, f"team/{name}")
    host = "registry.layerswarm.test"
    clients.write_hosts_toml(tmp_path / "hosts", host, origin.url, fallback=False)
    containerd.pull(f"{host}/team/{name}:v1", tmp_path / "hosts")
    assert f"{host}/team/{name}:v1" in containerd.ctr("images", "ls", "-q").split()
    # containerd names the registry it wanted in ?ns= on every request
    paths = [p for m, p, s, _ in devstack.access_log(origin.log) if f"/team/{name}/" in p and m == "GET"]
    assert paths and all(f"ns={host}" in p for p in paths), paths
    assert set(origin_blob_gets(origin, f"team/{name}")) == {str(b.digest) for b in img.blobs}


def test_skopeo_mirror_with_path_prefix_plain_registry(origin, tmp_path):
    name = helpers.unique("direct")
    img = helpers.push_image(origin.url, f"some/prefix/{name}")
    conf = clients.write_registries_conf(tmp_path / "registries.conf", "registry.layerswarm.test",
                                            origin.url.split("://", 1)[1] + "/some/prefix")
    out = tmp_path / "out"
    clients.skopeo_copy(conf, f"docker://registry.layerswarm.test/{name}:v1", f"dir:{out}", tmp_path / "sk")
    for b in img.blobs:
        assert (out / b.digest.hex).read_bytes() == b.data


def test_dockerd_that_cannot_start_fails_with_its_log(tmp_path):
    require_root()
    with pytest.raises(DaemonError) as exc:
        clients.DockerDaemon(tmp_path / "bad", extra_config={"no-such-directive": True})
    msg = str(exc.value)
    assert "dockerd exited" in msg and "no-such-directive" in msg, msg
