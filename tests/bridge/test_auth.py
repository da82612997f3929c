"""Upstream authentication: Basic (real docker-registry htpasswd) and Bearer tokens
(a small token-enforcing proxy in front of a real registry, redirecting blobs to
another host like object storage)."""
from __future__ import annotations

import secrets
import threading
import time
import warnings

import pytest
import requests
from flask import Flask, Response, request

from layerswarm.bridge.devstack import imagegen

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt


@pytest.fixture(scope="module")
def basic_origin(registry_factory, tmp_path_factory):
    d = tmp_path_factory.mktemp("htpasswd")
    hashed = crypt.crypt("s3cret", crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
    (d / "htpasswd").write_text(f"alice:{hashed}\n")
    reg = registry_factory(f"auth:\n  htpasswd:\n    realm: basic-realm\n    path: {d / 'htpasswd'}\n")
    s = requests.Session()
    s.auth = ("alice", "s3cret")
    img = imagegen.make_image((120_000,), seed=b"basic")
    imagegen.push(reg.url, "private/app", "v1", img, session=s)
    reg.img = img
    return reg


def test_basic_auth_upstream(start_bridge, basic_origin):
    img = basic_origin.img
    b = start_bridge("--upstream", basic_origin.url, "--upstream-user", "alice",
                     env={"LAYERSWARM_UPSTREAM_PASSWORD": "s3cret"})
    r = requests.get(f"{b.url}/v2/private/app/manifests/v1", headers={"Accept": img.manifest_media_type}, timeout=20)
    assert r.status_code == 200 and r.content == img.manifest
    for blob in img.blobs:
        r = requests.get(f"{b.url}/v2/private/app/blobs/{blob.digest}", timeout=20)
        assert r.status_code == 200 and r.content == blob.data


def test_basic_auth_from_toml_alias(start_bridge, basic_origin, tmp_path):
    img = basic_origin.img
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(f'[upstreams.corp]\nurl = "{basic_origin.url}"\nusername = "alice"\n'
                   f'password_env = "CORP_PASSWORD"\n')
    b = start_bridge("--config", cfg, "--upstream", "http://127.0.0.1:9", env={"CORP_PASSWORD": "s3cret"})
    r = requests.get(f"{b.url}/v2/corp/private/app/blobs/{img.layers[0].digest}", timeout=20)
    assert r.status_code == 200 and r.content == img.layers[0].data


@pytest.mark.parametrize("creds", [None, "wrong"])
def test_upstream_rejects_us_is_401(start_bridge, basic_origin, creds):
    args = ["--upstream", basic_origin.url]
    env = {}
    if creds:
        args += ["--upstream-user", "alice"]
        env["LAYERSWARM_UPSTREAM_PASSWORD"] = creds
    b = start_bridge(*args, env=env)
    r = requests.get(f"{b.url}/v2/private/app/manifests/v1", timeout=20)
    assert r.status_code == 401 and r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    r = requests.get(f"{b.url}/v2/private/app/blobs/{basic_origin.img.layers[0].digest}", timeout=20)
    assert r.status_code == 401


class BearerWorld:
    """Token server + Bearer-enforcing registry proxy on 127.0.0.1, blob storage on 127.0.0.2."""

    def __init__(self, origin_url, thread_server, expires_in=60):
        self.origin = origin_url
        self.expires_in = expires_in
        self.tokens = {}
        self.token_requests = []
        self.storage_auth = []  # Authorization headers the "object storage" saw
        self.lock = threading.Lock()
        self.storage = thread_server(self._storage_app(), host="127.0.0.2")
        self.registry = thread_server(self._registry_app())

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
            if not a or (a.username, a.password) != ("bob", "tokpass"):
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
                ok = tok in self.tokens and self.tokens[tok][1] > time.monotonic() and \
                    self.tokens[tok][0] == scope
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


@pytest.fixture(scope="module")
def plain_origin(registry_factory):
    reg = registry_factory()
    img = imagegen.make_image((200_000, 90_000), seed=b"bearer")
    imagegen.push(reg.url, "org/app", "v1", img)
    reg.img = img
    return reg


def test_bearer_token_flow_and_redirect_without_authorization(start_bridge, thread_server, plain_origin, tmp_path):
    world = BearerWorld(plain_origin.url, thread_server, expires_in=3)
    img = plain_origin.img
    b = start_bridge("--upstream", "http://127.0.0.1:9", "--alias", f"tok={world.registry.url}",
                     "--config", _toml(world, tmp_path))
    r = requests.get(f"{b.url}/v2/tok/org/app/manifests/v1", headers={"Accept": img.manifest_media_type},
                     timeout=20)
    assert r.status_code == 200 and r.content == img.manifest
    assert ("test-registry", "repository:org/app:pull") in world.token_requests
    fetched = len(world.token_requests)
    for blob in img.blobs:
        r = requests.get(f"{b.url}/v2/tok/org/app/blobs/{blob.digest}", timeout=20)
        assert r.status_code == 200 and r.content == blob.data
        r = requests.get(f"{b.url}/v2/tok/org/app/blobs/{blob.digest}", headers={"Range": "bytes=5-"}, timeout=20)
        assert r.status_code == 206 and r.content == blob.data[5:]
    assert len(world.token_requests) == fetched  # token cached per repository
    assert world.storage_auth and all(a is None for a in world.storage_auth)  # never forwarded off-host
    time.sleep(3.2)  # token expired: the bridge gets a new one by itself
    r = requests.get(f"{b.url}/v2/tok/org/app/blobs/{img.layers[0].digest}", timeout=20)
    assert r.status_code == 200 and r.content == img.layers[0].data
    assert len(world.token_requests) > fetched


def test_bearer_bad_credentials_is_401(start_bridge, thread_server, plain_origin):
    world = BearerWorld(plain_origin.url, thread_server)
    b = start_bridge("--upstream", world.registry.url, "--upstream-user", "bob",
                     env={"LAYERSWARM_UPSTREAM_PASSWORD": "nope"})
    r = requests.get(f"{b.url}/v2/org/app/manifests/v1", timeout=20)
    assert r.status_code == 401 and r.json()["errors"][0]["code"] == "UNAUTHORIZED"


def _toml(world, tmp_path):
    f = tmp_path / "bearer.toml"
    f.write_text(f'[upstreams.tok]\nurl = "{world.registry.url}"\nusername = "bob"\npassword = "tokpass"\n')
    return f
