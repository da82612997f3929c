"""Chained authorization: a client reads repository R behind upstream U only if U lets that client pull R.

The registry views ask the :class:`Gate` three questions:

* ``client(header)``: who is this (anonymous, Basic credentials, or one of
  our tokens)?
* ``authorize(client, upstream, repo)``: may it pull U/R?  The answer comes
  from U itself: ``GET /v2/R/tags/list`` with the client's own credentials
  (U's token dance included), cached per (credential hash, U, R) for
  ``auth_ttl``.  The :class:`Grant` says which credentials fetches from U use
  (the bridge's service credentials where configured, else the client's) and
  whether R's bytes may move through the fleet (secure fleet mode, or U
  serves R anonymously).
* ``require(grant, kind, digest)``: does U hold this blob or manifest in R?
  Known when a manifest U served under R names it, else one ``HEAD`` to U
  with the client's credentials; cached per (U, R, digest).  Digests are
  global but registries scope them per repository: without this a public
  repository's name would be a window onto every private layer in the fleet.

Credentials live only in memory, keyed by a keyed hash, for at most
``auth_ttl`` after they were last shown, and go only to U and the token realm
U names (sources/auth.py).  Every cache is bounded (outsiders can fill them).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from cachetools import TTLCache

from layerswarm.bridge.config import ClientAuthSection
from layerswarm.bridge.authz.credentials import ClientTokens, Presented
from layerswarm.bridge.format import errors
from layerswarm.bridge.format.mediatypes import MANIFEST_TYPES, referenced_digests
from layerswarm.bridge.sources.auth import Authenticator
from layerswarm.bridge.sources.upstream import UpstreamClient

log = logging.getLogger("layerswarm.authz")

# A registry keeps a blob in a repository until someone deletes it: an hour is plenty, and a
# manifest served under R refreshes what it names at every pull.
HOLDINGS_TTL = 3600.0
MAX_HOLDINGS = 200_000
ALLOW, DENY, UNKNOWN = "allow", "deny", "unknown"


@dataclass(frozen=True)
class Client:
    """Who asks: ``key`` names the credential (keyed hash; "" anonymous).  ``granted``: with one of
    our tokens, the (upstream name, repository) pairs it grants; None: decide per request."""

    key: str = ""
    username: str | None = None
    granted: frozenset | None = None

    @property
    def anonymous(self) -> bool:
        return not self.key


ANONYMOUS = Client()


@dataclass(frozen=True)
class Grant:
    """A client's permission to pull one repository, and how this request talks to its upstream."""

    client: Client
    upstream: UpstreamClient
    repo: str
    check_auth: Authenticator    # the client's own authorization toward U: confirmations
    fetch_auth: Authenticator    # what fetches from U use: service credentials, else check_auth
    shareable: bool              # may R's bytes go through torrents, leases, relays, shared manifests


class _Held:
    """A client's credential while its decisions last, and its auth state per upstream."""

    def __init__(self, username: str, password: str):
        self.username = username
        self.password = password
        self.per_upstream: dict = {}


class Gate:
    def __init__(self, cfg: ClientAuthSection, default: UpstreamClient, secure: bool, metrics=None,
                 tokens: ClientTokens | None = None):
        self.ttl = cfg.auth_ttl
        self.default = default
        self.secure = secure
        self.metrics = metrics
        self.tokens = tokens or ClientTokens()
        self._lock = threading.Lock()
        self._held = TTLCache(cfg.auth_cache_entries, cfg.auth_ttl)        # key -> _Held
        self._decisions = TTLCache(cfg.auth_cache_entries, cfg.auth_ttl)   # (key, U, R) -> (outcome, expires)
        self._holdings = TTLCache(MAX_HOLDINGS, HOLDINGS_TTL)              # (U, R, digest) -> True

    def _count(self, what: str) -> None:
        if self.metrics is not None:
            self.metrics.auth(what)

    # -- who is asking ----------------------------------------------------------------------
    def client(self, presented: Presented, challenge: str) -> Client:
        if presented.scheme == "basic":
            key = self.tokens.credential_key(presented.username, presented.password)
            with self._lock:
                held = self._held.get(key)
                if held is None:
                    held = _Held(presented.username, presented.password)
                self._held[key] = held      # (re)starts its TTL: kept while it is being used
            return Client(key, presented.username)
        if presented.scheme == "bearer":
            got = self.tokens.verify(presented.token)
            if got is None:
                self._count("bad_token")
                raise errors.unauthorized(challenge + ',error="invalid_token"', "invalid or expired token")
            key, grants, _ = got
            return Client(key, None, grants)
        return ANONYMOUS

    def _upstream_auth(self, client: Client, up: UpstreamClient, challenge: str) -> Authenticator:
        if client.anonymous:
            return up.anonymous
        with self._lock:
            held = self._held.get(client.key)
            if held is None:
                # A token outlived the credential behind it (it cannot, but a restart of the
                # cache bound can): the client logs in again.
                raise errors.unauthorized(challenge + ',error="invalid_token"', "authorization expired")
            auth = held.per_upstream.get(up.name)
            if auth is None:
                auth = held.per_upstream[up.name] = up.authenticator(held.username, held.password)
            return auth

    # -- may it pull ------------------------------------------------------------------------
    def decide(self, client: Client, up: UpstreamClient, repo: str, challenge: str, fresh_for: float = 0) -> tuple:
        """(outcome, expires_at wall clock) of "may ``client`` pull ``repo`` from ``up``" (repo "":
        are the credentials good at all), from the cache (if it has ``fresh_for`` s left) or ``up``."""
        k = (client.key, up.name, repo)
        with self._lock:
            hit = self._decisions.get(k)
        if hit is not None and hit[1] - time.time() >= fresh_for:
            self._count("cached")
            return hit
        status = up.pull_probe(repo, self._upstream_auth(client, up, challenge))
        # A 404 with the client's own credentials: U does not know R (or hides it from this client);
        # either way the client may learn only that, and no fetch may use other credentials for it.
        outcome = ALLOW if 200 <= status < 300 else UNKNOWN if status == 404 else DENY
        self._count(outcome)
        got = (outcome, time.time() + self.ttl)
        with self._lock:
            self._decisions[k] = got
        return got

    def authorize(self, client: Client, up: UpstreamClient, repo: str, challenge: str) -> Grant:
        """The client's grant for U/R, or a 401 (with ``challenge``) / 404 NAME_UNKNOWN."""
        if client.granted is not None:
            if (up.name, repo) not in client.granted:
                self._count("token_scope")
                with self._lock:
                    known = self._decisions.get((client.key, up.name, repo))
                if known is not None and known[0] == UNKNOWN:   # the realm learnt U has no such R
                    raise errors.RegistryError("NAME_UNKNOWN", "repository name not known to registry", 404,
                                               {"name": repo})
                raise errors.unauthorized(challenge + ',error="insufficient_scope"',
                                          "the token does not grant this repository")
        else:
            outcome, _ = self.decide(client, up, repo, challenge)
            if outcome == UNKNOWN:
                raise errors.RegistryError("NAME_UNKNOWN", "repository name not known to registry", 404,
                                           {"name": repo})
            if outcome != ALLOW:
                raise errors.unauthorized(challenge, "access to this repository is denied")
        check = self._upstream_auth(client, up, challenge)
        fetch = up.auth if up.has_service_credentials else check
        return Grant(client, up, repo, check, fetch, self.shareable(up, repo, challenge))

    def shareable(self, up: UpstreamClient, repo: str, challenge: str) -> bool:
        """Secure fleet mode (hosts enforce this gate), or U serves R to anyone."""
        return self.secure or self.decide(ANONYMOUS, up, repo, challenge)[0] == ALLOW

    def login(self, client: Client, challenge: str) -> bool:
        """``GET /v2/``: a token of ours, or credentials the default upstream accepts."""
        if client.granted is not None:
            return True
        if client.anonymous:
            return False
        return self.decide(client, self.default, "", challenge)[0] == ALLOW

    def grants(self, client: Client, scopes: list, challenge: str) -> tuple:
        """For the token realm: ([(U name, R)] granted of ``scopes`` [(upstream, repo)], expiry)."""
        granted, expires = [], time.time() + self.ttl
        for up, repo in scopes:
            try:
                # A token lives no longer than its decisions: ask again rather than hand out one
                # that expires in the middle of a pull.
                outcome, until = self.decide(client, up, repo, challenge, fresh_for=self.ttl / 2)
            except errors.RegistryError as exc:
                if exc.status != 401:
                    raise
                continue
            if outcome == ALLOW:
                granted.append((up.name, repo))
                expires = min(expires, until)
        return granted, expires

    # -- does U hold it in R ------------------------------------------------------------------
    def record(self, up: UpstreamClient, repo: str, digest, body: bytes | None = None) -> None:
        """U served manifest ``digest`` under ``repo``: it and what it names are held there."""
        names = [str(digest)] + referenced_digests(body)
        with self._lock:
            for d in names:
                self._holdings[(up.name, repo, d)] = True

    def held(self, up: UpstreamClient, repo: str, digest) -> bool:
        with self._lock:
            return (up.name, repo, str(digest)) in self._holdings

    def require(self, grant: Grant, kind: str, digest) -> None:
        """Return when U holds ``digest`` (``kind``: "blobs" / "manifests") in the grant's repository
        (a 401 here carries the request's challenge: http/app.py)."""
        up, repo = grant.upstream, grant.repo
        if self.held(up, repo, digest):
            return
        self._count("confirm")
        headers = {"Accept": ", ".join(MANIFEST_TYPES)} if kind == "manifests" else {}
        r = up.request("HEAD", repo, f"{kind}/{digest}", headers, auth=grant.check_auth, kind="confirm")
        r.close()
        if 200 <= r.status_code < 300:
            with self._lock:
                self._holdings[(up.name, repo, str(digest))] = True
            return
        if r.status_code == 401:
            raise errors.unauthorized(None, "access to this repository is denied")
        up.raise_for_status(r, errors.blob_unknown(str(digest)) if kind == "blobs"
                            else errors.manifest_unknown(str(digest)))
        raise errors.upstream_unavailable(f"upstream {up.name} answered {r.status_code}", 502)
