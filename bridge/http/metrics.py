"""Bridge counters: Prometheus (``GET /metrics``) and JSON (``GET /_layerswarm/stats``).

One :class:`Metrics` per app, with its own ``CollectorRegistry`` (several
apps in one process, as in tests, do not collide).  Every counter is kept
twice: in Prometheus and in a plain dict for the JSON view, which tests and
the demo read::

    {"requests": {"blob GET 200": 3, ...},            # route method status
     "bytes_served": {"blob": N, "manifest": N},
     "blob_bytes": {"origin": N, "store": N, "peer": N, "relay": N},
     "manifests": {"hit": N, "miss": N, "tag_hit": N},
     "fetched": {"origin": N, "relay": N, "peer": N},  # blob bytes this host took in, by source
     "upstream_requests": {"default HEAD manifest 200": N, ...},
     "auth": {"allow": N, "deny": N, "cached": N, "confirm": N, ...},  # chained authorization (authz/)
     "upload": {"peer": N, "relay": N, "at": S, "budget": N, ...}}      # sent to other hosts (node/budget.py)
"""
from __future__ import annotations

import threading
from collections import defaultdict

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

BLOB_SOURCES = ("origin", "store", "peer", "relay")
FALLBACK_SOURCES = ("swarm", "fetch", "tracker", "peer", "relay", "origin")
MISMATCH_SOURCES = ("peer", "relay", "origin", "assembled")
KNOWN_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class _Uploads:
    """A collector read at each scrape: the host's upload counters and budget."""

    def __init__(self, uploads):
        self.uploads = uploads

    def describe(self):
        return []

    def collect(self):
        t = self.uploads.totals()
        sent = CounterMetricFamily("layerswarm_bridge_uploaded_bytes", "Payload bytes sent to other hosts, by path "
                                   "(peer: BitTorrent, relay: the fleet listener)", labels=["path"])
        sent.add_metric(["peer"], t["peer"])
        sent.add_metric(["relay"], t["relay"])
        yield sent
        if t["budget"]:
            yield GaugeMetricFamily("layerswarm_bridge_upload_budget_bytes", "Upload budget, bytes per second",
                                    value=t["budget"])
            yield GaugeMetricFamily("layerswarm_bridge_peer_upload_limit_bytes", "libtorrent's upload limit now "
                                    "(the budget less what relays take)", value=t["peer_limit"])


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._requests = Counter("layerswarm_bridge_requests", "Registry API requests answered",
                                 ["route", "method", "status"], registry=r)
        self._served = Counter("layerswarm_bridge_served_bytes", "Body bytes sent to clients",
                               ["kind"], registry=r)
        self._blob = Counter("layerswarm_bridge_blob_bytes", "Blob bytes sent to clients, by where they came from",
                             ["source"], registry=r)
        self._manifests = Counter("layerswarm_bridge_manifest_cache", "Manifest cache lookups",
                                  ["result"], registry=r)
        self._upstream = Counter("layerswarm_bridge_upstream_requests", "Requests sent to upstream registries",
                                 ["upstream", "method", "kind", "status"], registry=r)
        self._fetched = Counter("layerswarm_bridge_fetched_bytes", "Blob bytes taken in, by where they came from",
                                ["source"], registry=r)
        self._auth = Counter("layerswarm_bridge_auth", "Client authorization: upstream decisions (allow, deny, "
                             "unknown), cache hits, holdings confirmed, tokens refused", ["result"], registry=r)
        self._fallbacks = Counter("layerswarm_bridge_fallbacks", "Blob answers that went on from the origin "
                                  "because the source before it failed (swarm, fetch, tracker, peer, relay)",
                                  ["source"], registry=r)
        self._mismatches = Counter("layerswarm_bridge_digest_mismatches", "Blobs whose bytes did not hash to their "
                                   "digest, by where they came from (the connection is cut, the source blamed)",
                                   ["source"], registry=r)
        self._prefetched = Counter("layerswarm_bridge_prefetches", "Layer fetches started before a client asked "
                                   "(--prefetch-layers)", registry=r)
        self._lock = threading.Lock()
        self._json = {k: defaultdict(int) for k in
                      ("requests", "bytes_served", "blob_bytes", "manifests", "upstream_requests", "fetched",
                       "auth", "prefetch", "fallbacks", "digest_mismatches")}
        for s in ("origin", "relay", "peer"):
            self._fetched.labels(s)
            self._json["fetched"][s] = 0
        for s in BLOB_SOURCES:
            self._blob.labels(s)
            self._json["blob_bytes"][s] = 0
        for s in FALLBACK_SOURCES:
            self._fallbacks.labels(s)
        for s in MISMATCH_SOURCES:
            self._mismatches.labels(s)
        for k in ("hit", "miss", "tag_hit", "shared"):
            self._manifests.labels(k)
            self._json["manifests"][k] = 0

    def _add(self, section: str, key: str, n: int = 1) -> None:
        with self._lock:
            self._json[section][key] += n

    def request(self, route: str, method: str, status: int) -> None:
        # Label values come from clients: keep their number bounded (made-up methods, odd statuses).
        method = method if method in KNOWN_METHODS else "OTHER"
        status = status if 100 <= status <= 599 else 0
        self._requests.labels(route, method, str(status)).inc()
        self._add("requests", f"{route} {method} {status}")

    def served(self, kind: str, n: int) -> None:
        if n:
            self._served.labels(kind).inc(n)
            self._add("bytes_served", kind, n)

    def blob_bytes(self, source: str, n: int) -> None:
        if n:
            self._blob.labels(source).inc(n)
            self._add("blob_bytes", source, n)

    def fetched(self, source: str, n: int) -> None:
        if n:
            self._fetched.labels(source).inc(n)
            self._add("fetched", source, n)

    def manifest(self, result: str) -> None:
        self._manifests.labels(result).inc()
        self._add("manifests", result)

    def fallback(self, source: str) -> None:
        self._fallbacks.labels(source).inc()
        self._add("fallbacks", source)

    def mismatch(self, source: str) -> None:
        self._mismatches.labels(source).inc()
        self._add("digest_mismatches", source)

    def prefetched(self) -> None:
        self._prefetched.inc()
        self._add("prefetch", "started")

    def auth(self, result: str) -> None:
        self._auth.labels(result).inc()
        self._add("auth", result)

    def upstream_request(self, upstream: str, method: str, kind: str, status: int) -> None:
        self._upstream.labels(upstream, method, kind, str(status)).inc()
        self._add("upstream_requests", f"{upstream} {method} {kind} {status}")

    def gauge(self, name: str, doc: str, read) -> None:
        """A gauge whose value ``read()`` gives at each scrape."""
        Gauge(name, doc, registry=self.registry).set_function(read)

    def watch_uploads(self, uploads) -> None:
        """What the host sent other hosts (payload), by path, and the upload budget (node/budget.py)."""
        self.registry.register(_Uploads(uploads))

    def watch_store(self, free_bytes, problems) -> None:
        """The store filesystem's free bytes, and readiness (``/readyz``)."""
        self.gauge("layerswarm_bridge_store_free_bytes", "Free bytes on the store's filesystem", free_bytes)
        self.gauge("layerswarm_bridge_ready", "1 while the store can take new layers (/readyz answers 200), else 0",
                   lambda: 0 if problems() else 1)

    def snapshot(self) -> dict:
        with self._lock:
            return {k: dict(v) for k, v in self._json.items()}

    def prometheus(self) -> bytes:
        return generate_latest(self.registry)
