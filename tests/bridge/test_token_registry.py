"""The test token server (devstack/tokenserver.py): its answers and JWTs, and a real docker-registry accepting them."""
from __future__ import annotations

import base64

import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from layerswarm.bridge.devstack.tokenserver import SERVICE, TEST_PASSWORDS, TokenServer
from layerswarm.bridge.sources.auth import parse_challenge

ALICE = ("alice", TEST_PASSWORDS["alice"])
BOB = ("bob", TEST_PASSWORDS["bob"])


def claims(ts, token: str, service: str = SERVICE) -> dict:
    """The token's claims, its signature checked against the server's certificate."""
    key = x509.load_pem_x509_certificate(ts.cert_pem).public_key()
    return jwt.decode(token, key, algorithms=["ES256"], audience=service, issuer=ts.issuer)


def access(ts, token: str) -> dict:
    return {(a["type"], a["name"]): a["actions"] for a in claims(ts, token)["access"]}


def get_token(ts, *scopes, auth=None) -> requests.Response:
    return requests.get(ts.realm, params={"service": SERVICE, "scope": list(scopes)}, auth=auth, timeout=10)


# --------------------------------------------------------------------------- the token server alone

def test_token_is_a_jwt_with_the_spec_claims_and_its_certificate_in_x5c(token_server):
    r = get_token(token_server, "repository:public/app:pull", auth=BOB)
    assert r.status_code == 200
    body = r.json()
    assert body["token"] == body["access_token"] and body["expires_in"] == 300 and body["issued_at"].endswith("Z")
    header = jwt.get_unverified_header(body["token"])
    der = x509.load_pem_x509_certificate(token_server.cert_pem).public_bytes(serialization.Encoding.DER)
    assert header["alg"] == "ES256" and header["x5c"] == [base64.b64encode(der).decode()]
    c = claims(token_server, body["token"])
    assert c["iss"] == token_server.issuer and c["sub"] == "bob" and c["aud"] == SERVICE
    assert c["exp"] - c["iat"] == 300 and c["nbf"] <= c["iat"] and c["jti"]
    assert c["access"] == [{"type": "repository", "name": "public/app", "actions": ["pull"]}]


def test_scopes_beyond_the_policy_are_granted_fewer_actions_not_refused(token_server):
    scopes = ("repository:public/app:pull,push", "repository:private/app:pull")
    anonymous, bob, alice = (get_token(token_server, *scopes, auth=a).json()["token"] for a in (None, BOB, ALICE))
    for tok, sub in ((anonymous, ""), (bob, "bob")):
        assert claims(token_server, tok)["sub"] == sub
        assert access(token_server, tok) == {("repository", "public/app"): ["pull"],
                                             ("repository", "private/app"): []}
    assert access(token_server, alice) == {("repository", "public/app"): ["pull", "push"],
                                           ("repository", "private/app"): ["pull"]}


def test_scopes_repeated_or_space_separated_all_count(token_server):
    r = requests.get(token_server.realm, params=[("service", SERVICE), ("scope", "repository:a/x:pull"),
                                                 ("scope", "repository:a/y:pull repository:a/z:push")],
                     auth=ALICE, timeout=10)
    assert access(token_server, r.json()["token"]) == {("repository", "a/x"): ["pull"],
                                                       ("repository", "a/y"): ["pull"],
                                                       ("repository", "a/z"): ["push"]}


def test_wrong_credentials_are_401_and_a_bad_scope_400(token_server):
    assert get_token(token_server, "repository:public/app:pull", auth=("bob", "nope")).status_code == 401
    assert get_token(token_server, "repository:public/app:pull", auth=("mallory", "x")).status_code == 401
    assert get_token(token_server, "repository-without-actions", auth=BOB).status_code == 400


def test_post_password_grant_as_containerd_sends_it(token_server):
    form = {"grant_type": "password", "username": "alice", "password": ALICE[1], "service": SERVICE,
            "client_id": "containerd-client", "scope": "repository:private/app:pull"}
    r = requests.post(token_server.realm, data=form, timeout=10)
    assert r.status_code == 200
    assert set(r.json()) == {"access_token", "token", "expires_in", "issued_at"}
    assert access(token_server, r.json()["access_token"]) == {("repository", "private/app"): ["pull"]}
    assert requests.post(token_server.realm, data={**form, "password": "nope"}, timeout=10).status_code == 401
    refresh = {**form, "grant_type": "refresh_token", "refresh_token": "x"}
    assert requests.post(token_server.realm, data=refresh, timeout=10).status_code == 400


def test_requests_are_recorded_without_passwords(token_server):
    get_token(token_server, "repository:public/app:pull")
    get_token(token_server, "repository:private/app:pull", auth=("bob", "wrong-pw"))
    requests.post(token_server.realm, data={"grant_type": "password", "username": "alice", "password": ALICE[1],
                                            "scope": "repository:private/app:pull,push"}, timeout=10)
    assert [(r.method, r.account, r.scopes, r.status) for r in token_server.requests] == [
        ("GET", None, ("repository:public/app:pull",), 200),
        ("GET", "bob", ("repository:private/app:pull",), 401),
        ("POST", "alice", ("repository:private/app:pull,push",), 200)]
    assert len(token_server.requests_by("alice")) == 1
    assert "pw" not in repr(token_server.requests)


def test_expires_in_is_configurable():
    ts = TokenServer(expires_in=7)
    try:
        body = get_token(ts, "repository:public/app:pull").json()
        c = claims(ts, body["token"])
        assert body["expires_in"] == 7 and c["exp"] - c["iat"] == 7
    finally:
        ts.stop()


# --------------------------------------------------------------------------- a real docker-registry

def via_token_flow(origin, path: str, auth=None, accept: str = "") -> requests.Response:
    """GET ``path`` as a registry client does: on a Bearer challenge, a token for the challenge's
    scope (as ``auth``, or anonymous) and once more."""
    headers = {"Accept": accept} if accept else {}
    r = requests.get(origin.url + path, headers=headers, timeout=30)
    if r.status_code != 401:
        return r
    ch = parse_challenge(r.headers["WWW-Authenticate"])
    assert ch.scheme == "bearer" and ch.params["realm"] == origin.token_server.realm
    t = requests.get(ch.params["realm"], params={"service": ch.params["service"], "scope": ch.params["scope"]},
                     auth=auth, timeout=30)
    assert t.status_code == 200
    return requests.get(origin.url + path, headers={**headers, "Authorization": f"Bearer {t.json()['token']}"},
                        timeout=30)


def manifest(origin, repo: str, img, auth=None) -> requests.Response:
    return via_token_flow(origin, f"/v2/{repo}/manifests/v1", auth, img.manifest_media_type)


@pytest.mark.slow
@pytest.mark.parametrize("who", [None, BOB], ids=["anonymous", "bob"])
def test_registry_lets_anonymous_and_bob_pull_public_only(token_origin, who):
    before = len(token_origin.token_server.requests)
    r = manifest(token_origin, "public/app", token_origin.public_img, who)
    assert r.status_code == 200 and r.content == token_origin.public_img.manifest
    assert manifest(token_origin, "private/app", token_origin.private_img, who).status_code == 401
    account = who[0] if who else None
    asked = token_origin.token_server.requests[before:]
    assert [(q.account, q.scopes, q.status) for q in asked] == [
        (account, ("repository:public/app:pull",), 200),
        (account, ("repository:private/app:pull",), 200)]   # granted nothing, not refused


@pytest.mark.slow
def test_registry_lets_alice_pull_both(token_origin):
    for repo, img in (("public/app", token_origin.public_img), ("private/app", token_origin.private_img)):
        r = manifest(token_origin, repo, img, ALICE)
        assert r.status_code == 200 and r.content == img.manifest
        layer = img.layers[0]
        blob = via_token_flow(token_origin, f"/v2/{repo}/blobs/{layer.digest}", ALICE)
        assert blob.status_code == 200 and blob.content == layer.data


@pytest.mark.slow
def test_registry_takes_the_containerd_post_token(token_origin):
    form = {"grant_type": "password", "username": "alice", "password": ALICE[1], "service": token_origin.service,
            "client_id": "containerd-client", "scope": "repository:private/app:pull"}
    tok = requests.post(token_origin.token_server.realm, data=form, timeout=30).json()["access_token"]
    r = requests.get(f"{token_origin.url}/v2/private/app/manifests/v1", timeout=30,
                     headers={"Authorization": f"Bearer {tok}", "Accept": token_origin.private_img.manifest_media_type})
    assert r.status_code == 200 and r.content == token_origin.private_img.manifest


@pytest.mark.slow
def test_a_token_is_good_for_its_repository_only(token_origin):
    s = token_origin.session("alice", "repository:public/app:pull")
    private_layer = token_origin.private_img.layers[0].digest
    # a public/app token is no key to private/app
    assert s.get(f"{token_origin.url}/v2/private/app/blobs/{private_layer}", timeout=30).status_code == 401
    # and blobs are per repository: private/app's layer is not in public/app, whoever asks
    r = s.get(f"{token_origin.url}/v2/public/app/blobs/{private_layer}", timeout=30)
    assert r.status_code == 404 and r.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
    assert s.get(f"{token_origin.url}/v2/public/app/blobs/{token_origin.public_img.layers[0].digest}",
                 timeout=30).status_code == 200
