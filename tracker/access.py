"""Who may call each tracker endpoint, in one table of two columns (open, secure fleet mode) enforced before every view.

Open mode: *anyone* (BitTorrent is open: announce, scrape, reading torrents
and manifests), the *publisher* (holder of the publish token: writes,
reports, leases) and the *operator* (holder of the admin token: the
inspection views).  Without a publish token the tracker accepts anonymous
writes, which it allows only on a loopback address or with
``--allow-anonymous-writes``; without an admin token the inspection views
are open.

Secure fleet mode (``--fleet-ca``): a *fleet* host is a caller whose TLS
connection showed a certificate from the fleet CA that is not on the deny
list (fleet.py).  Everything but ``/healthz`` needs one; the certificate
replaces the publish token (a token alone is refused), and the operator
views take a fleet certificate or the admin token (no admin token set: a
certificate only).

``/announce`` is also answered before Flask (app.AnnounceFastPath), which
applies the announce row of this table itself.
"""
from __future__ import annotations

from layerswarm.bridge.format.tokens import bearer, matches
from layerswarm.tracker.errors import Forbidden, Unauthorized

ANYONE = "anyone"
PUBLISHER = "publisher"
OPERATOR = "operator"
FLEET = "fleet host"
FLEET_OR_OPERATOR = "fleet host or operator"

# URL rule -> method -> who may call it: (open mode, secure fleet mode).
TABLE = {
    "/announce": {"GET": (ANYONE, FLEET)},
    "/announce/<passkey>": {"GET": (ANYONE, FLEET)},
    "/scrape": {"GET": (ANYONE, FLEET)},
    "/scrape/<passkey>": {"GET": (ANYONE, FLEET)},
    "/healthz": {"GET": (ANYONE, ANYONE)},
    "/metainfo/<digest>": {"GET": (ANYONE, FLEET), "HEAD": (ANYONE, FLEET), "PUT": (PUBLISHER, FLEET)},
    "/metainfo/<digest>/reports": {"POST": (PUBLISHER, FLEET)},
    "/manifests/<digest>": {"GET": (ANYONE, FLEET), "HEAD": (ANYONE, FLEET), "PUT": (PUBLISHER, FLEET)},
    "/leases/<digest>": {"POST": (PUBLISHER, FLEET), "PUT": (PUBLISHER, FLEET), "DELETE": (PUBLISHER, FLEET)},
    "/": {"GET": (OPERATOR, FLEET_OR_OPERATOR)},
    "/swarms": {"GET": (OPERATOR, FLEET_OR_OPERATOR)},
    "/metrics": {"GET": (OPERATOR, FLEET_OR_OPERATOR)},
}
NO_CERTIFICATE = "a fleet certificate is required (secure fleet mode)"


def role_for(rule: str, method: str, secure: bool) -> str:
    """Who may call ``method rule`` in this mode; Forbidden for a rule or method without a row."""
    row = TABLE.get(rule, {})
    cell = row.get(method) or (row.get("GET") if method == "HEAD" else None)
    if cell is None:
        raise Forbidden(f"{method} {rule} is not in the access table")
    return cell[1] if secure else cell[0]


def check(rule: str, method: str, authorization, publish_token: str | None, admin_token: str | None,
          secure: bool = False, fleet_host=None) -> str:
    """Raise Unauthorized/Forbidden unless the caller may call ``method rule``; returns the role needed.

    ``fleet_host``: the caller's verified, not denied, fleet certificate (secure mode), else None.
    A rule missing from the table is refused: every endpoint must have a row.
    """
    role = role_for(rule, method, secure)
    if role == ANYONE or (role in (FLEET, FLEET_OR_OPERATOR) and fleet_host is not None):
        return role
    if role == FLEET or (role == FLEET_OR_OPERATOR and not admin_token):
        raise Unauthorized(NO_CERTIFICATE)
    holder = PUBLISHER if role == PUBLISHER else OPERATOR
    expected = publish_token if holder == PUBLISHER else admin_token
    if not expected:
        return role   # open mode without that token
    token = bearer(authorization)
    if token is None:
        raise Unauthorized(f"{NO_CERTIFICATE} or the {holder} token" if secure else
                           f"{holder} token required (Authorization: Bearer ...)")
    if not matches(token, expected):
        raise Forbidden(f"wrong {holder} token")
    return role
