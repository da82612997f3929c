"""HTTP client for one upstream registry.

* connect/read timeouts on every call (``(connect, read)`` for requests);
* auth via an :class:`~layerswarm.bridge.sources.auth.Authenticator` (one
  retry after a 401): the bridge's service credentials by default, or the one
  a call passes (a client's own, or anonymous);
* redirects followed by hand (blob GETs may 307 to object storage) so that
  ``Authorization`` is only ever sent to the upstream's own origin;
* transport failures become registry errors: unreachable -> 503, timeout ->
  504; :meth:`UpstreamClient.raise_for_status` maps upstream answers (401 ->
  UNAUTHORIZED, 429 -> TOOMANYREQUESTS with Retry-After, 5xx -> 502).
"""
from __future__ import annotations

import logging
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter

from layerswarm.bridge.format import errors
from layerswarm.bridge.sources.auth import Authenticator
from layerswarm.bridge.config import UpstreamConfig

log = logging.getLogger("layerswarm.upstream")

MAX_REDIRECTS = 5
_KNOWN_CODES = {"BLOB_UNKNOWN", "MANIFEST_UNKNOWN", "NAME_UNKNOWN", "NAME_INVALID", "DIGEST_INVALID",
                "TAG_INVALID", "MANIFEST_INVALID", "DENIED", "UNSUPPORTED"}


def _origin(url: str) -> tuple:
    p = urlsplit(url)
    port = p.port or (443 if p.scheme == "https" else 80)
    return p.scheme, (p.hostname or "").lower(), port


class UpstreamClient:
    def __init__(self, cfg: UpstreamConfig, connect_timeout: float, read_timeout: float,
                 pool_size: int = 64, on_request=None):
        self.cfg = cfg
        self.name = cfg.name
        self.timeout = (connect_timeout, read_timeout)
        self.session = requests.Session()
        # No ~/.netrc or env proxies: credentials come from our config only.
        self.session.trust_env = False
        adapter = HTTPAdapter(pool_connections=8, pool_maxsize=max(8, pool_size), max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        # The bridge's own credentials (config); without any it is anonymous.
        self.auth = Authenticator(cfg, self.session, self.timeout, cfg.username, cfg.password, cfg.token)
        self.anonymous = Authenticator(cfg, self.session, self.timeout)
        self._origin = _origin(cfg.url)
        self._on_request = on_request  # callback(upstream, method, kind, status)

    @property
    def has_service_credentials(self) -> bool:
        return bool(self.cfg.username or self.cfg.token)

    def authenticator(self, username: str, password: str) -> Authenticator:
        """Auth state for a client's own credentials (the caller decides how long it lives)."""
        return Authenticator(self.cfg, self.session, self.timeout, username, password)

    def url(self, repo: str, suffix: str) -> str:
        return f"{self.cfg.url}/v2/{repo}/{suffix}" if repo else f"{self.cfg.url}/v2/"

    def request(self, method: str, repo: str, suffix: str, headers: dict | None = None,
                stream: bool = False, kind: str = "", auth: Authenticator | None = None) -> requests.Response:
        """One registry call with auth (``auth``, default the service credentials) and redirects;
        the caller closes streamed responses."""
        url = self.url(repo, suffix)
        auth = auth or self.auth
        resp = self._send(method, url, repo, headers or {}, stream, auth)
        if resp.status_code == 401:
            if auth.handle_401(resp, repo):
                resp.close()
                resp = self._send(method, url, repo, headers or {}, stream, auth)
        if self._on_request:
            self._on_request(self.name, method, kind, resp.status_code)
        return resp

    def _send(self, method: str, url: str, repo: str, headers: dict, stream: bool,
              auth: Authenticator) -> requests.Response:
        hops = 0
        while True:
            h = dict(headers)
            if _origin(url) == self._origin:
                h.update(auth.headers(repo))
            try:
                resp = self.session.request(method, url, headers=h, stream=stream, timeout=self.timeout,
                                            allow_redirects=False, verify=self.cfg.verify)
            except requests.Timeout:
                raise errors.upstream_unavailable(f"upstream {self.name} timed out", 504) from None
            except requests.RequestException as exc:
                raise errors.upstream_unavailable(
                    f"upstream {self.name} unreachable: {exc.__class__.__name__}", 503) from None
            if resp.status_code in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                hops += 1
                resp.close()
                if hops > MAX_REDIRECTS:
                    raise errors.upstream_unavailable(f"upstream {self.name}: too many redirects", 502)
                url = urljoin(url, resp.headers["Location"])
                if not url.startswith(("http://", "https://")):
                    raise errors.upstream_unavailable(f"upstream {self.name}: bad redirect", 502)
                if resp.status_code == 303:
                    method = "GET" if method != "HEAD" else "HEAD"
                continue
            return resp

    def pull_probe(self, repo: str, auth: Authenticator, kind: str = "auth") -> int:
        """Does ``auth`` let its holder pull ``repo`` (``""``: are its credentials good at all)?  The
        status of the cheapest call registries guard with pull access: ``tags/list`` (``/v2/`` for
        ""), token dance included; a token realm refusing the credentials is a 401.  No answer
        (unreachable, 5xx, 429) raises: that is no decision."""
        try:
            r = self.request("GET", repo, "tags/list?n=1" if repo else "", {}, auth=auth, kind=kind)
        except errors.RegistryError as exc:
            if exc.status != 401:
                raise
            return 401
        if r.status_code >= 500 or r.status_code == 429:
            self.raise_for_status(r, errors.unauthorized())
        r.close()
        return r.status_code

    def raise_for_status(self, resp: requests.Response, not_found: errors.RegistryError) -> None:
        """Turn a non-2xx upstream answer into the RegistryError we answer with."""
        s = resp.status_code
        if 200 <= s < 300:
            return
        body_code = None
        if s < 500 and resp.request.method != "HEAD":
            try:
                body_code = resp.json()["errors"][0]["code"]
            except Exception:
                body_code = None
        resp.close()
        if s == 404:
            if body_code == "NAME_UNKNOWN":
                raise errors.RegistryError("NAME_UNKNOWN", "repository name not known to registry", 404,
                                           not_found.detail)
            raise not_found
        if s == 401:
            raise errors.unauthorized()
        if s == 403:
            raise errors.denied()
        if s == 429:
            ra = resp.headers.get("Retry-After", "60").strip()
            raise errors.RegistryError("TOOMANYREQUESTS", "too many requests", 429,
                                       {"upstream": self.name}, headers={"Retry-After": ra})
        if s == 416:
            total = resp.headers.get("Content-Range", "").rpartition("/")[2]
            raise errors.range_invalid(int(total) if total.isdigit() else 0)
        if s >= 500:
            raise errors.upstream_unavailable(f"upstream {self.name} answered {s}", 502)
        if body_code in _KNOWN_CODES:
            raise errors.RegistryError(body_code, f"upstream {self.name} rejected the request", s if s < 500 else 502)
        raise errors.upstream_unavailable(f"upstream {self.name} answered {s}", 502)

    def close(self) -> None:
        self.session.close()
