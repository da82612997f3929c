"""``layerswarm hosts-toml`` (the bridge DaemonSet's init step) with a real containerd: pulls go to the bridge,
and to the registry itself when the bridge is down."""
from __future__ import annotations

import pytest

from layerswarm.bridge.devstack import daemons as devstack
from tests.fixtures import origin_blob_gets
from tests.integration import helpers

pytestmark = pytest.mark.slow


def test_containerd_pulls_through_the_bridge_then_falls_back_to_the_registry(containerd, origin, start_bridge,
                                                                            tmp_path):
    bridge = start_bridge(upstream=origin.url)
    name = helpers.unique("team/app")
    img = helpers.push_image(origin.url, name)
    host = origin.url.split("://", 1)[1]
    hosts = tmp_path / "certs.d"
    devstack.run(devstack.layerswarm_argv("hosts-toml", "--hosts-dir", hosts, "--mirror", bridge.url, origin.url),
                 what="layerswarm hosts-toml")
    ref = f"{host}/{name}:v1"

    containerd.pull(ref, hosts)
    assert ref in containerd.ctr("images", "ls", "-q").split()
    helpers.assert_bridge_served(bridge, img)
    assert set(origin_blob_gets(origin, name)) == {str(b.digest) for b in img.blobs}

    # The registry is the fallback: with the bridge gone the same file still pulls, from the origin.
    containerd.remove_all_images()
    bridge.stop()
    before = sum(origin_blob_gets(origin, name).values())
    containerd.pull(ref, hosts)
    assert ref in containerd.ctr("images", "ls", "-q").split()
    assert sum(origin_blob_gets(origin, name).values()) >= before + len(img.blobs)
