"""The tracker's Flask app factory: all wiring in one place."""
from __future__ import annotations

import logging
import os

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from layerswarm.tracker import access, protocol
from layerswarm.tracker.config import Config, load
from layerswarm.tracker.context import Tracker, tracker as app_tracker
from layerswarm.tracker.errors import ClientError, StoreUnavailable
from layerswarm.tracker.fleet import ENVIRON_KEY, Fleet
from layerswarm.tracker.metrics import Metrics
from layerswarm.tracker.storage import open_store
from layerswarm.tracker.views.bittorrent import announce_bytes

log = logging.getLogger("tracker")
_BITTORRENT_PATHS = ("/announce", "/scrape")


def create_app(config=None) -> Flask:
    """``config``: a Config, or a mapping of Config field names (tests)."""
    cfg = config if isinstance(config, Config) else load(**(config or {}))
    # Explicit paths: Flask cannot locate a module inside the editable-installed
    # ``layerswarm`` namespace on its own (and the app reads no instance files).
    here = os.path.dirname(os.path.abspath(__file__))
    app = Flask(__name__, root_path=here, instance_path=here)
    app.config["MAX_CONTENT_LENGTH"] = max(cfg.registry.max_metainfo, cfg.registry.max_manifest) + 1
    app.json.sort_keys = False
    fleet = Fleet(cfg.server.fleet_ca, cfg.server.deny_serials) if cfg.server.secure else None
    store = open_store(cfg.state.store, cfg.limits, cfg.state.options)
    app.extensions["layerswarm"] = Tracker(config=cfg, store=store, metrics=Metrics(), fleet=fleet)

    from layerswarm.tracker.views import bittorrent, inspect, leases, metainfo
    for mod in (bittorrent, metainfo, leases, inspect):
        app.register_blueprint(mod.bp)
    _register_errors(app)

    @app.before_request
    def _who_may_call():
        host = None
        if fleet is not None:
            host = request.environ[ENVIRON_KEY] = fleet.caller(request.environ)
        if request.url_rule is not None:   # unknown paths and methods: Flask answers 404/405
            access.check(request.url_rule.rule, request.method, request.authorization,
                         cfg.admin.publish_token, cfg.admin.admin_token, fleet is not None, host)

    app.wsgi_app = AnnounceFastPath(app.wsgi_app, app.extensions["layerswarm"])
    return app


class AnnounceFastPath:
    """Answer ``GET /announce[/<passkey>]`` straight from WSGI, everything else via Flask.

    Announces are nearly all of a tracker's traffic and the work per announce
    is tiny, so Flask's request/context/routing machinery was most of its
    cost (measured: 1.6k/s through Flask vs more than a Flask hello-world
    without it).  Same function as the Flask view, same row of the access table
    (secure fleet mode: a fleet certificate), same failure handling.
    """

    def __init__(self, wsgi_app, t):
        self.wsgi_app = wsgi_app
        self.t = t

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") != "GET" or not (path == "/announce" or path.startswith("/announce/")) \
                or "/" in path[10:]:
            return self.wsgi_app(environ, start_response)
        try:
            body = self._announce(environ)
        except Exception:
            log.exception("internal error on announce")
            body = protocol.encode_failure("internal tracker error", self.t.config.announce.effective_min_interval)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    def _announce(self, environ) -> bytes:
        fleet = self.t.fleet
        host = fleet.caller(environ) if fleet is not None else None
        try:   # the announce row of the access table, as Flask's before_request would apply it
            access.check("/announce", "GET", None, None, None, fleet is not None, host)
        except ClientError as exc:
            return protocol.encode_failure(exc.message)
        # PEP 3333: QUERY_STRING is the raw bytes decoded as latin-1
        qs = environ.get("QUERY_STRING", "").encode("latin-1")
        return announce_bytes(self.t, qs, environ.get("REMOTE_ADDR", ""), host.name if host else "")


def _bittorrent_request() -> bool:
    return request.path.startswith(_BITTORRENT_PATHS)


def _register_errors(app: Flask) -> None:
    @app.errorhandler(ClientError)
    def client_error(exc):
        if _bittorrent_request():   # refused by the access table: clients read only the body
            return Response(protocol.encode_failure(exc.message), mimetype="text/plain")
        return jsonify(error=exc.message, **exc.extra), exc.status

    @app.errorhandler(StoreUnavailable)
    def store_down(exc):
        log.error("%s %s: %s", request.method, request.path, exc)
        return jsonify(error="tracker storage unavailable, retry later"), 503

    @app.errorhandler(HTTPException)
    def http_error(exc):
        if _bittorrent_request():
            return Response(protocol.encode_failure(exc.description or exc.name), mimetype="text/plain")
        return jsonify(error=exc.description or exc.name), exc.code

    @app.errorhandler(Exception)
    def internal_error(exc):
        log.exception("internal error on %s %s", request.method, request.path)
        if _bittorrent_request():
            return Response(protocol.encode_failure("internal tracker error", app_tracker().config.announce
                                                    .effective_min_interval), mimetype="text/plain")
        return jsonify(error="internal error"), 500
