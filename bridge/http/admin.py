"""Admin endpoints of the host's peer (``/_layerswarm/...``), registered by the bridge app.

``layerswarm seed --bridge URL`` streams each layer to ``POST /_layerswarm/seed``;
the bridge verifies, publishes and seeds it with its own session and store.
"""
from __future__ import annotations

import logging

from flask import Blueprint, jsonify, request

from layerswarm.bridge.format.digest import Digest
from layerswarm.bridge.format.errors import DigestMismatch, InvalidDigest, StoreFull, TrackerUnavailable, UserError

log = logging.getLogger(__name__)
CHUNK = 1 << 20


def make_blueprint(peer) -> Blueprint:
    """The admin views of ``peer`` (who may call them: http/access.py, checked by the app)."""
    bp = Blueprint("layerswarm_peer", __name__, url_prefix="/_layerswarm")

    @bp.post("/seed")
    def seed():
        try:
            size = int(request.args["size"])
            digest = Digest.parse(request.args["digest"]) if "digest" in request.args else None
        except (KeyError, ValueError, InvalidDigest):
            return jsonify(error="size (and an optional sha256 digest) query parameters required"), 400
        if size <= 0:
            return jsonify(error="size must be positive"), 400
        stream = request.stream

        def chunks():
            while True:
                b = stream.read(CHUNK)
                if not b:
                    return
                yield b
        try:
            info = peer.add_blob(chunks(), size, digest)
        except DigestMismatch as exc:
            return jsonify(error=str(exc)), 400
        except StoreFull as exc:
            return jsonify(error=str(exc)), 507
        except TrackerUnavailable as exc:
            return jsonify(error=str(exc)), 502
        except UserError as exc:  # torrent conflict, publish refused
            return jsonify(error=str(exc)), 409
        return jsonify(info.as_dict()), 201

    @bp.get("/status")
    def status():
        return jsonify(peer.status())

    @bp.get("/layers/<digest>")
    def layer(digest):
        try:
            d = Digest.parse(digest)
        except InvalidDigest:
            return jsonify(error="invalid digest"), 400
        for s in peer.seeding():
            if s.digest == d:
                return jsonify(s.as_dict())
        return jsonify(error="not seeded here"), 404

    return bp
