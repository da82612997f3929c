"""BitTorrent endpoints: announce (BEP 3/23/7), scrape (BEP 48), health.

Client mistakes are answered as a bencoded ``failure reason`` with HTTP 200
(clients only read the body), never as a 500.
"""
from __future__ import annotations

import logging
import time

from flask import Blueprint, Response, request

from layerswarm.bridge.format.layertorrent import UNPUBLISHED_WARNING
from layerswarm.tracker import protocol
from layerswarm.tracker.context import fleet_host, tracker
from layerswarm.tracker.errors import ClientError, StoreUnavailable

log = logging.getLogger(__name__)
bp = Blueprint("bittorrent", __name__)
BENCODE = "text/plain"


def announce_bytes(t, query_string: bytes, remote_addr: str, owner: str = "", now: float | None = None) -> bytes:
    """The whole announce: parse, store, encode.  Shared by the Flask view and the fast path.

    ``owner``: the announcing fleet host (secure mode), part of the key of its peers."""
    cfg = t.config
    try:
        req = protocol.parse_announce(query_string, remote_addr, cfg, owner)
        peers, counts, published = t.store.announce(req, cfg.announce.peer_ttl(req.seeder), now or time.time())
    except ClientError as exc:
        t.metrics.failures.labels("announce").inc()
        return protocol.encode_failure(exc.message)
    except StoreUnavailable as exc:
        log.error("announce: %s", exc)
        t.metrics.failures.labels("announce").inc()
        return protocol.encode_failure("tracker storage unavailable, retry later",
                                       cfg.announce.effective_min_interval)
    t.metrics.announce[req.event].inc()
    warning = None
    if req.seeder and not published and req.event != "stopped":
        warning = UNPUBLISHED_WARNING   # only a host holding the layer can give the torrent back
        t.metrics.unpublished.inc()
    return protocol.encode_announce(req, peers, counts, cfg.announce.interval_for(req.seeder),
                                    cfg.announce.effective_min_interval, warning)


@bp.get("/announce")
@bp.get("/announce/<passkey>")  # passkeys stay under /announce: libtorrent's loopback SSRF rule
def announce(passkey=None):
    host = fleet_host()
    return Response(announce_bytes(tracker(), request.query_string, request.remote_addr, host.name if host else ""),
                    mimetype=BENCODE)


@bp.get("/scrape")
@bp.get("/scrape/<passkey>")
def scrape(passkey=None):
    t = tracker()
    try:
        hashes = protocol.parse_scrape(request.query_string, t.config)
        body = protocol.encode_scrape(t.store.scrape(hashes, time.time()))
        t.metrics.scrapes.inc()
    except ClientError as exc:
        t.metrics.failures.labels("scrape").inc()
        body = protocol.encode_failure(exc.message)
    except StoreUnavailable as exc:
        log.error("scrape: %s", exc)
        body = protocol.encode_failure("tracker storage unavailable, retry later")
    return Response(body, mimetype=BENCODE)


@bp.get("/healthz")
def healthz():
    try:
        tracker().store.ping()
    except StoreUnavailable:
        return Response("store unavailable\n", status=503, mimetype="text/plain")
    return Response("ok\n", mimetype="text/plain")
