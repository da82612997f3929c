"""The token realm our ``/v2/`` challenge names: clients trade their registry credentials for our tokens here.

The Docker token protocol, as dockerd, containerd, skopeo and podman speak it:
``GET`` with optional Basic credentials and ``scope=repository:NAME:pull``
(repeatable, or space-separated; ``account``, ``service``, ``client_id``,
``offline_token`` are accepted and ignored), and containerd's ``POST`` with a
form ``grant_type=password&username=..&password=..&scope=..``.  Each scope's
name is resolved the way the API resolves a path (aliases, ``?ns=`` carried
in the realm URL, Docker Hub's ``library/``), and the upstream decides it
with the client's credentials (authz/gate.py).  A scope the client may not
pull is left out of the token, as registries' token servers do; credentials
the upstream refuses are a 401.  No refresh tokens: clients keep the
credentials they logged in with and come back when the token expires.
"""
from __future__ import annotations

import datetime
import time

from flask import Blueprint, current_app, g, jsonify, request

from layerswarm.bridge.authz.credentials import ANONYMOUS, MAX_FIELD, Presented, parse_authorization
from layerswarm.bridge.authz.gate import ALLOW
from layerswarm.bridge.format import errors
from layerswarm.bridge.format.names import valid_name
from layerswarm.bridge.http.registry import REALM_PATH, challenge

bp = Blueprint("realm", __name__)

MAX_SCOPES = 16


def _scopes(values: list) -> list:
    """Repository names asked for pull, from ``scope`` values; other scopes (push, catalog) are ignored."""
    names = []
    for value in values:
        for scope in value.split():
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind == "repository" and "pull" in actions.split(",") and valid_name(name) and name not in names:
                names.append(name)
    if len(names) > MAX_SCOPES:
        raise errors.RegistryError("UNSUPPORTED", f"at most {MAX_SCOPES} scopes per token", 400)
    return names


def _form_credentials() -> Presented:
    grant = request.form.get("grant_type", "")
    if grant != "password":
        # containerd falls back to GET on 404/405 only; a refresh token was never given out.
        raise errors.RegistryError("UNSUPPORTED", f"unsupported grant_type {grant[:40]!r}", 400)
    user, password = request.form.get("username", ""), request.form.get("password", "")
    if not user or len(user) > MAX_FIELD or len(password) > MAX_FIELD:
        raise errors.unauthorized(challenge(), "malformed credentials")
    return Presented("basic", username=user, password=password)


@bp.route(REALM_PATH, methods=("GET", "POST"))
def token():
    g.route = "token"
    st = current_app.extensions["layerswarm"]
    gate = st.gate
    chal = challenge()
    if request.method == "POST":
        presented, values = _form_credentials(), request.form.getlist("scope")
    else:
        presented = parse_authorization(request.headers.get("Authorization"), chal)
        values = request.args.getlist("scope")
    if presented.scheme == "bearer":
        presented = ANONYMOUS      # a token is not a credential to trade for another one
    client = gate.client(presented, chal)
    ns = request.args.get("ns")
    scopes = []
    for name in _scopes(values):
        try:
            scopes.append(st.router.resolve(name, ns))
        except errors.RegistryError:
            continue               # a registry this mirror does not serve: nothing to grant
    granted, expires = gate.grants(client, scopes, chal)
    if not client.anonymous and not granted:
        # Nothing granted: tell wrong credentials (401, "docker login" fails) from a user who
        # simply may not pull these repositories (a token without them).
        up = scopes[0][0] if scopes else gate.default
        if gate.decide(client, up, "", chal)[0] != ALLOW:
            raise errors.unauthorized(chal, "the upstream registry refused these credentials")
    tok = gate.tokens.issue(client.key, granted, expires)
    now = time.time()
    return jsonify(token=tok, access_token=tok, expires_in=max(1, int(expires - now)),
                   issued_at=datetime.datetime.fromtimestamp(now, datetime.timezone.utc).isoformat())
