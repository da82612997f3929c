"""The bridge's Flask app factories: the client API and the fleet listener's app, all wiring in one place.

``create_app(config, peer=None, blob_source=None)`` builds, once per app:
upstream clients (one per configured upstream), the router, the manifest
service with its disk cache, the metrics, and the blob source (the swarm
source when the host has a peer, else the origin).  They live in
``app.extensions["layerswarm"]`` (a :class:`BridgeState`), never in ``g``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from layerswarm.bridge.authz.gate import Gate
from layerswarm.bridge.config import BridgeConfig
from layerswarm.bridge.format import errors
from layerswarm.bridge.http import access, admin
from layerswarm.bridge.http.realm import bp as realm_bp
from layerswarm.bridge.http.metrics import CONTENT_TYPE_LATEST, Metrics
from layerswarm.bridge.http.registry import API_VERSION, bp as registry_bp
from layerswarm.bridge.http.relay import relay_blueprint
from layerswarm.bridge.node.store import disk_free, space_problems
from layerswarm.bridge.sources.blobs import BlobSource, OriginBlobSource, OriginSlots
from layerswarm.bridge.sources.manifests import ManifestService, ManifestStore
from layerswarm.bridge.sources.router import Router
from layerswarm.bridge.sources.upstream import UpstreamClient

log = logging.getLogger("layerswarm.app")


@dataclass
class BridgeState:
    config: BridgeConfig
    metrics: Metrics
    upstreams: dict          # name -> UpstreamClient
    router: Router
    gate: Gate               # chained authorization: who may read which repository (authz/)
    manifests: ManifestService
    origin_blobs: OriginBlobSource
    blobs: BlobSource        # what the registry view asks: the swarm source with a peer, else the origin
    peer: object = None


def create_app(config: BridgeConfig, peer=None, blob_source: BlobSource | None = None) -> Flask:
    """The registry mirror for ``config``: with a ``peer`` (the host's Peer) blobs come from the swarm
    and its admin views are mounted; ``blob_source`` replaces the blob source (tests)."""
    metrics = Metrics()
    ups = config.upstreams
    clients = {name: UpstreamClient(cfg, ups.connect_timeout, ups.read_timeout,
                                    pool_size=config.server.threads, on_request=metrics.upstream_request)
               for name, cfg in ups.by_name.items()}
    origin = OriginBlobSource(OriginSlots(config.budgets.origin_fetches, config.first_byte_timeout))
    if blob_source is None and peer is not None:
        from layerswarm.bridge.sources.swarm import swarm_source
        blob_source = swarm_source(peer, origin, config, metrics)
    router = Router(ups, clients)
    gate = Gate(config.client_auth, router.default, config.fleet.secure, metrics)
    state = BridgeState(
        config=config, metrics=metrics, upstreams=clients, router=router, gate=gate,
        manifests=ManifestService(ManifestStore(config.server.store_dir), ups.tag_ttl, ups.max_manifest_bytes,
                                  metrics, shared=getattr(peer, "tracker", None), holdings=gate),
        origin_blobs=origin, blobs=blob_source or origin, peer=peer)
    app = _app(state, access.CLIENT_TABLE)

    app.register_blueprint(registry_bp)
    app.register_blueprint(realm_bp)
    if peer is not None:
        app.register_blueprint(admin.make_blueprint(peer))

    @app.get("/metrics")
    def prometheus_metrics():
        g.route = "metrics"
        return Response(metrics.prometheus(), 200, {"Content-Type": CONTENT_TYPE_LATEST})

    store_dir, floor = config.server.store_dir, config.budgets.disk_free_min
    metrics.watch_store(lambda: disk_free(store_dir)[0], lambda: space_problems(store_dir, floor))
    metrics.gauge("layerswarm_bridge_origin_fetches", "Blob GETs to origin registries in flight", lambda: origin.slots.active)

    @app.get("/readyz")
    def readyz():
        # Readiness, not liveness: a full disk stops new layers, not serving (store hits, pass-through),
        # so /healthz stays 200 and a DaemonSet is not restarted in a loop over it.
        g.route = "readyz"
        problems = space_problems(store_dir, floor)
        return jsonify(ready=not problems, problems=problems), 503 if problems else 200

    if peer is not None:
        metrics.watch_uploads(peer.uploads)

    @app.get("/_layerswarm/stats")
    def stats():
        g.route = "stats"
        # In secure mode every peer and relay byte came over TLS (SSL torrents, the fleet listener).
        out = {**metrics.snapshot(), "fleet_mode": "secure" if config.fleet.secure else "open"}
        if peer is not None:
            out["upload"] = peer.uploads.totals()
        return jsonify(out)

    return app


def create_fleet_app(state: BridgeState) -> Flask:
    """What other hosts call, on the fleet listener: the relay of our blobs and fetches, and a health check.

    It shares the client app's state (one metrics registry, one peer) but none of its views."""
    app = _app(state, access.FLEET_TABLE)
    fetches = getattr(state.blobs, "active_fetch", lambda digest: None)
    app.register_blueprint(relay_blueprint(state.peer.store, fetches, state.config.first_byte_timeout,
                                           state.peer.uploads))
    return app


def _app(state: BridgeState, table: dict) -> Flask:
    """A Flask app over ``state`` whose every request passes ``table`` first; registry-style errors."""
    # Explicit paths: Flask cannot locate a module inside the editable-installed
    # ``layerswarm`` namespace on its own (and the app reads no instance files).
    here = os.path.dirname(os.path.abspath(__file__))
    app = Flask(__name__, root_path=here, instance_path=here)
    app.extensions["layerswarm"] = state
    config, metrics = state.config, state.metrics

    @app.before_request
    def who_may_call():
        if request.url_rule is None:   # unknown paths and methods: answered 404/405 below
            return None
        why = access.refusal(table, request.url_rule.rule, request.method, request.authorization,
                             config.admin.admin_token, request.environ.get("layerswarm.peercert"),
                             config.fleet.secure)
        if why is None:
            return None
        if request.path.startswith("/v2"):
            raise errors.RegistryError("DENIED", why, 403)
        return jsonify(error=why), (401 if why == "admin token required" else 403)

    @app.get("/healthz")
    def healthz():
        g.route = "healthz"
        return Response(b"ok\n", 200, {"Content-Type": "text/plain"})

    @app.errorhandler(errors.RegistryError)
    def registry_error(exc: errors.RegistryError):
        resp = jsonify(exc.body())
        resp.status_code = exc.status
        for k, v in exc.headers.items():
            resp.headers[k] = v
        if exc.status == 401 and "WWW-Authenticate" not in resp.headers and g.get("challenge"):
            resp.headers["WWW-Authenticate"] = g.challenge   # e.g. the upstream refused: the client may log in
        return resp

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = {404: "NOT_FOUND", 405: "UNSUPPORTED"}.get(exc.code, "UNKNOWN")
        if exc.code == 405:
            return registry_error(errors.unsupported())
        return registry_error(errors.RegistryError(code, exc.name.lower(), exc.code or 500,
                                                   {"path": request.path[:300]}))

    @app.errorhandler(Exception)
    def internal_error(exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.path[:300])
        return registry_error(errors.RegistryError("UNKNOWN", "internal error", 500))

    @app.after_request
    def finish(resp: Response):
        resp.headers[API_VERSION[0]] = API_VERSION[1]
        metrics.request(getattr(g, "route", "other"), request.method, resp.status_code)
        return resp

    return app
