"""Fetch leases for cold layers: one holder fetches from the origin, the others
stream from it or from an earlier relay (a tree with bounded fan-out)."""
from __future__ import annotations

import concurrent.futures
import socket
import time
from urllib.parse import urlsplit

from flask import Blueprint, jsonify, request

from layerswarm.tracker.context import fleet_host, tracker
from layerswarm.tracker.errors import ClientError, Conflict
from layerswarm.tracker.fleet import address
from layerswarm.tracker.storage.base import LeaseTableFull
from layerswarm.tracker.views.common import caller_id, json_body, parse_digest, requested_kind

bp = Blueprint("leases", __name__)
RESOLVE_TIMEOUT = 2.0   # seconds for a relay URL's host name to resolve; slower names are refused


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


def _resolve(name: str) -> set:
    """The addresses ``name`` resolves to here; empty if it does not resolve within RESOLVE_TIMEOUT."""
    future = tracker().resolver.submit(socket.getaddrinfo, name, None, type=socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=RESOLVE_TIMEOUT)
    except (concurrent.futures.TimeoutError, OSError, UnicodeError):   # UnicodeError: not a valid name
        future.cancel()
        return set()
    return {address(info[4][0]) for info in infos}


def check_url_is_callers(url: str, remote_addr) -> None:
    """Refuse a relay URL whose host is not the caller: other bridges will connect to it, so a
    caller naming another address would steer the fleet's requests wherever it likes."""
    host = urlsplit(url).hostname
    try:
        caller = address(remote_addr)
    except ValueError:
        raise ClientError("url: the caller's address is unknown, so no relay URL can be checked") from None
    try:
        ok = address(host) == caller
    except ValueError:   # a name
        ok = caller in _resolve(host)
    if not ok:
        raise ClientError(f"url host {host} is not the caller's address {caller} "
                          "(nor a name resolving to it here): a bridge advertises itself only")


def check_url_is_fleet_hosts(url: str, host) -> None:
    """Secure mode: the relay URL is HTTPS (hosts talk TLS to each other) on one of the names or
    addresses the caller's certificate holds; the certificate, not the connection's address,
    says which host this is, and a bridge streaming from the URL checks that certificate."""
    parts = urlsplit(url)
    if parts.scheme != "https":
        raise ClientError("url must be https:// in a secure fleet (relays answer over TLS)")
    if not host.owns(parts.hostname):
        raise ClientError(f"url host {parts.hostname} is not in the caller's certificate (subjectAltName "
                          "DNS names and addresses): a bridge advertises itself only")


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
    host = caller_id(body.get("host"))
    url = relay_url(body.get("url"))
    ttl = _ttl(body, t.config)
    caller = fleet_host()
    if caller is not None:
        check_url_is_fleet_hosts(url, caller)
    else:
        check_url_is_callers(url, request.remote_addr)
    kind = requested_kind()
    if kind is not None and t.store.get_metainfo(d, kind) is not None:
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
    host = caller_id(body.get("host"))
    ttl = _ttl(body, t.config)
    if not t.store.renew_lease(d, host, ttl, time.time()):
        raise Conflict("not the lease holder (expired or taken)")
    return jsonify(role="holder", ttl=ttl)


@bp.delete("/leases/<digest>")
def release(digest):
    d = parse_digest(digest)
    host = caller_id(request.args.get("host"))
    return jsonify(released=tracker().store.release_lease(d, host, time.time()))
