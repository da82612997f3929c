"""Real registry clients pull a private image through a bridge only with credentials the upstream accepts.

One bridge (open mode, no tracker) in front of a real token-auth docker-registry
(``token_origin``: alice pulls everything, bob and anonymous ``public/*`` only),
shared by the module, with a recording pass-through proxy in front of it
(recordproxy.py): clients are pointed at the proxy, the bridge's challenge
names the realm at the host the client reached, so every request of a pull is
seen and the tests pin down what each client sends to the realm and the API
(the README quotes them).  A refused pull must leak nothing: every private
manifest request answered 401, no blob byte served by the bridge, no private
blob fetched from the origin.  dockerd, containerd and skopeo fall back to the
registry itself when a mirror refuses: that is the dead loopback proxy of
devstack/clients.py, so nothing leaves the host.
"""
from __future__ import annotations

import base64
import json

import pytest

from layerswarm.bridge.devstack import clients
from layerswarm.bridge.devstack import daemons as devstack
from layerswarm.bridge.devstack.tokenserver import TEST_PASSWORDS
from layerswarm.bridge.format.errors import DaemonError
from tests.fixtures import origin_blob_gets, stats, stop_all
from tests.integration import helpers
from tests.integration.recordproxy import RecordingProxy

pytestmark = pytest.mark.slow

REALM = "/_layerswarm/token"
PRIVATE_SCOPE = "repository:private/app:pull"
MIRRORED = "registry.layerswarm.test"   # a made-up registry that only its mirror (the bridge) can answer
ALICE, BOB = (f"{u}:{TEST_PASSWORDS[u]}" for u in ("alice", "bob"))


def basic(user: str) -> str:
    """The base64 ``user:password`` of a docker/skopeo auth file entry."""
    return base64.b64encode(f"{user}:{TEST_PASSWORDS[user]}".encode()).decode()


def transcript(seen) -> str:
    return "\n".join(map(str, seen))


def private_api(seen) -> list:
    return [s for s in seen if s.path.startswith("/v2/private/app/")]


def assert_sent(seen, realm: set, api: set) -> None:
    """The client asked the realm as ``realm`` {(method, Authorization scheme, user named)}, every
    time for the private scope, and the private API with the schemes ``api``."""
    asked = [s for s in seen if s.path == REALM]
    got = {(s.method, s.auth, s.params.get("account") or s.params.get("username")) for s in asked}
    schemes = {s.auth for s in private_api(seen)}
    assert (got, schemes) == (realm, api), transcript(seen)
    assert all(set(s.params["scope"].split()) == {PRIVATE_SCOPE} for s in asked), transcript(seen)


class Stack:
    def __init__(self, origin, bridge, proxy):
        self.origin, self.bridge, self.proxy = origin, bridge, proxy

    def private_flow(self) -> tuple:
        """(blob bytes the bridge served, successful GETs of a private blob at the origin)."""
        private = {str(b.digest) for b in self.origin.private_img.blobs}
        gets = sum(n for d, n in origin_blob_gets(self.origin, "private/app").items() if d in private)
        return helpers.blob_bytes_served(stats(self.bridge)), gets

    def refused(self, pull) -> list:
        """Run ``pull`` (a client command that must fail); what the client sent meanwhile."""
        mark, before = self.proxy.mark(), self.private_flow()
        with pytest.raises(DaemonError):
            pull()
        seen = self.proxy.since(mark)
        api = private_api(seen)
        assert api and all(s.status == 401 for s in api), transcript(seen)
        assert self.private_flow() == before, "private bytes moved for a refused client"
        return seen

    def pulled(self, pull, image=None) -> list:
        """Run ``pull`` (a client command that must succeed; ``image``: the bridge serves all its
        blobs meanwhile); what the client sent meanwhile."""
        mark, before = self.proxy.mark(), stats(self.bridge)
        pull()
        if image is not None:
            helpers.assert_bridge_served(self.bridge, image, before=before)
        return self.proxy.since(mark)


@pytest.fixture(scope="module")
def stack(token_origin, tmp_path_factory):
    bridge = devstack.start_bridge(tmp_path_factory.mktemp("private-clients"), upstream=token_origin.url)
    proxy = RecordingProxy(bridge.port)
    try:
        yield Stack(token_origin, bridge, proxy)
    finally:
        proxy.close()
        stop_all([bridge])
    text = bridge.log_text(10 ** 8)
    assert not [s for s in (*TEST_PASSWORDS.values(), basic("alice"), basic("bob")) if s in text], \
        "a credential in the bridge's log"


# --------------------------------------------------------------------------- dockerd

def docker_config(tmp_path, name: str, auths: dict | None = None):
    """A docker CLI config directory (``docker --config``) holding ``auths``: the user's saved logins,
    which the CLI hands to dockerd with each pull."""
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"auths": auths or {}}))
    return d


def test_dockerd_path_form_pulls_private_image_only_after_login_as_alice(docker, stack, tmp_path):
    o, host = stack.origin, stack.proxy.host
    cfg = docker_config(tmp_path, "docker-cli")

    def cli(*args):
        return lambda: docker.docker("--config", cfg, *args, timeout=180)

    public, private = f"{host}/public/app:v1", f"{host}/private/app:v1"
    stack.pulled(cli("pull", public), o.public_img)
    assert docker.image_inspect(public)["Id"] == str(o.public_img.config.digest)

    assert_sent(stack.refused(cli("pull", private)), {("GET", "", None)}, {"Bearer"})
    stack.pulled(cli("login", host, "-u", "bob", "-p", TEST_PASSWORDS["bob"]))
    assert_sent(stack.refused(cli("pull", private)), {("GET", "Basic", "bob")}, {"Bearer"})

    # docker login: GET /v2/ (401), then the realm with Basic, no scope, and these parameters.
    seen = stack.pulled(cli("login", host, "-u", "alice", "-p", TEST_PASSWORDS["alice"]))
    login = [s for s in seen if s.path == REALM]
    assert [(s.method, s.auth, s.params) for s in login] == [
        ("GET", "Basic", {"account": "alice", "client_id": "docker", "offline_token": "true",
                          "service": "layerswarm"})], transcript(seen)
    assert json.loads((cfg / "config.json").read_text())["auths"][host]["auth"] == basic("alice")
    seen = stack.pulled(cli("pull", private), o.private_img)
    assert_sent(seen, {("GET", "Basic", "alice")}, {"Bearer"})
    assert docker.image_inspect(private)["Id"] == str(o.private_img.config.digest)

    cli("logout", host)()
    docker.remove_all_images()
    assert_sent(stack.refused(cli("pull", private)), {("GET", "", None)}, {"Bearer"})


def test_dockerd_mirror_sends_the_users_docker_hub_credentials(docker, stack, tmp_path):
    """``docker pull private/app`` is a Docker Hub name: dockerd asks its mirror (the bridge, whose
    default upstream is the token origin) with the Docker Hub login the CLI holds, as Basic to the
    realm.  When the mirror refuses, dockerd falls back to Docker Hub (the dead proxy here)."""
    o = stack.origin
    docker.set_mirrors([stack.proxy.url])
    hub = "https://index.docker.io/v1/"
    anonymous = docker_config(tmp_path, "anonymous")
    as_bob = docker_config(tmp_path, "bob", {hub: {"auth": basic("bob")}})
    as_alice = docker_config(tmp_path, "alice", {hub: {"auth": basic("alice")}})

    def pull(cfg, ref):
        return lambda: docker.docker("--config", cfg, "pull", ref, timeout=180)

    stack.pulled(pull(anonymous, "public/app:v1"), o.public_img)
    assert docker.image_inspect("public/app:v1")["Id"] == str(o.public_img.config.digest)
    assert_sent(stack.refused(pull(anonymous, "private/app:v1")), {("GET", "", None)}, {"Bearer"})
    assert_sent(stack.refused(pull(as_bob, "private/app:v1")), {("GET", "Basic", "bob")}, {"Bearer"})
    seen = stack.pulled(pull(as_alice, "private/app:v1"), o.private_img)
    assert_sent(seen, {("GET", "Basic", "alice")}, {"Bearer"})
    assert docker.image_inspect("private/app:v1")["Id"] == str(o.private_img.config.digest)


# --------------------------------------------------------------------------- containerd

def test_containerd_pulls_private_image_through_mirror_only_with_alices_user(containerd, stack, tmp_path):
    """``ctr --user`` goes to the hosts.toml mirror: a POST password grant to the realm (a GET without
    credentials); the first request of each step goes without a token; ``?ns=`` everywhere."""
    o = stack.origin
    host = o.url.split("://", 1)[1]      # named in ?ns=: the bridge's upstream
    hosts = tmp_path / "hosts"
    clients.write_hosts_toml(hosts, host, stack.proxy.url, fallback=False)
    private = f"{host}/private/app:v1"

    stack.pulled(lambda: containerd.pull(f"{host}/public/app:v1", hosts), o.public_img)
    assert_sent(stack.refused(lambda: containerd.pull(private, hosts)), {("GET", "", None)}, {"", "Bearer"})
    assert_sent(stack.refused(lambda: containerd.pull(private, hosts, user=BOB)),
                {("POST", "", "bob")}, {"", "Bearer"})
    seen = stack.pulled(lambda: containerd.pull(private, hosts, user=ALICE), o.private_img)
    assert_sent(seen, {("POST", "", "alice")}, {"", "Bearer"})
    assert all(s.params.get("ns") == host for s in seen), transcript(seen)
    grants = [s for s in seen if s.path == REALM]
    assert all(s.params["grant_type"] == "password" and {"username", "password", "scope"} <= set(s.form)
               for s in grants), transcript(seen)
    assert private in containerd.ctr("images", "ls", "-q").split()


# --------------------------------------------------------------------------- skopeo

def skopeo(tmp_path, tag: str, src: str, conf=None, creds: str | None = None, auth_file: dict | None = None):
    """``skopeo copy src dir:out-TAG`` (``creds``: ``--src-creds``; ``auth_file``: its auth.json ``auths``)."""
    work = tmp_path / f"sk-{tag}"
    work.mkdir()
    if auth_file is not None:
        (work / "auth.json").write_text(json.dumps({"auths": auth_file}))
    if conf is None:
        conf = tmp_path / "empty-registries.conf"
        conf.write_text("unqualified-search-registries = []\n")
    args = ("--src-creds", creds) if creds else ()
    return lambda: clients.skopeo_copy(conf, src, f"dir:{tmp_path / f'out-{tag}'}", work, args=args)


def assert_copied(tmp_path, tag: str, img) -> None:
    for b in img.blobs:
        assert (tmp_path / f"out-{tag}" / b.digest.hex).read_bytes() == b.data


def test_skopeo_pointed_at_the_bridge_sends_src_creds(stack, tmp_path):
    o, src = stack.origin, f"docker://{stack.proxy.host}/private/app:v1"
    assert_sent(stack.refused(skopeo(tmp_path, "anon", src)), {("GET", "", None)}, {"Bearer"})
    assert_sent(stack.refused(skopeo(tmp_path, "bob", src, creds=BOB)), {("GET", "Basic", "bob")}, {"Bearer"})
    seen = stack.pulled(skopeo(tmp_path, "alice", src, creds=ALICE), o.private_img)
    assert_sent(seen, {("GET", "Basic", "alice")}, {"Bearer"})
    assert_copied(tmp_path, "alice", o.private_img)


def test_skopeo_through_a_mirror_does_not_send_the_source_registrys_credentials(stack, tmp_path):
    """A registries.conf mirror gets neither ``--src-creds`` nor the auth file's entry for the registry
    it mirrors; the auth file's entry for the mirror's own host is sent."""
    o = stack.origin
    conf = clients.write_registries_conf(tmp_path / "registries.conf", MIRRORED, stack.proxy.host)
    stack.pulled(skopeo(tmp_path, "public", f"docker://{MIRRORED}/public/app:v1", conf), o.public_img)
    assert_copied(tmp_path, "public", o.public_img)

    src = f"docker://{MIRRORED}/private/app:v1"
    for tag, kw in (("creds", {"creds": ALICE}), ("src-auth", {"auth_file": {MIRRORED: {"auth": basic("alice")}}})):
        assert_sent(stack.refused(skopeo(tmp_path, tag, src, conf, **kw)), {("GET", "", None)}, {"Bearer"})
    seen = stack.pulled(skopeo(tmp_path, "mirror-auth", src, conf,
                               auth_file={stack.proxy.host: {"auth": basic("alice")}}), o.private_img)
    assert_sent(seen, {("GET", "Basic", "alice")}, {"Bearer"})
    assert_copied(tmp_path, "mirror-auth", o.private_img)
