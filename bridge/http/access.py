"""Who may call each bridge endpoint, one table per listener, enforced before every view (open mode).

Callers: a *client* (a registry client of this host: whoever reaches the
client listener, which stays on loopback by default), the *operator* (the
admin token, when one is set: the views that change or list the store) and a
*fleet* host (another bridge streaming a blob we fetch: the relay, served
only on the fleet listener).  In open mode a fleet host is whoever reaches
the fleet port; in secure fleet mode it is a host with a certificate from the
fleet CA (the fleet listener's TLS refuses anyone else, and the table checks
again).
"""
from __future__ import annotations

from layerswarm.bridge.format.pki import identity
from layerswarm.bridge.format.tokens import bearer, matches

CLIENT = "client"
OPERATOR = "operator"
FLEET = "fleet"

_READ = {"GET": CLIENT, "HEAD": CLIENT}
# URL rule -> method -> who may call it.  Registry writes reach the view, which answers
# 405 UNSUPPORTED (a read-only mirror), so clients get the spec's error.
CLIENT_TABLE = {
    "/v2": _READ,
    "/v2/": _READ,
    "/v2/<path:rest>": {**_READ, "POST": CLIENT, "PUT": CLIENT, "PATCH": CLIENT, "DELETE": CLIENT},
    # The token realm: whoever reaches the client port trades credentials the upstream accepts for a
    # token; the registry views then answer only what the upstream lets that client pull (authz/).
    "/_layerswarm/token": {"GET": CLIENT, "HEAD": CLIENT, "POST": CLIENT},
    "/metrics": _READ,
    "/healthz": _READ,
    "/readyz": _READ,
    "/_layerswarm/stats": _READ,
    "/_layerswarm/seed": {"POST": OPERATOR},
    "/_layerswarm/status": {"GET": OPERATOR, "HEAD": OPERATOR},
    "/_layerswarm/layers/<digest>": {"GET": OPERATOR, "HEAD": OPERATOR},
}
# The fleet listener: what other hosts call, and nothing of the client API.
FLEET_TABLE = {
    "/_layerswarm/relay/<digest>": {"GET": FLEET, "HEAD": FLEET},
    "/healthz": {"GET": FLEET, "HEAD": FLEET},
}


def refusal(table: dict, rule: str, method: str, authorization, admin_token: str | None,
            peercert: dict | None = None, secure: bool = False) -> str | None:
    """Why the caller may not call ``method rule`` (None: it may).  Every endpoint must have a row.

    ``peercert``: the caller's verified TLS certificate, if any; ``secure``: secure fleet mode, where
    a fleet host is whoever shows a certificate from the fleet CA (the fleet listener's TLS asks)."""
    if method == "OPTIONS":
        return None   # Flask's automatic answer: the allowed methods, nothing else
    role = table.get(rule, {}).get(method)
    if role is None:
        return f"{method} {rule} is not in the access table"
    if role == FLEET and secure and identity(peercert) is None:
        return "a fleet certificate required"
    if role != OPERATOR or not admin_token:
        return None
    if matches(bearer(authorization), admin_token):
        return None
    return "admin token required"
