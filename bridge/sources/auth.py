"""Authentication to upstream registries: Bearer token flow and Basic.

One :class:`Authenticator` per (upstream, credential): the bridge's own
service credentials from the config, a client's registry credentials (held
in memory only while its authorization decision lasts, authz/), or none
(anonymous).  On a 401 the upstream's ``WWW-Authenticate`` challenge says
what to do:

* ``Bearer realm=...,service=...,scope=...``: fetch a token from the realm
  (with Basic credentials when there are some, anonymous otherwise), cache it per
  (upstream, repository) until shortly before ``expires_in`` (default 60 s),
  retry once;
* ``Basic``: retry once with the credentials, and send them up front from
  then on.

Credentials only ever go to the upstream's own origin (scheme, host, port)
and to the token realm the upstream names.
"""
from __future__ import annotations

import base64
import logging
import threading
import time
from dataclasses import dataclass

import requests
from werkzeug.datastructures import WWWAuthenticate

from layerswarm.bridge.format import errors
from layerswarm.bridge.config import UpstreamConfig

log = logging.getLogger("layerswarm.auth")

DEFAULT_EXPIRES = 60
EXPIRY_MARGIN = 5


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "bearer" / "basic"
    params: dict


def parse_challenge(header: str | None) -> Challenge | None:
    """Parse one ``WWW-Authenticate`` value (registries send exactly one)."""
    parsed = WWWAuthenticate.from_header(header) if header else None
    if parsed is None:
        return None
    return Challenge(parsed.type, {k.lower(): v for k, v in parsed.parameters.items()})


def basic_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password or ''}".encode()).decode()


MAX_TOKENS = 1024   # repositories with a cached token, per credential


class Authenticator:
    """Auth state of one credential toward one upstream: token cache and whether Basic is expected."""

    def __init__(self, upstream: UpstreamConfig, session: requests.Session, timeout: tuple,
                 username: str | None = None, password: str | None = None, token: str | None = None):
        self.upstream = upstream
        self.session = session
        self.timeout = timeout
        self.username = username
        self.password = password
        self.token = token             # a bearer token obtained elsewhere (seed --registry-token)
        self._lock = threading.Lock()
        self._tokens = {}  # repo ("" for /v2/) -> (token, expires_at)
        self._basic = False
        self.token_fetches = 0

    @property
    def has_credentials(self) -> bool:
        return bool(self.username)

    def headers(self, repo: str) -> dict:
        """Authorization to send up front for ``repo`` (may be empty)."""
        with self._lock:
            tok = self._tokens.get(repo)
            if tok and tok[1] > time.monotonic():
                return {"Authorization": "Bearer " + tok[0]}
            basic = self._basic
        if basic and self.has_credentials:
            return {"Authorization": basic_header(self.username, self.password)}
        if self.token:
            return {"Authorization": "Bearer " + self.token}
        return {}

    def handle_401(self, resp: requests.Response, repo: str) -> bool:
        """React to a 401; True when a retry with new headers makes sense."""
        ch = parse_challenge(resp.headers.get("WWW-Authenticate"))
        if ch is None:
            return False
        if ch.scheme == "basic":
            if not self.has_credentials:
                return False
            with self._lock:
                already = self._basic
                self._basic = True
            return not already
        if ch.scheme == "bearer":
            self._fetch_token(ch, repo)
            return True
        return False

    def _fetch_token(self, ch: Challenge, repo: str) -> None:
        realm = ch.params.get("realm")
        if not realm or not realm.startswith(("http://", "https://")):
            raise errors.upstream_unavailable(f"upstream {self.upstream.name}: bad token realm {realm!r}", 502)
        params = {}
        if ch.params.get("service"):
            params["service"] = ch.params["service"]
        scope = ch.params.get("scope") or (f"repository:{repo}:pull" if repo else None)
        if scope:
            params["scope"] = scope
        headers = {}
        if self.has_credentials:
            headers["Authorization"] = basic_header(self.username, self.password)
        try:
            r = self.session.get(realm, params=params, headers=headers, timeout=self.timeout,
                                 verify=self.upstream.verify, allow_redirects=False)
        except requests.Timeout:
            raise errors.upstream_unavailable(f"token server {realm} timed out", 504) from None
        except requests.RequestException as exc:
            raise errors.upstream_unavailable(f"token server {realm} unreachable: {exc.__class__.__name__}",
                                              503) from None
        self.token_fetches += 1
        if r.status_code in (401, 403):
            raise errors.unauthorized()
        if r.status_code != 200:
            raise errors.upstream_unavailable(f"token server {realm} answered {r.status_code}", 502)
        try:
            body = r.json()
            token = body.get("token") or body.get("access_token")
            expires = int(body.get("expires_in") or DEFAULT_EXPIRES)
        except (ValueError, AttributeError, TypeError):
            token = None
        if not token:
            raise errors.upstream_unavailable(f"token server {realm} sent no token", 502)
        ttl = max(1, expires - EXPIRY_MARGIN) if expires > 2 * EXPIRY_MARGIN else max(1, expires)
        with self._lock:
            if len(self._tokens) >= MAX_TOKENS:
                self._tokens.pop(next(iter(self._tokens)))
            self._tokens[repo] = (token, time.monotonic() + ttl)
        log.debug("token for %s %s (%d s)", self.upstream.name, repo or "/v2/", expires)
