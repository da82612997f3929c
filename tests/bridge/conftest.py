"""Fixtures for bridge tests: real docker-registry origins and real bridge processes."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import requests
from werkzeug.serving import make_server

from layerswarm.bridge.devstack import imagegen
from tests import procs


class Bridge:
    """A ``layerswarm bridge`` CLI process (gunicorn) on a free loopback port."""

    def __init__(self, tmp: Path, *args, env=None):
        self.port = procs.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.store = tmp / "store"
        self.proc = procs.Proc(procs.layerswarm_argv("bridge", "--listen", f"127.0.0.1:{self.port}",
                                                     "--store-dir", self.store, *args),
                               tmp / "bridge.log", env=env, name="layerswarm-bridge")
        self.proc.wait_http(self.url + "/v2/")

    def stats(self) -> dict:
        return requests.get(self.url + "/_layerswarm/stats", timeout=10).json()

    def upstream_count(self, method: str, kind: str) -> int:
        return sum(n for k, n in self.stats()["upstream_requests"].items()
                   if k.split()[1:3] == [method, kind])

    def stop(self):
        self.proc.stop()


@pytest.fixture
def start_bridge(tmp_path):
    made = []

    def start(*args, env=None, name="bridge"):
        b = Bridge(tmp_path / f"{name}{len(made)}", *args, env=env)
        made.append(b)
        return b
    yield start
    for b in made:
        b.stop()


@pytest.fixture(scope="module")
def registry_factory(tmp_path_factory):
    """Start extra real registries (module scope); returns (proc, url)."""
    made = []

    def start(extra_config: str = ""):
        tmp = tmp_path_factory.mktemp("registry")
        p, url = procs.start_registry(tmp, extra_config)
        p.url = url
        made.append(p)
        return p
    yield start
    for p in made:
        p.stop()


class ThreadServer:
    """A WSGI app on a real loopback socket in a thread (fake upstreams, token servers)."""

    def __init__(self, app, host="127.0.0.1"):
        self.server = make_server(host, 0, app, threaded=True)
        self.port = self.server.server_port
        self.url = f"http://{host}:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def thread_server():
    made = []

    def start(app, host="127.0.0.1"):
        s = ThreadServer(app, host)
        made.append(s)
        return s
    yield start
    for s in made:
        s.stop()


def push(url, repo, tag, image, session=None):
    return imagegen.push(url, repo, tag, image, session)


def wait_for(check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = check()
        if v:
            return v
        time.sleep(0.05)
    return check()
