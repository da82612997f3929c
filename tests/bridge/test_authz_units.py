"""Chained authorization's pure parts: client credentials parsed strictly, the bridge's tokens, what a manifest names."""
from __future__ import annotations

import base64
import json
import time

import pytest
from hypothesis import given, strategies as st

from layerswarm.bridge.authz.credentials import MAX_HEADER, ClientTokens, parse_authorization
from layerswarm.bridge.format.errors import RegistryError
from layerswarm.bridge.format.mediatypes import referenced_digests

CHALLENGE = 'Bearer realm="http://127.0.0.1:5000/_layerswarm/token",service="layerswarm"'


def basic(text: bytes) -> str:
    return "Basic " + base64.b64encode(text).decode()


def test_credentials_parse():
    assert parse_authorization(None, CHALLENGE).scheme == "anonymous"
    assert parse_authorization("  ", CHALLENGE).scheme == "anonymous"
    p = parse_authorization(basic(b"alice:pa:ss"), CHALLENGE)
    assert (p.scheme, p.username, p.password) == ("basic", "alice", "pa:ss")
    assert parse_authorization("bearer abc", CHALLENGE).token == "abc"


@pytest.mark.parametrize("header,status", [
    ("Basic !!", 401), (basic(b"nocolon"), 401), (basic(b":nouser"), 401), (basic(b"\xff:x"), 401),
    (basic(b"a\x01b:x"), 401), (basic(b"u" * 2000 + b":x"), 401), ("Digest x=1", 401), ("Bearer", 401),
    ("Negotiate abc", 401), ("Basic " + "A" * MAX_HEADER, 400),
])
def test_odd_credentials_are_401_or_400_with_the_challenge(header, status):
    with pytest.raises(RegistryError) as exc:
        parse_authorization(header, CHALLENGE)
    assert exc.value.status == status and exc.value.code == "UNAUTHORIZED"
    if status == 401:
        assert exc.value.headers["WWW-Authenticate"] == CHALLENGE


@given(st.text(max_size=300))
def test_no_header_makes_parsing_crash(header):
    try:
        parse_authorization(header, CHALLENGE)
    except RegistryError as exc:
        assert exc.status in (400, 401)


def test_tokens_name_grants_and_expire_and_belong_to_one_process():
    a, b = ClientTokens(), ClientTokens()
    key = a.credential_key("alice", "pw")
    assert key == a.credential_key("alice", "pw") != a.credential_key("alice", "pw2")
    assert key != b.credential_key("alice", "pw")          # keyed: another process names it differently
    assert "pw" not in key and "alice" not in key
    tok = a.issue(key, [("default", "private/app")], time.time() + 60)
    sub, grants, exp = a.verify(tok)
    assert sub == key and grants == {("default", "private/app")} and exp > time.time()
    assert b.verify(tok) is None                            # another bridge's token
    assert a.verify(a.issue(key, [], time.time() - 5)) is None   # expired
    head, payload, sig = tok.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["acc"].append(["default", "other/app"])
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    assert a.verify(f"{head}.{forged}.{sig}") is None
    assert a.verify("x" * 100) is None


def test_referenced_digests():
    d = ["sha256:" + c * 64 for c in "abcd"]
    manifest = {"config": {"digest": d[0]}, "layers": [{"digest": d[1]}, {"digest": d[2]}]}
    assert referenced_digests(json.dumps(manifest).encode()) == d[:3]
    assert referenced_digests(json.dumps({"manifests": [{"digest": d[3]}]}).encode()) == [d[3]]
    assert referenced_digests(json.dumps({"fsLayers": [{"blobSum": d[1]}]}).encode()) == [d[1]]
    for junk in (b"", b"[]", b"not json", b'{"layers": [1, {"digest": 5}]}', None):
        assert referenced_digests(junk) == []
