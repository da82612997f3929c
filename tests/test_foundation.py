"""Value types and the image generator against a real registry."""
import hashlib

import pytest
import requests

from layerswarm.bridge.devstack import imagegen
from layerswarm.bridge.format.digest import Digest, InfoHash
from layerswarm.bridge.format.errors import InvalidDigest, InvalidInfoHash


def test_digest_parse_roundtrip():
    hexd = hashlib.sha256(b"x").hexdigest()
    d = Digest.parse(f"sha256:{hexd}")
    assert str(d) == f"sha256:{hexd}" and d.hex == hexd
    assert d == Digest.of_bytes(b"x")


@pytest.mark.parametrize("bad", ["", "sha256:", "sha256:abc", "sha512:" + "a" * 128, "sha256:" + "A" * 64,
                                 "sha256:" + "a" * 65, "../../etc/passwd", "sha256:" + "g" * 64, None])
def test_digest_rejects(bad):
    with pytest.raises(InvalidDigest):
        Digest.parse(bad)


def test_infohash():
    ih = InfoHash.from_hex("ab" * 20)
    assert ih.raw == b"\xab" * 20 and ih.hex == "ab" * 20
    for bad in (b"x" * 19, b"x" * 21, "ab" * 20):
        with pytest.raises(InvalidInfoHash):
            InfoHash(bad)
    with pytest.raises(InvalidInfoHash):
        InfoHash.from_hex("zz" * 20)


@pytest.mark.slow  # a real docker-registry
def test_imagegen_push_to_real_registry(origin):
    img = imagegen.make_image((4096, 8192), seed=b"foundation")
    digest = imagegen.push(origin.url, "library/demo", "v1", img)
    r = requests.get(f"{origin.url}/v2/library/demo/manifests/v1",
                     headers={"Accept": img.manifest_media_type}, timeout=10)
    assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == str(digest)
    for blob in img.blobs:
        got = requests.get(f"{origin.url}/v2/library/demo/blobs/{blob.digest}", timeout=10).content
        assert Digest.of_bytes(got) == blob.digest


def test_free_ports_are_bindable_distinct_and_outside_the_ephemeral_range():
    import socket

    from layerswarm.bridge.devstack import daemons

    low = daemons._ephemeral_low()
    ports = [daemons.free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)   # a test's dozen daemons never share one
    if low > 11024:
        assert all(low - 10000 <= p < low for p in ports)
        held = socket.socket()   # the port next in turn, taken by someone else meanwhile, is skipped
        try:
            nxt = low - 10000 + daemons._next_port % 10000
            held.bind(("127.0.0.1", nxt))
            held.listen()
            assert daemons.free_port() != nxt
        finally:
            held.close()
