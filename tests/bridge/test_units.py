"""Pure parsing and routing rules (no processes)."""
from __future__ import annotations

import argparse

import pytest

from layerswarm.bridge import config as bconfig
from layerswarm.bridge.format import errors
from layerswarm.bridge.sources.auth import parse_challenge
from layerswarm.bridge.format.names import ByteRange, parse_api_path
from layerswarm.bridge.sources.router import Router
from layerswarm.bridge.sources.upstream import UpstreamClient

HEX = "a" * 64


@pytest.mark.parametrize("path,name,kind,ref", [
    ("/v2/library/app/manifests/v1", "library/app", "manifests", "v1"),
    (f"/v2/a/b/c/blobs/sha256:{HEX}", "a/b/c", "blobs", f"sha256:{HEX}"),
    (f"/v2/ghcr.io/org/app/manifests/sha256%3A{HEX}", "ghcr.io/org/app", "manifests", f"sha256:{HEX}"),
    ("/v2/a__b/x-y/manifests/V1.0_rc", "a__b/x-y", "manifests", "V1.0_rc"),
])
def test_parse_ok(path, name, kind, ref):
    p = parse_api_path(path)
    assert (p.name, p.kind, str(p.reference)) == (name, kind, ref)


@pytest.mark.parametrize("path,code", [
    ("/v2/../x/manifests/v1", "NAME_INVALID"), ("/v2/a/./b/manifests/v1", "NAME_INVALID"),
    ("/v2/a%2fb/manifests/v1", "NAME_INVALID"), ("/v2/a%252fb/manifests/v1", "NAME_INVALID"),
    ("/v2/a//b/manifests/v1", "NAME_INVALID"), ("/v2/A/manifests/v1", "NAME_INVALID"),
    ("/v2/" + "a" * 256 + "/manifests/v1", "NAME_INVALID"),
    ("/v2/a/blobs/sha256:" + "A" * 64, "DIGEST_INVALID"), ("/v2/a/manifests/-x", "TAG_INVALID"),
])
def test_parse_rejects(path, code):
    with pytest.raises(errors.RegistryError) as ei:
        parse_api_path(path)
    assert ei.value.code == code


def test_parse_not_api():
    assert parse_api_path("/v2/_catalog") is None
    assert parse_api_path("/v2/a/tags/list") is None


def test_byte_range():
    assert ByteRange.parse("bytes=5-") == ByteRange(5, None)
    assert ByteRange.parse("bytes=5-9").resolve(100) == (5, 9)
    assert ByteRange.parse("bytes=5-1000").resolve(100) == (5, 99)
    for ignored in ("bytes=-5", "bytes=1-2,4-5", "items=1-2", "bytes=9-5", None, ""):
        assert ByteRange.parse(ignored) is None
    with pytest.raises(errors.RegistryError) as ei:
        ByteRange(100).resolve(100)
    assert ei.value.status == 416 and ei.value.headers["Content-Range"] == "bytes */100"


def test_parse_challenge():
    c = parse_challenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                        'scope="repository:library/x:pull,push"')
    assert c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                        "scope": "repository:library/x:pull,push"}
    assert parse_challenge('Basic realm="r"').scheme == "basic"
    assert parse_challenge(None) is None


def _cfg(*argv):
    p = argparse.ArgumentParser()
    bconfig.add_arguments(p)
    return bconfig.from_args(p.parse_args(["--store-dir", "/tmp/x", *argv]))


def _router(cfg):
    return Router(cfg.upstreams, {n: UpstreamClient(u, 1, 1) for n, u in cfg.upstreams.by_name.items()})


def test_routing_docker_hub_default():
    r = _router(_cfg("--allow-host", "ghcr.io", "--alias", "corp=http://127.0.0.1:5001"))
    up, repo = r.resolve("nginx", None)
    assert up.cfg.url == bconfig.DOCKER_HUB_URL and repo == "library/nginx"
    assert r.resolve("library/nginx", "docker.io")[1] == "library/nginx"
    up, repo = r.resolve("ghcr.io/org/app", None)
    assert up.cfg.url == "https://ghcr.io" and repo == "org/app"
    up, repo = r.resolve("org/app", "ghcr.io")
    assert up.cfg.url == "https://ghcr.io" and repo == "org/app"
    up, repo = r.resolve("corp/team/app", None)
    assert up.cfg.url == "http://127.0.0.1:5001" and repo == "team/app"
    assert r.resolve("team/app", "127.0.0.1:5001")[0].name == "corp"
    # not allowed: a dotted first component is just a repo on the default upstream
    up, repo = r.resolve("evil.com/x", None)
    assert up.cfg.url == bconfig.DOCKER_HUB_URL and repo == "evil.com/x"
    with pytest.raises(errors.RegistryError) as ei:
        r.resolve("x", "evil.com")
    assert ei.value.status == 403


def test_routing_private_default_and_bad_config():
    r = _router(_cfg("--upstream", "http://127.0.0.1:5000"))
    up, repo = r.resolve("app", None)
    assert repo == "app"  # no library/ outside Docker Hub
    assert r.resolve("library/app", "docker.io")[0] is up
    for bad in (["--alias", "Bad=http://x"], ["--alias", "nourl"], ["--upstream", "ftp://x"],
                ["--upstream", "http://u:p@x"], ["--tracker", "notaurl"], ["--tracker", "ftp://t"],
                ["--advertise-url", "x:1"], ["--peer-listen", "6881"], ["--peer-listen", "h:99999"],
                ["--cache-max", "lots"], ["--cache-max=-1G"]):
        with pytest.raises(errors.UserError):
            _cfg(*bad)


@pytest.mark.parametrize("text", ["sha256:" + HEX + "\n", "sha256:" + HEX.upper(), " sha256:" + HEX,
                                  "sha256:" + HEX[:-1], "md5:" + HEX])
def test_digest_validators_match_whole_strings(text):
    from layerswarm.bridge.format.digest import Digest
    from layerswarm.bridge.format.errors import InvalidDigest
    with pytest.raises(InvalidDigest):
        Digest.parse(text)


def test_name_and_tag_validators_match_whole_strings():
    from layerswarm.bridge.format.names import valid_name, valid_tag
    assert valid_name("library/app") and not valid_name("library/app\n") and not valid_name("App")
    assert valid_tag("v1.0") and not valid_tag("v1\n") and not valid_tag(".v1")


@pytest.mark.parametrize("text,expect", [("20G", 20 << 30), ("512MiB", 512 << 20), ("1.5K", 1536),
                                         ("1048576", 1 << 20), (4096, 4096)])
def test_sizes(text, expect):
    from layerswarm.bridge.format.units import parse_size
    assert parse_size(text) == expect


@pytest.mark.parametrize("text", ["nan", "inf", "-1G", "0", "1.5", "0.3K", "lots", "1e9", "10 GB extra"])
def test_sizes_rejected(text):
    from layerswarm.bridge.format.units import parse_size
    with pytest.raises(ValueError):
        parse_size(text)


def test_request_metric_labels_are_bounded():
    from layerswarm.bridge.http.metrics import Metrics
    m = Metrics()
    for i in range(50):
        m.request("other", f"X-METHOD-{i}", 405)
    assert m.snapshot()["requests"] == {"other OTHER 405": 50}


def test_origin_slots_are_given_back_however_a_body_ends_and_a_full_house_answers_429():
    from layerswarm.bridge.sources.blobs import OriginSlots, _SlotBody
    slots = OriginSlots(2, wait=0.05)

    def body():
        yield b"a"
        yield b"b"
    for end in ("exhausted", "closed", "dropped", "never started"):
        slots.acquire()
        b = _SlotBody(body(), slots.release)
        if end == "exhausted":
            assert list(b) == [b"a", b"b"]
        elif end == "closed":
            next(b)
            b.close()
        elif end == "dropped":
            next(b)
        del b
        assert slots.active == 0, end
    slots.acquire()
    slots.acquire()
    with pytest.raises(errors.RegistryError) as ei:
        slots.acquire()
    assert ei.value.status == 429 and ei.value.code == "TOOMANYREQUESTS" and ei.value.headers["Retry-After"] == "1"
    slots.release()
    slots.acquire()   # a freed slot is taken at once
    assert slots.active == 2
