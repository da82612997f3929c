"""A token-auth registry for tests and demos: a Docker token server (JWTs) in this process, a docker-registry trusting it.

The token server speaks the registry token spec as Docker Hub and distribution's
own token servers do: ``GET /token?service=&scope=&account=`` with optional
Basic credentials (what dockerd sends), and ``POST /token`` with the OAuth2
``grant_type=password`` form (what containerd sends when it has credentials).
Wrong credentials are a 401; a scope the caller may not have is not refused but
granted with fewer (or no) actions, so the registry is the one that says no.
Tokens are ES256 JWTs whose ``x5c`` header carries a self-signed certificate;
docker-registry is configured with that certificate as its ``rootcertbundle``.

Every token request is recorded (method, account, scopes, status; never a
password) so tests can count what a client asked for.
"""
from __future__ import annotations

import base64
import datetime
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import jwt
import requests
from flask import Flask, jsonify, request

from layerswarm.bridge.devstack import imagegen
from layerswarm.bridge.devstack.daemons import start_registry
from layerswarm.bridge.devstack.threadserver import ThreadServer
from layerswarm.bridge.format import pki
from layerswarm.bridge.format.errors import DaemonError

SERVICE = "layerswarm-token-registry"
ISSUER = "layerswarm-token-server"
TEST_PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw"}


def _test_rules(account: str | None, resource_type: str, name: str) -> frozenset:
    if resource_type != "repository":
        return frozenset()
    if account == "alice":
        return frozenset({"pull", "push"})
    return frozenset({"pull"}) if name.startswith("public/") else frozenset()


@dataclass(frozen=True)
class Policy:
    """Who may log in (``users``: account -> password) and what each may do: ``allow(account or None
    for anonymous, resource type, resource name)`` -> the actions granted."""

    users: Mapping[str, str]
    allow: Callable[[str | None, str, str], frozenset]


# alice pulls and pushes everything; bob and anonymous pull repositories under public/ only.
TEST_POLICY = Policy(TEST_PASSWORDS, _test_rules)


@dataclass(frozen=True)
class TokenRequest:
    """One request to the token endpoint as recorded: ``account`` is the name in the credentials
    (None: anonymous), ``scopes`` as asked."""

    method: str
    account: str | None
    scopes: tuple
    service: str | None
    status: int


@dataclass(frozen=True)
class Scope:
    type: str
    name: str
    actions: tuple

    @classmethod
    def parse(cls, text: str) -> "Scope":
        """``type:name:actions``; the name may itself hold colons (a registry host with a port)."""
        kind, sep, rest = text.partition(":")
        name, sep2, actions = rest.rpartition(":")
        if not (sep and sep2 and kind and name):
            raise ValueError(text)
        return cls(kind, name, tuple(a for a in actions.split(",") if a))


class TokenServer:
    """The token endpoint ``.realm`` (``.url`` + ``/token``) on loopback; ``.cert_pem`` is the
    certificate a registry must trust; ``.requests`` the recorded :class:`TokenRequest` list."""

    def __init__(self, policy: Policy = TEST_POLICY, issuer: str = ISSUER, expires_in: int = 300,
                 host: str = "127.0.0.1"):
        self.policy = policy
        self.issuer = issuer
        self.expires_in = expires_in
        self.cert_pem, key_pem = pki.create_ca(f"{issuer} signing key")
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        self._key = serialization.load_pem_private_key(key_pem, password=None)
        der = x509.load_pem_x509_certificate(self.cert_pem).public_bytes(serialization.Encoding.DER)
        self._x5c = [base64.b64encode(der).decode()]
        self.requests: list = []
        self._lock = threading.Lock()
        self.server = ThreadServer(self._app(), host)
        self.url = self.server.url
        self.realm = f"{self.url}/token"

    def requests_by(self, account: str | None) -> list:
        """The recorded requests of ``account`` (None: anonymous)."""
        with self._lock:
            return [r for r in self.requests if r.account == account]

    def stop(self) -> None:
        self.server.stop()

    # ----------------------------------------------------------------- issuing

    def issue(self, account: str | None, scopes, service: str | None, now: int | None = None) -> str:
        """A signed token for ``account`` with each scope's actions cut down to what the policy allows."""
        access: dict = {}
        for s in scopes:
            allowed = self.policy.allow(account, s.type, s.name)
            granted = access.setdefault((s.type, s.name), [])
            for action in s.actions:
                if action in allowed and action not in granted:
                    granted.append(action)
        now = int(time.time()) if now is None else now
        claims = {"iss": self.issuer, "sub": account or "", "aud": service or "", "iat": now, "nbf": now,
                  "exp": now + self.expires_in, "jti": secrets.token_hex(16),
                  "access": [{"type": t, "name": n, "actions": a} for (t, n), a in access.items()]}
        return jwt.encode(claims, self._key, algorithm="ES256", headers={"x5c": self._x5c})

    def _decide(self, method: str, grant: str | None, account: str | None, password: str | None,
                texts: tuple, service: str | None) -> tuple:
        """(status, JSON body, headers) for one token request."""
        if method == "POST" and grant != "password":   # no refresh tokens are handed out
            return 400, {"error": "unsupported_grant_type"}, {}
        if method == "POST" or account is not None:
            expected = self.policy.users.get(account or "")
            if expected is None or not hmac.compare_digest(expected.encode(), (password or "").encode()):
                return 401, {"error": "invalid_grant"}, {"WWW-Authenticate": f'Basic realm="{self.realm}"'}
        try:
            scopes = [Scope.parse(t) for t in texts]
        except ValueError:
            return 400, {"error": "invalid_scope"}, {}
        now = int(time.time())
        token = self.issue(account, scopes, service, now)
        issued = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).isoformat().replace("+00:00", "Z")
        return 200, {"token": token, "access_token": token, "expires_in": self.expires_in, "issued_at": issued}, {}

    # ----------------------------------------------------------------- HTTP

    def _app(self) -> Flask:
        app = Flask("token-server")

        @app.route("/token", methods=["GET", "POST"])
        def token():
            if request.method == "POST":
                form = request.form
                grant, account, password = form.get("grant_type"), form.get("username"), form.get("password")
                texts, service = form.getlist("scope"), form.get("service")
            else:
                auth = request.authorization
                basic = auth is not None and auth.type == "basic"
                grant, account, password = None, auth.username if basic else None, auth.password if basic else None
                texts, service = request.args.getlist("scope"), request.args.get("service")
            texts = tuple(t for text in texts for t in text.split())   # several scopes may share a parameter
            status, body, headers = self._decide(request.method, grant, account, password, texts, service)
            with self._lock:
                self.requests.append(TokenRequest(request.method, account, texts, service, status))
            return jsonify(body), status, headers

        return app


# --------------------------------------------------------------------------- the registry behind it

class TokenOrigin:
    """A docker-registry that takes only the token server's JWTs: ``.url``, ``.log``, ``.access_log()``
    (as a ``start_registry`` daemon), ``.token_server``, ``.service``; ``.stop()`` stops both."""

    def __init__(self, registry, token_server: TokenServer, service: str):
        self.registry = registry
        self.token_server = token_server
        self.service = service
        self.url = registry.url
        self.log = registry.log
        self.access_log = registry.access_log

    def token(self, account: str | None, *scopes: str) -> str:
        """A token for ``scopes`` fetched over HTTP as ``account`` (its password from the policy; None:
        anonymous), the way dockerd asks."""
        auth = (account, self.token_server.policy.users[account]) if account else None
        r = requests.get(self.token_server.realm, params={"service": self.service, "scope": list(scopes)},
                         auth=auth, timeout=30)
        r.raise_for_status()
        return r.json()["token"]

    def session(self, account: str | None, *scopes: str) -> requests.Session:
        """A session that sends a token for ``scopes`` (as ``account``) with every request."""
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {self.token(account, *scopes)}"
        return s

    def push(self, repo: str, tag: str, image, account: str = "alice"):
        """Push ``image`` as ``repo:tag`` with a pull+push token of ``account``; the manifest digest."""
        with self.session(account, f"repository:{repo}:pull,push") as s:
            return imagegen.push(self.url, repo, tag, image, session=s)

    def signal(self, sig) -> None:
        self.registry.signal(sig)

    def stop(self) -> None:
        self.registry.stop()
        self.token_server.stop()


def start_token_registry(workdir: Path, policy: Policy = TEST_POLICY, expires_in: int = 300,
                         service: str = SERVICE, issuer: str = ISSUER, port: int | None = None) -> TokenOrigin:
    """A token server in this process and a docker-registry on loopback that trusts only its tokens."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ts = TokenServer(policy, issuer=issuer, expires_in=expires_in)
    bundle = workdir / "token-signer.pem"
    bundle.write_bytes(ts.cert_pem)
    auth = (f"auth:\n  token:\n    realm: {ts.realm}\n    service: {service}\n    issuer: {issuer}\n"
            f"    rootcertbundle: {bundle}\n")
    try:
        registry = start_registry(workdir, port=port, extra_config=auth)
    except DaemonError:
        ts.stop()
        raise
    return TokenOrigin(registry, ts, service)
