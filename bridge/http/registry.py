"""Registry HTTP API v2, read-only: ``/v2/``, manifests and blobs (GET/HEAD).

The path is parsed from the raw request URI with the spec grammar
(format/names.py) before anything else happens; the upstream is picked by
:class:`~layerswarm.bridge.sources.router.Router`; the client is then
authorized for that repository by the upstream (authz/gate.py: chained
authorization); manifests come from the manifest service and blobs from the
app's blob source (sources/), each only once the upstream holds it in that
repository.  HEAD is handled explicitly everywhere (Flask would otherwise run
the GET view).

``/v2/`` answers 401 with a Bearer challenge to anyone without a token or
good credentials: dockerd learns the auth scheme only there (http/realm.py
is the realm).
"""
from __future__ import annotations

import logging

import re

from flask import Blueprint, Response, current_app, g, jsonify, request
from werkzeug.wsgi import wrap_file

from layerswarm.bridge.authz.credentials import parse_authorization
from layerswarm.bridge.format import errors
from layerswarm.bridge.format.digest import Digest
from layerswarm.bridge.format.directsend import SLOT_KEY
from layerswarm.bridge.format.errors import InvalidDigest
from layerswarm.bridge.format.mediatypes import layer_digests
from layerswarm.bridge.sources.blobs import BlobRequest, BlobResponse
from layerswarm.bridge.format.names import ApiPath, ByteRange, parse_api_path, raw_path

log = logging.getLogger("layerswarm.registry")

bp = Blueprint("registry", __name__)

API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")
READ_METHODS = ("GET", "HEAD")
WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def _state():
    return current_app.extensions["layerswarm"]


def _accept_values() -> list:
    """Every Accept value: dockerd sends several headers, containerd one comma-joined."""
    seen = []
    for header in request.headers.getlist("Accept"):
        for part in header.split(","):
            v = part.strip()
            if v and v not in seen:
                seen.append(v)
    return seen


SERVICE = "layerswarm"
REALM_PATH = "/_layerswarm/token"
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


def challenge(name: str | None = None, ns: str | None = None) -> str:
    """Our Bearer challenge: the realm is this bridge, as the client reached it (``?ns=`` kept, so
    the realm resolves the scope's name the way the API resolves the path)."""
    host = request.host if _HOST.fullmatch(request.host or "") else request.environ.get("SERVER_NAME", "localhost")
    realm = f"{request.scheme}://{host}{REALM_PATH}" + (f"?ns={ns}" if ns else "")
    out = f'Bearer realm="{realm}",service="{SERVICE}"'
    if name:
        out += f',scope="repository:{name}:pull"'
    g.challenge = out       # any 401 of this request carries it (http/app.py)
    return out


def _client(st, chal: str):
    return st.gate.client(parse_authorization(request.headers.get("Authorization"), chal), chal)


@bp.route("/v2", methods=READ_METHODS, strict_slashes=False)
@bp.route("/v2/", methods=READ_METHODS)
def base():
    g.route = "base"
    st = _state()
    chal = challenge()
    if not st.gate.login(_client(st, chal), chal):
        raise errors.unauthorized(chal)
    if request.method == "HEAD":
        return Response(None, 200, {"Content-Type": "application/json", "Content-Length": "3"})
    return jsonify({})


@bp.route("/v2/<path:rest>", methods=READ_METHODS + WRITE_METHODS)
def api(rest):
    g.route = "other"
    if request.method in WRITE_METHODS:
        g.route = "write"
        raise errors.unsupported()
    parsed = parse_api_path(raw_path(request.environ))
    if parsed is None:
        raise errors.RegistryError("NOT_FOUND", "not found on this read-only mirror", 404,
                                   {"path": request.path[:300]})
    g.route = "manifest" if parsed.kind == "manifests" else "blob"
    st = _state()
    ns = request.args.get("ns")
    up, repo = st.router.resolve(parsed.name, ns)
    chal = challenge(parsed.name, ns and ns.lower())
    grant = st.gate.authorize(_client(st, chal), up, repo, chal)
    head = request.method == "HEAD"
    if parsed.kind == "manifests":
        return _manifest(st, grant, parsed, head)
    return _blob(st, grant, parsed, head)


def _manifest(st, grant, parsed: ApiPath, head: bool) -> Response:
    m = st.manifests.get(grant, parsed.reference, _accept_values(), head)
    headers = {"Content-Type": m.media_type, "Docker-Content-Digest": str(m.digest),
               "Content-Length": str(m.size), "ETag": f'"{m.digest}"'}
    if not head:
        st.metrics.served("manifest", m.size)
        prefetch = getattr(st.blobs, "prefetch", None)
        if prefetch is not None and st.config.swarm.prefetch_layers > 0:
            # The layers of a manifest U served under R: held there, asked with this request's grant.
            prefetch([BlobRequest(grant.upstream, grant.repo, d, auth=grant.fetch_auth, shareable=grant.shareable)
                      for d in _valid(layer_digests(m.body))])
    return Response(None if head else m.body, 200, headers)


def _valid(texts: list) -> list:
    out = []
    for t in texts:
        try:
            out.append(Digest.parse(t))
        except InvalidDigest:
            continue     # a digest we cannot fetch by: the client will ask, and get its error
    return out


def _blob(st, grant, parsed: ApiPath, head: bool) -> Response:
    digest = parsed.reference.digest
    rng = ByteRange.parse(request.headers.get("Range"))
    st.gate.require(grant, "blobs", digest)
    res: BlobResponse = st.blobs.open(BlobRequest(grant.upstream, grant.repo, digest, rng, head,
                                                  auth=grant.fetch_auth, shareable=grant.shareable,
                                                  socket=request.environ.get(SLOT_KEY)))
    headers = {"Content-Type": res.content_type, "Docker-Content-Digest": str(digest),
               "Content-Length": str(max(res.length, 0)), "Accept-Ranges": "bytes",
               "ETag": f'"{digest}"', "Cache-Control": "max-age=31536000"}
    status = 200
    if rng is not None:
        status = 206
        headers["Content-Range"] = f"bytes {res.start}-{res.end}/{res.size}"
    if head:
        res.close()
        return Response(None, status, headers)
    metrics = st.metrics
    if res.file is not None:
        f = res.file
        f.seek(res.start)
        if res.end == res.size - 1:
            # Whole tail of the file: the listener sendfile()s from the current offset
            # for Content-Length bytes.
            body = wrap_file(request.environ, f, 1 << 20)
            metrics.served("blob", res.length)
            metrics.blob_bytes(res.source, res.length)
        else:
            body = _counted(_read_span(f, res.length), res, metrics)
    else:
        body = _counted(res.body, res, metrics)
    return Response(body, status, headers, direct_passthrough=True)


def _read_span(f, length: int):
    try:
        while length > 0:
            chunk = f.read(min(length, 1 << 20))
            if not chunk:
                raise OSError("blob file shorter than expected")
            length -= len(chunk)
            yield chunk
    finally:
        f.close()


def _counted(it, res: BlobResponse, metrics):
    sent = 0
    try:
        for chunk in it:
            metrics.served("blob", len(chunk))
            metrics.blob_bytes(res.source, len(chunk))
            sent += len(chunk)
            yield chunk
    except Exception as exc:
        # Headers are out: the only honest answer is to cut the connection.
        log.warning("blob stream cut after %d of %d bytes (%s): %s", sent, res.length, res.source, exc)
        raise
    finally:
        res.close()
        close = getattr(it, "close", None)
        if close:
            close()
