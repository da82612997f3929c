"""Fixtures for end-to-end tests: dockerd, containerd, skopeo, bridges, registries.

dockerd and containerd start once per session (cheap here, ~0.5 s, but each
starts a containerd); every test gets them with no images left over from the
previous one.  A test points dockerd at its own bridge with
``docker.set_mirrors([bridge.url])`` (config rewrite + SIGHUP reload).
"""
from __future__ import annotations

import signal

import pytest

from layerswarm.bridge.devstack import daemons as devstack
from tests import procs
from tests.integration import daemons


@pytest.fixture(scope="session")
def dockerd_session(tmp_path_factory):
    daemons.require_root()
    d = devstack.start_dockerd(tmp_path_factory.mktemp("dockerd"))
    yield d
    d.stop()


@pytest.fixture
def docker(dockerd_session):
    """The session dockerd, no images, no mirrors; images removed after the test."""
    if not dockerd_session.alive():
        pytest.fail(f"dockerd died:\n{dockerd_session.log_text()}")
    dockerd_session.remove_all_images()
    if dockerd_session.mirrors:
        dockerd_session.set_mirrors([])
    yield dockerd_session
    dockerd_session.remove_all_images()


@pytest.fixture(scope="session")
def containerd_session(tmp_path_factory):
    daemons.require_root()
    c = devstack.Containerd(tmp_path_factory.mktemp("containerd"))
    yield c
    c.stop()


@pytest.fixture
def containerd(containerd_session):
    containerd_session.remove_all_images()
    yield containerd_session
    containerd_session.remove_all_images()


@pytest.fixture
def origin2(tmp_path):
    """A second docker-registry (reached through a bridge alias)."""
    p, url = procs.start_registry(tmp_path / "origin2")
    p.url = url
    yield p
    p.stop()


@pytest.fixture
def tracker(tmp_path):
    """A real ``layerswarm tracker`` process (memory store); ``.url``."""
    t = devstack.start_tracker(tmp_path / "tracker")
    yield t
    t.stop()


@pytest.fixture
def start_bridge(tmp_path):
    """Factory: ``start_bridge(upstream=..., aliases={...})`` -> a running ``layerswarm bridge``."""
    started = []

    def start(**kw):
        b = devstack.start_bridge(tmp_path / f"bridge{len(started)}", **kw)
        started.append(b)
        return b
    yield start
    for b in started:  # graceful stops take seconds: let them run side by side
        b.signal(signal.SIGTERM)
    for b in started:
        b.stop()


@pytest.fixture(params=["mirror", "swarm"])
def bridge_mode(request):
    """Run a test against a plain mirror bridge and against one that joins a swarm (with a tracker).

    Yields the extra ``start_bridge`` keyword arguments for the mode.
    """
    if request.param == "swarm":
        t = request.getfixturevalue("tracker")
        return {"tracker": t.url}
    return {}
