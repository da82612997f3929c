"""The relay view: other bridges stream a blob from our store or from our fetch in progress.

``GET /_layerswarm/relay/<digest>?offset=N`` answers the bytes from N on,
with the whole blob's size in ``X-Layerswarm-Size``; 404 when we neither hold
nor fetch the blob (the asking bridge fails over), 416 for an offset past the end.
"""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, request
from werkzeug.wsgi import wrap_file

from layerswarm.bridge.format.digest import Digest

from layerswarm.bridge.format.errors import InvalidDigest
from layerswarm.bridge.sources.relayclient import CHUNK, RELAY_PATH, SIZE_HEADER


def relay_blueprint(store, active_fetch, first_byte_timeout: float, uploads) -> Blueprint:
    """``store``: size_of / open; ``active_fetch``: digest -> the Fetch in progress or None;
    ``uploads``: the host's upload counter, which paces relay bodies under an upload budget (node/budget.py)."""
    bp = Blueprint("relay", __name__)

    @bp.get(RELAY_PATH + "<digest>")
    def relay(digest):
        try:
            d = Digest.parse(digest)
            offset = int(request.args.get("offset", "0"))
        except (InvalidDigest, ValueError):
            return jsonify(error="bad digest or offset"), 400
        size = store.size_of(d)
        if size is not None and 0 <= offset <= size:
            f = store.open(d)
            f.seek(offset)
            if uploads.budget:   # paced slice by slice: no sendfile under a budget
                body = uploads.read_paced(f, size - offset)
            else:
                uploads.sent(size - offset)
                body = wrap_file(request.environ, f, CHUNK)
            return Response(body, 200, _headers(size, offset), direct_passthrough=True)
        fetch = active_fetch(d)
        if fetch is None:
            return jsonify(error="not fetching this blob"), 404
        try:
            size = fetch.wait_size(first_byte_timeout)  # our own source may still be connecting
        except Exception as exc:  # noqa: BLE001 - the asking bridge fails over
            return jsonify(error=f"fetch failed: {exc}"), 404
        if not 0 <= offset <= size:
            return jsonify(error="offset out of range"), 416
        return Response(uploads.paced(fetch.chunks(offset, size - 1, hold_tail=False)), 200,
                        _headers(size, offset), direct_passthrough=True)

    return bp


def _headers(size: int, offset: int) -> dict:
    return {SIZE_HEADER: str(size), "Content-Length": str(size - offset), "Content-Type": "application/octet-stream"}
