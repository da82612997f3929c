"""The one HTTP client of the tracker: metainfo registry, manifests, reports, leases, swarms, scrape (tracker/API.md)."""
from __future__ import annotations

import logging
from urllib.parse import quote_from_bytes

import bencodepy
import requests

from layerswarm.bridge.format import layertorrent as tf
from layerswarm.bridge.format.digest import Digest, InfoHash
from layerswarm.bridge.format.errors import InvalidMetainfo, PublishConflict, PublishRejected, TrackerUnavailable

log = logging.getLogger(__name__)


class TrackerClient:
    """The host's calls to the tracker: metainfo, manifests, reports, leases, scrape.

    Several base URLs are replicas of one tracker sharing one store: a call goes
    to the replica that answered last (sticky) and moves on to the next one when
    that cannot answer (connection error, timeout, 5xx); a 4xx is the tracker's
    answer and is returned.  Retrying a call on another replica is safe: every
    call is idempotent at the store (a lease asked again gives the same answer).
    TrackerUnavailable means no replica answered.
    """

    def __init__(self, urls, token: str | None = None, host_id: str = "", timeout: float = 10.0, tls=None):
        """``urls``: one base URL or several (replicas); ``tls``: the host's FleetTLS in secure fleet
        mode (HTTPS with our certificate, the fleet CA only)."""
        self.urls = tuple(u.rstrip("/") for u in ([urls] if isinstance(urls, str) else urls))
        if not self.urls:
            raise ValueError("a tracker client needs at least one tracker URL")
        self._current = 0   # index of the replica that answered last
        self.token = token
        self.host_id = host_id
        self.timeout = timeout
        self._http = requests.Session()
        # Given with every request: requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE in the
        # environment override a session's ``verify`` (then the fleet CA is not trusted).
        self._tls_options = tls.requests_options() if tls is not None else {}
        # our torrents' format: a tracker serving both (a fleet moving to secure mode) serves ours
        self._format = {"format": tf.FORMAT_VERSION if tls is None else tf.SECURE_FORMAT_VERSION}

    @property
    def url(self) -> str:
        """The replica calls go to now."""
        return self.urls[self._current]

    @property
    def announce_urls(self) -> list:
        """Every replica's announce URL, for torrents and the session (libtorrent announces to each)."""
        return [u + "/announce" for u in self.urls]

    def _req(self, method: str, path: str, **kw) -> requests.Response:
        kw.setdefault("timeout", self.timeout)
        kw.update(self._tls_options)
        start, failures = self._current, []
        for k in [(start + i) % len(self.urls) for i in range(len(self.urls))]:
            url = self.urls[k]
            try:
                r = self._http.request(method, url + path, **kw)
            except requests.RequestException as exc:
                failures.append(f"tracker {url} unreachable: {exc.__class__.__name__}")
                continue
            if r.status_code >= 500:
                failures.append(f"tracker {url} answered {r.status_code} on {method} {path}")
                continue
            if failures and self._current != k:
                self._current = k
                log.warning("%s; calls go to tracker %s now", failures[-1], url)
            return r
        raise TrackerUnavailable("; ".join(failures))

    def _auth(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def healthy(self) -> bool:
        try:
            return self._req("GET", "/healthz", timeout=min(self.timeout, 5)).status_code == 200
        except TrackerUnavailable:
            return False

    def get_metainfo(self, digest: Digest) -> tf.LayerTorrent | None:
        """The published torrent of our format for ``digest`` (validated), or None when there is none."""
        r = self._req("GET", f"/metainfo/{digest}", params=self._format)
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise TrackerUnavailable(f"tracker answered {r.status_code} for metainfo of {digest}")
        try:
            return tf.parse_metainfo(r.content, digest)
        except InvalidMetainfo as exc:
            raise TrackerUnavailable(f"tracker served an invalid torrent for {digest}: {exc}") from None

    def put_metainfo(self, torrent: tf.LayerTorrent) -> bool:
        """Publish; True if stored now, False if the identical torrent was there already."""
        r = self._req("PUT", f"/metainfo/{torrent.digest}", data=torrent.metainfo,
                      headers={"Content-Type": "application/x-bittorrent", **self._auth()})
        if r.status_code in (200, 201):
            return r.status_code == 201
        if r.status_code == 409:
            try:
                ih = r.json().get("info_hash")
            except ValueError:
                ih = None
            raise PublishConflict(torrent.digest, ih)
        raise PublishRejected(f"tracker refused the torrent for {torrent.digest}: "
                              f"{r.status_code} {_error_text(r)}")

    def report(self, digest: Digest, info_hash: InfoHash | str, reason: str) -> bool:
        """Report a published torrent whose pieces disagree with verified bytes; True if quarantined."""
        body = {"info_hash": str(info_hash), "host": self.host_id, "reason": reason}
        try:
            r = self._req("POST", f"/metainfo/{digest}/reports", json=body, headers=self._auth())
            return bool(r.ok and r.json().get("quarantined"))
        except (TrackerUnavailable, ValueError) as exc:
            log.warning("could not report torrent of %s: %s", digest, exc)
            return False

    def get_manifest(self, digest: Digest) -> tuple | None:
        """(media type, body) of a manifest shared at the tracker, verified against ``digest``."""
        r = self._req("GET", f"/manifests/{digest}")
        if r.status_code != 200 or Digest.of_bytes(r.content) != digest:
            return None
        return r.headers.get("Content-Type", "").split(";")[0].strip(), r.content

    def put_manifest(self, digest: Digest, media_type: str, body: bytes) -> None:
        """Share a manifest fetched by digest, so the fleet fetches it from the upstream once."""
        r = self._req("PUT", f"/manifests/{digest}", data=body,
                      headers={"Content-Type": media_type, **self._auth()})
        if r.status_code not in (200, 201):
            log.info("tracker did not take manifest %s: %s %s", digest, r.status_code, _error_text(r))

    def lease(self, digest: Digest, url: str, ttl: float) -> dict:
        """Ask who fetches a cold blob: ``{"role": "holder"|"relay"|"published", "source": ...}``."""
        r = self._req("POST", f"/leases/{digest}", json={"host": self.host_id, "url": url, "ttl": ttl},
                      params=self._format, headers=self._auth())
        if r.status_code not in (200, 201):
            # The tracker's reason matters: a refused relay URL (--advertise-url not this host's
            # address) looks like a tracker outage otherwise.
            raise TrackerUnavailable(f"lease request answered {r.status_code} {_error_text(r)}")
        return r.json()

    def renew_lease(self, digest: Digest, ttl: float) -> None:
        self._req("PUT", f"/leases/{digest}", json={"host": self.host_id, "ttl": ttl}, headers=self._auth())

    def release_lease(self, digest: Digest) -> None:
        self._req("DELETE", f"/leases/{digest}", params={"host": self.host_id}, headers=self._auth())

    def swarms(self) -> list:
        """Every swarm the tracker knows, as rows (``GET /swarms``)."""
        r = self._req("GET", "/swarms")
        try:
            rows = r.json() if r.status_code == 200 else None
        except ValueError:
            rows = None
        if not isinstance(rows, list):
            raise TrackerUnavailable(f"{self.url}/swarms did not answer a JSON list (HTTP {r.status_code}): "
                                     "is that a layerswarm tracker?")
        return rows

    def scrape(self, info_hashes) -> dict:
        """info-hash hex -> {"complete", "incomplete", "downloaded"} (BEP 48)."""
        ihs = [InfoHash.from_hex(str(h)) for h in info_hashes]
        qs = "&".join("info_hash=" + quote_from_bytes(h.raw, safe="") for h in ihs)
        r = self._req("GET", "/scrape" + (f"?{qs}" if qs else ""))
        try:
            files = bencodepy.decode(r.content).get(b"files", {})
        except Exception:
            raise TrackerUnavailable("tracker scrape answer is not bencode") from None
        out = {}
        for raw, st in files.items():
            out[raw.hex()] = {k.decode(): v for k, v in st.items() if isinstance(v, int)}
        return out


def _error_text(r: requests.Response) -> str:
    try:
        return str(r.json().get("error", ""))[:200]
    except ValueError:
        return r.text[:200]
