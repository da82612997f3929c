"""The tests' one house: every process, server and peer a test starts, and the helpers to look at them.

Processes (tracker, bridge, docker-registry origin, redis, dockerd, containerd) start through
``layerswarm.bridge.devstack`` (daemons.py, clients.py, tokenserver.py) on free loopback ports,
each with its own directory and log, and stop at teardown; only slow tests use them (and the
slow-loris crowds of devstack/slowclients.py).  The fast loop uses the real apps in this process:
the tracker app, bridge apps and the token server served on a loopback port from a thread, peers
with their own libtorrent session on loopback.  ``tests/conftest.py`` loads this module as a
plugin, so every fixture here is available to every test.  It is long on purpose: one place to
look for how any test starts anything.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import secrets
import signal
import subprocess
import threading
import time
import warnings
from pathlib import Path

import pytest
import requests
from flask import Flask, Response, request

from layerswarm.bridge.devstack import clients, imagegen
from layerswarm.bridge.devstack import daemons as devstack
from layerswarm.bridge.devstack.certs import FleetPKI, HostCert  # noqa: F401 - the tests take them from here
from layerswarm.bridge.devstack.threadserver import ThreadServer
from layerswarm.bridge.devstack.tokenserver import TokenServer, start_token_registry
from layerswarm.bridge.format.digest import Digest

free_port = devstack.free_port

# Generous: a loaded 2-core CI machine.
FLEET_TIMEOUTS = ("--stall-timeout", "20", "--relay-timeout", "15", "--lease-ttl", "10", "--read-timeout", "20")


# --------------------------------------------------------------------------- small helpers

def blob_bytes(size: int, seed: bytes = b"blob") -> bytes:
    return hashlib.shake_256(seed).digest(size)


def wait_for(check, timeout: float = 60, what: str = "condition", step: float = 0.1):
    """``check()``'s first true value; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = check()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stats(bridge) -> dict:
    """A bridge's JSON counters, for a bridge process or a bridge app served on loopback."""
    return devstack.bridge_stats(bridge.url)


def upstream_count(bridge, method: str, kind: str) -> int:
    """Requests of ``method`` for ``kind`` (manifest, blob) the bridge sent to its upstreams."""
    return sum(n for k, n in stats(bridge)["upstream_requests"].items() if k.split()[1:3] == [method, kind])


def origin_blob_gets(origin, repo: str | None = None) -> dict:
    """digest -> number of successful (200/206) blob GETs a docker-registry origin served."""
    out: dict = {}
    for path, status, _ in devstack.blob_gets(origin.log, repo):
        if status in (200, 206):
            d = path.split("?", 1)[0].rsplit("/", 1)[1]
            out[d] = out.get(d, 0) + 1
    return out


def keep(made: list, thing):
    """``thing``, remembered in ``made`` for a factory fixture's teardown."""
    made.append(thing)
    return thing


def stop_all(made: list) -> None:
    """Stop what a factory fixture started; processes get SIGTERM together first (graceful stops take seconds)."""
    for thing in made:
        if isinstance(thing, devstack.Daemon):
            thing.signal(signal.SIGTERM)
    for thing in made:
        thing.stop()


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")


def run_cli(*args) -> subprocess.CompletedProcess:
    """``layerswarm ARGS`` in this process: (returncode, stdout, stderr) like a finished subprocess.

    The commands install their own SIGINT/SIGTERM handlers; pytest's are put back afterwards.
    """
    from layerswarm.bridge.cli.main import main
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as exc:  # argparse
                rc = exc.code if isinstance(exc.code, int) else 1
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    return subprocess.CompletedProcess(argv, rc, out.getvalue(), err.getvalue())


class PeerSocket:
    """Stands in for ``environ['gunicorn.socket']`` of a TLS connection in the Flask test client:
    ``getpeercert()`` is what a verified fleet certificate would give."""

    def __init__(self, name: str, serial: str = "1A2B", dns=(), ips=("127.0.0.1",)):
        sans = tuple(("DNS", d) for d in (name, *dns, "*")) + tuple(("IP Address", a) for a in ips)
        self.cert = {"subject": ((("commonName", name),),), "serialNumber": serial, "subjectAltName": sans}

    def getpeercert(self) -> dict:
        return self.cert


def fleet_environ(name: str, **kw) -> dict:
    """``environ_base`` for the Flask test client: a caller showing a fleet certificate for ``name``."""
    return {"gunicorn.socket": PeerSocket(name, **kw), "REMOTE_ADDR": "127.0.0.1"}


# --------------------------------------------------------------------------- in-process servers

class LocalTracker(ThreadServer):
    """The real tracker app (``create_app`` with options by field name) on a loopback port in this process.

    libtorrent announces to it (the announce path starts with ``/announce``, as libtorrent wants
    of a loopback tracker) and peers publish to it.
    """

    live: set = set()  # started and not yet stopped

    def __init__(self, **config):
        from layerswarm.tracker.app import create_app
        super().__init__(create_app({"interval": 5, "lease_ttl": 10, **config}))
        LocalTracker.live.add(self)

    def stop(self) -> None:
        if self in LocalTracker.live:
            LocalTracker.live.discard(self)
            super().stop()


def new_peer(store_dir, tracker_url: str, host_id: str, stall_timeout: float = 20, session: dict | None = None, **kw):
    """A Peer on loopback (any free BitTorrent ports): the one place tests build one; ``session``:
    more SessionSection fields."""
    from layerswarm.bridge.config import SessionSection, StreamSection
    from layerswarm.bridge.node.peer import Peer
    return Peer.open(str(store_dir), tracker_url, host_id=host_id,
                     session=SessionSection(peer_listen="127.0.0.1:0", peer_ssl_listen="127.0.0.1:0",
                                             **(session or {})),
                     stream=StreamSection(stall_timeout=stall_timeout), **kw)


def add_blob(peer, data: bytes):
    """Store, publish and seed ``data`` on ``peer`` (in 1 MiB chunks)."""
    return peer.add_blob([data[i:i + (1 << 20)] for i in range(0, len(data), 1 << 20)], len(data),
                         Digest.of_bytes(data))


def bridge_config(*argv):
    """The bridge's configuration for ``layerswarm bridge ARGV`` (flags as on the command line)."""
    from layerswarm.bridge import config as bconfig
    from layerswarm.bridge.cli import bridge as bridge_cmd
    parser = argparse.ArgumentParser()
    bridge_cmd.add_arguments(parser)
    return bconfig.from_args(parser.parse_args([str(a) for a in argv]))


def bridge_app(*argv):
    """The bridge's client app for ``layerswarm bridge ARGV``, in this process (with its peer given --tracker)."""
    from layerswarm.bridge.http import server
    from layerswarm.bridge.http.app import create_app
    cfg = bridge_config(*argv)
    return create_app(cfg, peer=server.build_peer(cfg) if cfg.swarm.tracker else None)


class LocalBridge:
    """A bridge served by its real listeners on loopback in this process: ``.url`` (client API),
    ``.fleet_url`` (the relay, with --tracker), ``.store``, ``.peer``, ``.app``."""

    def __init__(self, store: Path, *argv):
        from layerswarm.bridge.http import server
        self.store = Path(store)
        cfg = bridge_config("--store-dir", self.store, "--peer-listen", "127.0.0.1:0", "--peer-ssl-listen", "127.0.0.1:0",
                            "--listen", "127.0.0.1:0", "--fleet-listen", "127.0.0.1:0", *argv)
        self.peer = server.build_peer(cfg) if cfg.swarm.tracker else None
        self.listeners = server.build_listeners(cfg, self.peer)
        server.start_listeners(cfg, self.listeners)
        self.app = self.listeners[0].app
        self.port = self.listeners[0].port
        self.url = f"http://127.0.0.1:{self.port}"
        self.fleet_url = f"http://127.0.0.1:{self.listeners[1].port}" if self.peer is not None else None

    def stop(self) -> None:
        for listener in self.listeners:
            listener.stop()
        if self.peer is not None:
            self.peer.close()


# --------------------------------------------------------------------------- origins

def htpasswd_config(workdir: Path, user: str, password: str) -> str:
    """docker-registry ``auth:`` config for one htpasswd (bcrypt) user."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    workdir.mkdir(parents=True, exist_ok=True)
    hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
    (workdir / "htpasswd").write_text(f"{user}:{hashed}\n")
    return f"auth:\n  htpasswd:\n    realm: basic-realm\n    path: {workdir / 'htpasswd'}\n"


class TokenRegistry:
    """A Bearer-token registry in front of a real one: token server + token-enforcing proxy on
    127.0.0.1, blobs redirected to "object storage" on 127.0.0.2 (as Docker Hub does).

    Only ``user``/``password`` get tokens; a token is good for one repository scope and
    ``expires_in`` seconds.  Records ``token_requests`` and the ``storage_auth`` headers storage saw.
    """

    def __init__(self, origin_url: str, serve, user: str = "bob", password: str = "tokpass",
                 expires_in: float = 60):
        self.origin = origin_url
        self.creds = (user, password)
        self.expires_in = expires_in
        self.tokens = {}
        self.token_requests = []
        self.storage_auth = []
        self.lock = threading.Lock()
        self.storage = serve(self._storage_app(), host="127.0.0.2")
        self.registry = serve(self._registry_app())
        self.url = self.registry.url

    def _storage_app(self):
        app = Flask("storage")

        @app.route("/data/<path:p>", methods=["GET", "HEAD"])
        def data(p):
            with self.lock:
                self.storage_auth.append(request.headers.get("Authorization"))
            h = {k: v for k, v in request.headers.items() if k.lower() == "range"}
            r = requests.request(request.method, f"{self.origin}/v2/{p}", headers=h, stream=True, timeout=30)
            out = {k: r.headers[k] for k in ("Content-Length", "Content-Range") if k in r.headers}
            return Response(r.raw.stream(65536, decode_content=False), r.status_code, out,
                            content_type="application/octet-stream", direct_passthrough=True)
        return app

    def _registry_app(self):
        app = Flask("bearer-registry")

        @app.route("/token")
        def token():
            a = request.authorization
            with self.lock:
                self.token_requests.append((request.args.get("service"), request.args.get("scope")))
            if not a or (a.username, a.password) != self.creds:
                return Response("{}", 401)
            tok = secrets.token_hex(16)
            with self.lock:
                self.tokens[tok] = (request.args.get("scope"), time.monotonic() + self.expires_in)
            return {"access_token": tok, "expires_in": self.expires_in}

        def challenge(scope):
            extra = f',scope="{scope}"' if scope else ""
            return Response('{"errors":[{"code":"UNAUTHORIZED","message":"token please"}]}', 401,
                            {"WWW-Authenticate": f'Bearer realm="{self.registry.url}/token",'
                                                 f'service="test-registry"{extra}',
                             "Content-Type": "application/json"})

        @app.route("/v2/", defaults={"p": ""}, methods=["GET", "HEAD"])
        @app.route("/v2/<path:p>", methods=["GET", "HEAD"])
        def v2(p):
            repo = p.rsplit("/manifests/", 1)[0].rsplit("/blobs/", 1)[0] if p else ""
            scope = f"repository:{repo}:pull" if repo else ""
            auth = request.headers.get("Authorization", "")
            tok = auth[7:] if auth.startswith("Bearer ") else None
            with self.lock:
                ok = tok in self.tokens and self.tokens[tok][1] > time.monotonic() and self.tokens[tok][0] == scope
            if not ok:
                return challenge(scope)
            if "/blobs/" in p and request.method == "GET":
                return Response("", 307, {"Location": f"{self.storage.url}/data/{p}"})
            h = {"Accept": request.headers.get("Accept", "")}
            r = requests.request(request.method, f"{self.origin}/v2/{p}", headers=h, timeout=30)
            out = {k: r.headers[k] for k in ("Content-Type", "Docker-Content-Digest", "Content-Length")
                   if k in r.headers}
            resp = Response(r.content, r.status_code, out)
            if request.method == "HEAD" and "Content-Length" in r.headers:
                resp.headers["Content-Length"] = r.headers["Content-Length"]
            return resp
        return app


# --------------------------------------------------------------------------- the swarm fleet

class Fleet:
    """Bridge processes sharing one origin and one tracker (``tracker_url``: a URL, or several replicas'),
    each with its own store and host id."""

    def __init__(self, tmp: Path, origin_url: str, tracker_url):
        self.tmp = tmp
        self.origin_url = origin_url
        self.tracker_url = tracker_url
        self.bridges = []
        self.others = []   # raw seeders etc. started by a test: killed at teardown whatever happens

    def start_bridge(self, name: str, *extra, store=None):
        b = devstack.start_bridge(self.tmp, upstream=self.origin_url, tracker=self.tracker_url,
                                  store=store or self.tmp / f"store-{name}", name=f"bridge-{name}",
                                  extra=("--host-id", name, "--tiny-blob-bytes", "65536", *FLEET_TIMEOUTS, *extra))
        self.bridges.append(b)
        return b

    def start(self, argv, tag: str, ready):
        """Another process of the test (a raw seeder), up once ``ready(its log text)`` is true."""
        p = devstack.Daemon(argv, self.tmp / f"{tag}.log", name=tag)
        self.others.append(p)
        p.wait_until(lambda: ready(p.log_text()), what="ready")
        return p

    def close(self) -> None:
        for p in self.others:
            p.kill()
        stop_all(self.bridges)

    def assert_no_thread_died(self) -> None:
        """A background thread of a bridge (a fetch, a relay) must never die of an uncaught exception."""
        crashed = [b.name for b in self.bridges if "Exception in thread" in b.log_text(10 ** 8)]
        assert not crashed, f"uncaught exception in a bridge thread: {crashed} (see their logs in {self.tmp})"


# --------------------------------------------------------------------------- fixtures: in-process

@pytest.fixture(autouse=True)
def _fast_tests_start_no_process(request, monkeypatch):
    """The fast loop (``-m "not slow"``) starts no process: a test that needs one is marked slow."""
    if request.node.get_closest_marker("slow") is None:
        def refuse(*args, **kwargs):
            raise AssertionError("a test not marked slow started a process: mark it pytest.mark.slow "
                                 "or run the part in this process")
        monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)


@pytest.fixture
def thread_server():
    """Factory: ``thread_server(app, host=...)`` serves a WSGI app on loopback until the test ends."""
    made = []

    yield lambda app, host="127.0.0.1": keep(made, ThreadServer(app, host))
    stop_all(made)


PUBLISH_TOKEN = "s3cret-publish-token"


STORE_BACKENDS = ["memory", pytest.param("redis", marks=pytest.mark.slow),
                  pytest.param("cluster", marks=pytest.mark.slow)]


def store_url(request) -> str:
    """The --store of a backend param: memory, a fresh redis-server, or the module's Redis Cluster emptied."""
    if request.param == "memory":
        return "memory"
    if request.param == "redis":
        return request.getfixturevalue("redis_url")
    cluster = request.getfixturevalue("redis_cluster")
    cluster.flush()
    return cluster.url


@pytest.fixture(params=STORE_BACKENDS)
def tracker_store(request):
    """A tracker storage backend, once per backend (redis: a real redis-server; cluster: a real
    three-node Redis Cluster)."""
    from layerswarm.tracker.storage import open_store
    s = open_store(store_url(request))
    yield s
    s.close()


@pytest.fixture
def tracker_app():
    """The tracker's Flask app (memory store, publish token ``PUBLISH_TOKEN``), not served."""
    from layerswarm.tracker.app import create_app
    return create_app({"publish_token": PUBLISH_TOKEN, "quarantine_reports": 2, "interval": 60})


@pytest.fixture
def tracker_client(tracker_app):
    return tracker_app.test_client()


ADMIN_TOKEN = "s3cret-admin-token"


@pytest.fixture
def secure_app(tmp_path):
    """The tracker's Flask app in secure fleet mode (memory store, not served): ``.pki`` (FleetPKI),
    ``.deny`` (its deny list file, empty, read at every request), publish token ``PUBLISH_TOKEN`` (not taken in a secure
    fleet), admin token ``ADMIN_TOKEN``, 2 reports quarantine.  Callers show a certificate with
    ``environ_base=fleet_environ(name)``."""
    from layerswarm.tracker.app import create_app
    fleet = FleetPKI(tmp_path / "fleet")
    deny = tmp_path / "deny-serials"
    deny.write_text("")
    app = create_app({"tls_cert": str(tmp_path / "unused.pem"), "tls_key": str(tmp_path / "unused-key.pem"),
                      "fleet_ca": str(fleet.ca), "deny_serials": str(deny), "publish_token": PUBLISH_TOKEN,
                      "admin_token": ADMIN_TOKEN, "quarantine_reports": 2, "interval": 60})
    app.pki, app.deny = fleet, deny
    app.extensions["layerswarm"].fleet.deny.check_every = 0   # a changed deny list counts at once
    return app


@pytest.fixture
def publish_auth():
    return {"Authorization": f"Bearer {PUBLISH_TOKEN}"}


@pytest.fixture
def local_tracker(request):
    """The real tracker app on loopback in this process; ``@pytest.mark.tracker_config(**fields)``
    sets Config fields (e.g. ``quarantine_reports=1``)."""
    marker = request.node.get_closest_marker("tracker_config")
    t = LocalTracker(**(marker.kwargs if marker else {}))
    yield t
    t.stop()


@pytest.fixture
def make_peer(tmp_path):
    """Factory: ``make_peer(name, tracker_url, **Peer.open keywords)``; closed at teardown."""
    peers = []

    def make(name: str, tracker_url: str, **kw):
        p = new_peer(tmp_path / name, tracker_url, name, **kw)
        peers.append(p)
        return p
    yield make
    # A session's destructor holds the GIL while it waits (stop_tracker_timeout) for its farewell
    # announce, which a tracker in this process could then never answer: stop those trackers
    # first, so the announce is refused at once instead of waited for.
    for t in list(LocalTracker.live):
        t.stop()
    for p in peers:
        p.close()


@pytest.fixture
def local_bridge(tmp_path):
    """Factory: ``local_bridge(*flags)`` -> a bridge app served on loopback in this process."""
    made = []

    yield lambda *argv: keep(made, LocalBridge(tmp_path / f"local-bridge{len(made)}", *argv))
    stop_all(made)


# --------------------------------------------------------------------------- fixtures: processes

@pytest.fixture
def redis_url(tmp_path):
    p = devstack.start_redis(tmp_path / "redis")
    yield p.url
    p.stop()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):
    """A three-node Redis Cluster (devstack.RedisCluster): ``.url``, ``.flush()``."""
    c = devstack.RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    yield c
    c.stop()


@pytest.fixture(scope="module")
def registry_factory(tmp_path_factory):
    """Factory (module scope): ``registry_factory(extra_config="")`` -> a running docker-registry, ``.url``."""
    made = []

    yield lambda extra_config="": keep(made, devstack.start_registry(tmp_path_factory.mktemp("registry"),
                                                                     extra_config=extra_config))
    stop_all(made)


@pytest.fixture
def token_server():
    """A Docker token server in this process (devstack/tokenserver.py, ``TEST_POLICY``): ``.realm``,
    ``.requests``, ``.cert_pem``."""
    ts = TokenServer()
    yield ts
    ts.stop()


@pytest.fixture(scope="module")
def token_origin(tmp_path_factory):
    """A docker-registry that takes only the tokens of an in-process token server (``TEST_POLICY``:
    alice pulls and pushes everything, bob and anonymous pull ``public/`` only), holding
    ``public/app:v1`` (``.public_img``) and ``private/app:v1`` (``.private_img``) pushed by alice;
    ``.url``, ``.log``, ``.token_server`` (whose ``.requests`` record starts empty after the pushes)."""
    o = start_token_registry(tmp_path_factory.mktemp("token-origin"))
    try:
        o.public_img = imagegen.make_image((200_000, 200_000), seed=b"token-origin/public")
        o.private_img = imagegen.make_image((200_000, 200_000), seed=b"token-origin/private")
        o.push("public/app", "v1", o.public_img)
        o.push("private/app", "v1", o.private_img)
        o.token_server.requests.clear()
        yield o
    finally:
        o.stop()


@pytest.fixture
def origin(tmp_path):
    """A real docker-registry standing in as the origin; ``.url``, ``.log``."""
    p = devstack.start_registry(tmp_path / "origin")
    yield p
    p.stop()


@pytest.fixture
def origin2(tmp_path):
    """A second docker-registry (reached through a bridge alias)."""
    p = devstack.start_registry(tmp_path / "origin2")
    yield p
    p.stop()


@pytest.fixture
def tracker(tmp_path, request):
    """The real ``layerswarm tracker`` process; ``@pytest.mark.tracker_args(...)`` adds flags."""
    marker = request.node.get_closest_marker("tracker_args")
    extra = ("--interval", "5", "--lease-ttl", "10", *(marker.args if marker else ()))
    p = devstack.start_tracker(tmp_path / "tracker", extra=extra)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def fleet_pki(tmp_path_factory):
    """A fleet CA with certificates for a tracker (``.tracker``) and two bridges (``.bridge1``, ``.bridge2``)."""
    f = FleetPKI(tmp_path_factory.mktemp("fleet"))
    f.tracker = f.host("tracker")
    f.bridge1 = f.host("bridge-1", dns=("bridge-1.test",))
    f.bridge2 = f.host("bridge-2", dns=("bridge-2.test",), ips=("127.0.0.2",))
    return f


@pytest.fixture(scope="module")
def secure_tracker(fleet_pki, tmp_path_factory):
    """The real ``layerswarm tracker`` in secure fleet mode (``fleet_pki``'s CA and tracker certificate),
    with an empty deny list at ``.deny``, the admin token ``.admin_token`` and a publish token
    ``.publish_token`` (which a secure fleet does not take); ``.url`` is https://."""
    tmp = tmp_path_factory.mktemp("secure-tracker")
    deny, admin, publish = tmp / "deny-serials", tmp / "admin-token", tmp / "publish-token"
    deny.write_text("# serials refused although the fleet CA signed them\n")
    admin.write_text("admin-secret")
    publish.write_text("publish-secret")
    p = devstack.start_tracker(tmp, tls=(fleet_pki.tracker.cert, fleet_pki.tracker.key, fleet_pki.ca),
                               extra=["--deny-serials", deny, "--admin-token-file", admin,
                                      "--publish-token-file", publish, "--interval", "5", "--lease-ttl", "10"])
    p.deny, p.admin_token, p.publish_token = deny, "admin-secret", "publish-secret"
    yield p
    p.stop()


@pytest.fixture
def start_bridge(tmp_path):
    """Factory: ``start_bridge(*flags, upstream=, aliases=, tracker=, env=)`` -> a running
    ``layerswarm bridge`` process (``.url``, ``.store``)."""
    made = []
    yield lambda *extra, **kw: keep(made, devstack.start_bridge(tmp_path / f"bridge{len(made)}", extra=extra, **kw))
    stop_all(made)


@pytest.fixture(params=["mirror", "swarm"])
def bridge_mode(request):
    """Run a test against a plain mirror bridge and against one that joins a swarm (with a tracker).

    Yields the extra ``start_bridge`` keyword arguments for the mode.
    """
    if request.param == "swarm":
        return {"tracker": request.getfixturevalue("tracker").url}
    return {}


def _root_daemon(start, workdir):
    require_root()
    d = start(workdir)
    yield d
    d.stop()


def _without_images(d):
    d.remove_all_images()
    yield d
    d.remove_all_images()


@pytest.fixture(scope="session")
def dockerd_session(tmp_path_factory):
    yield from _root_daemon(clients.start_dockerd, tmp_path_factory.mktemp("dockerd"))


@pytest.fixture
def docker(dockerd_session):
    """The session dockerd, no images, no mirrors; images removed after the test."""
    if not dockerd_session.alive():
        pytest.fail(f"dockerd died:\n{dockerd_session.log_text()}")
    if dockerd_session.mirrors:
        dockerd_session.set_mirrors([])
    yield from _without_images(dockerd_session)


@pytest.fixture(scope="session")
def containerd_session(tmp_path_factory):
    yield from _root_daemon(clients.Containerd, tmp_path_factory.mktemp("containerd"))


@pytest.fixture
def containerd(containerd_session):
    """The session containerd, no images; images removed after the test."""
    yield from _without_images(containerd_session)


@pytest.fixture
def proxy(origin):
    """A :class:`FaultProxy` in front of the origin (point bridges at ``proxy.url``)."""
    from tests.swarm.faultproxy import FaultProxy
    p = FaultProxy(origin.url)
    yield p
    p.close()


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs to use as a store directory (a disk that fills up)."""
    require_root()
    d = tmp_path / "tmpfs-store"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(d)], check=True)
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.fixture
def fleet(tmp_path, origin, tracker):
    """Bridge processes on one origin and one tracker (``fleet.start_bridge(name, *flags)``)."""
    f = Fleet(tmp_path, origin.url, tracker.url)
    yield f
    f.close()
    f.assert_no_thread_died()
