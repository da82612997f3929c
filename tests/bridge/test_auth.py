"""Upstream authentication: Basic (real docker-registry htpasswd) and Bearer tokens
(a small token-enforcing proxy in front of a real registry, redirecting blobs to
another host like object storage).

The client shows credentials the upstream accepts (chained authorization: the
bridge answers a private repository to no one else); the bridge fetches with its
own service credentials."""
from __future__ import annotations

import time

import pytest
import requests

from layerswarm.bridge.devstack import imagegen
from tests.fixtures import TokenRegistry, htpasswd_config

pytestmark = pytest.mark.slow  # real docker-registry origins, real bridge processes

ALICE = ("alice", "s3cret")
BOB = ("bob", "tokpass")


@pytest.fixture(scope="module")
def basic_origin(registry_factory, tmp_path_factory):
    reg = registry_factory(htpasswd_config(tmp_path_factory.mktemp("htpasswd"), "alice", "s3cret"))
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
    r = requests.get(f"{b.url}/v2/private/app/manifests/v1", headers={"Accept": img.manifest_media_type},
                     auth=ALICE, timeout=20)
    assert r.status_code == 200 and r.content == img.manifest
    for blob in img.blobs:
        r = requests.get(f"{b.url}/v2/private/app/blobs/{blob.digest}", auth=ALICE, timeout=20)
        assert r.status_code == 200 and r.content == blob.data
        assert requests.get(f"{b.url}/v2/private/app/blobs/{blob.digest}", timeout=20).status_code == 401


def test_basic_auth_from_toml_alias(start_bridge, basic_origin, tmp_path):
    img = basic_origin.img
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(f'[upstreams.corp]\nurl = "{basic_origin.url}"\nusername = "alice"\n'
                   f'password_env = "CORP_PASSWORD"\n')
    b = start_bridge("--config", cfg, "--upstream", "http://127.0.0.1:9", env={"CORP_PASSWORD": "s3cret"})
    r = requests.get(f"{b.url}/v2/corp/private/app/blobs/{img.layers[0].digest}", auth=ALICE, timeout=20)
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


@pytest.fixture(scope="module")
def plain_origin(registry_factory):
    reg = registry_factory()
    img = imagegen.make_image((200_000, 90_000), seed=b"bearer")
    imagegen.push(reg.url, "org/app", "v1", img)
    reg.img = img
    return reg


def test_bearer_token_flow_and_redirect_without_authorization(start_bridge, thread_server, plain_origin, tmp_path):
    world = TokenRegistry(plain_origin.url, thread_server, expires_in=3)
    img = plain_origin.img
    b = start_bridge("--upstream", "http://127.0.0.1:9", "--alias", f"tok={world.registry.url}",
                     "--config", _toml(world, tmp_path))
    r = requests.get(f"{b.url}/v2/tok/org/app/manifests/v1", headers={"Accept": img.manifest_media_type},
                     auth=BOB, timeout=20)
    assert r.status_code == 200 and r.content == img.manifest
    assert ("test-registry", "repository:org/app:pull") in world.token_requests
    fetched = len(world.token_requests)
    for blob in img.blobs:
        r = requests.get(f"{b.url}/v2/tok/org/app/blobs/{blob.digest}", auth=BOB, timeout=20)
        assert r.status_code == 200 and r.content == blob.data
        r = requests.get(f"{b.url}/v2/tok/org/app/blobs/{blob.digest}", headers={"Range": "bytes=5-"}, auth=BOB,
                         timeout=20)
        assert r.status_code == 206 and r.content == blob.data[5:]
    assert len(world.token_requests) == fetched  # token cached per repository
    assert world.storage_auth and all(a is None for a in world.storage_auth)  # never forwarded off-host
    time.sleep(3.2)  # token expired: the bridge gets a new one by itself
    r = requests.get(f"{b.url}/v2/tok/org/app/blobs/{img.layers[0].digest}", auth=BOB, timeout=20)
    assert r.status_code == 200 and r.content == img.layers[0].data
    assert len(world.token_requests) > fetched


def test_bearer_bad_credentials_is_401(start_bridge, thread_server, plain_origin):
    world = TokenRegistry(plain_origin.url, thread_server)
    b = start_bridge("--upstream", world.registry.url, "--upstream-user", "bob",
                     env={"LAYERSWARM_UPSTREAM_PASSWORD": "nope"})
    r = requests.get(f"{b.url}/v2/org/app/manifests/v1", timeout=20)
    assert r.status_code == 401 and r.json()["errors"][0]["code"] == "UNAUTHORIZED"


def _toml(world, tmp_path):
    f = tmp_path / "bearer.toml"
    f.write_text(f'[upstreams.tok]\nurl = "{world.registry.url}"\nusername = "bob"\npassword = "tokpass"\n')
    return f
