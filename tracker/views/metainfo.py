"""Layer torrents and manifests by digest, and bad-torrent reports.

A torrent cannot be checked against a sha256 without the blob, so it is
trusted on publish (token-gated, first valid write wins) and withdrawn when
bridges that verified the real blob report that its pieces do not match.
A publish with the token comes from a bridge that built the torrent from
verified bytes, so it lifts that torrent's quarantine (one flaky host's
report does not withdraw a good torrent for good).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time

from flask import Blueprint, Response, jsonify, request

from layerswarm.bridge.format.digest import InfoHash

from layerswarm.bridge.format.errors import InvalidInfoHash, InvalidMetainfo
from layerswarm.bridge.format.layertorrent import parse_metainfo
from layerswarm.bridge.format.mediatypes import MANIFEST_TYPES
from layerswarm.tracker.context import tracker
from layerswarm.tracker.errors import ClientError, Conflict, NotFound
from layerswarm.tracker.storage.base import CONFLICT, CREATED, EXISTS, UNQUARANTINED, MetainfoRecord
from layerswarm.tracker.views.common import caller_id, json_body, log_text, parse_digest, read_body, requested_kind

log = logging.getLogger(__name__)
bp = Blueprint("metainfo", __name__)
TORRENT = "application/x-bittorrent"


@bp.put("/metainfo/<digest>")
def put_metainfo(digest):
    t = tracker()
    d = parse_digest(digest)
    data = read_body(t.config.registry.max_metainfo)
    try:
        lt = parse_metainfo(data, expect=d)
    except InvalidMetainfo as exc:
        t.metrics.metainfo_puts.labels("invalid").inc()
        raise ClientError(f"invalid layer torrent: {exc}") from None
    refused = _kind_refused(lt, t)
    if refused:
        t.metrics.metainfo_puts.labels("invalid").inc()
        raise ClientError(f"invalid layer torrent: {refused}")
    rec = MetainfoRecord(digest=d, info_hash=lt.info_hash, size=lt.size, format=lt.format, kind=lt.kind,
                         data=lt.metainfo, published_at=time.time())
    status, current = t.store.put_metainfo(rec, lift_quarantine=t.publisher_authenticated())
    t.metrics.metainfo_puts.labels(status).inc()
    if status == UNQUARANTINED:
        log.warning("quarantine lifted by a publish with the token: %s info_hash=%s", d, lt.info_hash)
    if status in (CREATED, UNQUARANTINED):
        log.info("published %s info_hash=%s size=%d", d, lt.info_hash, lt.size)
        return jsonify(digest=str(d), info_hash=lt.info_hash.hex, size=lt.size), 201
    if status == EXISTS:
        return jsonify(digest=str(d), info_hash=lt.info_hash.hex, size=lt.size), 200
    if status == CONFLICT:
        raise Conflict("a different torrent is already published for this digest", info_hash=current.hex)
    raise Conflict("this torrent was quarantined for this digest after bad-piece reports")


def _kind_refused(lt, t) -> str | None:
    """Why a torrent is not of a kind this tracker takes (Tracker.accepted_kinds), or None.  Its
    peers accept only certificates from its ``ssl-cert``: in a secure fleet that must be the fleet CA
    exactly as every bridge writes it (layertorrent.root_cert), and open mode knows no CA, so an
    ssl-cert would make the swarm unusable."""
    if lt.kind in t.accepted_kinds():
        return None
    if t.fleet is None:
        return "ssl-cert is only accepted from a secure fleet"
    if lt.ssl_cert is None:
        return ("a secure fleet's torrents carry the fleet CA (ssl-cert); open-mode torrents only while "
                "the tracker runs with --accept-open-torrents")
    return "ssl-cert is not this fleet's CA"


@bp.route("/metainfo/<digest>", methods=["GET", "HEAD"])
def get_metainfo(digest):
    """The torrent of the caller's kind (``?format=``, see requested_kind)."""
    d = parse_digest(digest)
    kind = requested_kind()
    rec = tracker().store.get_metainfo(d, kind) if kind is not None else None
    if rec is None:
        raise NotFound("no torrent of this format published for this digest")
    return Response(rec.data, mimetype=TORRENT,
                    headers={"X-Layerswarm-Info-Hash": rec.info_hash.hex, "ETag": f'"{rec.info_hash.hex}"',
                             "Cache-Control": "no-cache"})  # can be quarantined: revalidate


@bp.post("/metainfo/<digest>/reports")
def report(digest):
    t = tracker()
    d = parse_digest(digest)
    trusted = t.publisher_authenticated()
    body = json_body()
    try:
        ih = InfoHash.from_hex(body.get("info_hash"))
    except InvalidInfoHash as exc:
        raise ClientError(str(exc)) from None
    host = caller_id(body.get("host"))
    reason = log_text(body.get("reason", ""), 500)
    t.metrics.reports.inc()
    log.warning("report on %s info_hash=%s from host=%s trusted=%s: %s", d, ih, host, trusted, reason)
    records = (t.store.get_metainfo(d, k) for k in t.accepted_kinds())
    published = any(r is not None and r.info_hash == ih for r in records)
    quarantined = t.store.report(d, ih, host, trusted, t.config.registry.quarantine_reports)
    if quarantined and published:
        t.metrics.quarantines.inc()
        log.warning("QUARANTINED torrent %s for %s (trusted=%s, last report from %s): %s",
                    ih, d, trusted, host, reason)
    return jsonify(quarantined=quarantined)


@bp.put("/manifests/<digest>")
def put_manifest(digest):
    t = tracker()
    d = parse_digest(digest)
    data = read_body(t.config.registry.max_manifest)
    ctype = request.headers.get("Content-Type", "")
    if ctype not in MANIFEST_TYPES:
        raise ClientError(f"Content-Type must be one of {', '.join(MANIFEST_TYPES)}")
    if hashlib.sha256(data).hexdigest() != d.hex:
        raise ClientError("body does not hash to the digest")
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ClientError("a manifest is a JSON object")
    if body.get("mediaType", ctype) != ctype:
        raise ClientError("Content-Type does not match the manifest's mediaType")
    created = t.store.put_manifest(d, ctype, data)
    return jsonify(digest=str(d), size=len(data)), (201 if created else 200)


@bp.route("/manifests/<digest>", methods=["GET", "HEAD"])
def get_manifest(digest):
    d = parse_digest(digest)
    found = tracker().store.get_manifest(d)
    if found is None:
        raise NotFound("manifest unknown")
    ctype, data = found
    return Response(data, content_type=ctype,
                    headers={"Docker-Content-Digest": str(d), "ETag": f'"{d}"',
                             "Cache-Control": "public, max-age=31536000, immutable"})
