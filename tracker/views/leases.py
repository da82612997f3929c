"""Fetch leases for cold layers: one holder fetches from the origin, the others
stream from it or from an earlier relay (a tree with bounded fan-out)."""
from __future__ import annotations

import time
from urllib.parse import urlsplit

from flask import Blueprint, jsonify, request

from layerswarm.tracker.context import tracker
from layerswarm.tracker.errors import ClientError, Conflict
from layerswarm.tracker.storage.base import LeaseTableFull
from layerswarm.tracker.views.common import host_id, json_body, parse_digest

bp = Blueprint("leases", __name__)


def relay_url(value) -> str:
    """A bridge's base URL other bridges stream from: http(s)://host[:port][/path], nothing else."""
    try:
        parts = urlsplit(value) if isinstance(value, str) and len(value) <= 2048 else None
        port_ok = parts is not None and (parts.port is None or 0 < parts.port)
    except ValueError:   # a port out of range
        parts, port_ok = None, False
    if (parts is None or not port_ok or parts.scheme not in ("http", "https") or not parts.hostname
            or parts.username or parts.password or parts.query or parts.fragment
            or any(c.isspace() or ord(c) < 32 for c in value)):
        raise ClientError("url must be the bridge's http(s) base URL (no credentials, query or fragment)")
    return value


def _ttl(body: dict, cfg) -> float:
    ttl = body.get("ttl", cfg.registry.lease_ttl)
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0:
        raise ClientError("ttl must be a positive number of seconds")
    return float(min(ttl, cfg.registry.lease_ttl_max))


@bp.post("/leases/<digest>")
def acquire(digest):
    t = tracker()
    d = parse_digest(digest)
    body = json_body()
    host = host_id(body.get("host"))
    url = relay_url(body.get("url"))
    ttl = _ttl(body, t.config)
    if t.store.get_metainfo(d) is not None:
        t.metrics.leases.labels("published").inc()
        return jsonify(role="published"), 200
    try:
        answer = t.store.acquire_lease(d, host, url, ttl, t.config.registry.relay_fanout, time.time())
    except LeaseTableFull:
        t.metrics.leases.labels("full").inc()
        raise ClientError("lease table full: fetch from the origin without a lease", status=503) from None
    t.metrics.leases.labels(answer["role"]).inc()
    return jsonify(answer), (201 if answer["role"] == "holder" else 200)


@bp.put("/leases/<digest>")
def renew(digest):
    t = tracker()
    d = parse_digest(digest)
    body = json_body()
    host = host_id(body.get("host"))
    ttl = _ttl(body, t.config)
    if not t.store.renew_lease(d, host, ttl, time.time()):
        raise Conflict("not the lease holder (expired or taken)")
    return jsonify(role="holder", ttl=ttl)


@bp.delete("/leases/<digest>")
def release(digest):
    d = parse_digest(digest)
    host = host_id(request.args.get("host"))
    return jsonify(released=tracker().store.release_lease(d, host, time.time()))
