"""Who may call each tracker endpoint, in one table enforced before every view (open mode).

Callers: *anyone* (BitTorrent is open: announce, scrape, reading torrents
and manifests), the *publisher* (holder of the publish token: writes,
reports, leases) and the *operator* (holder of the admin token: the
inspection views).  Without a publish token the tracker accepts anonymous
writes, which it allows only on a loopback address or with
``--allow-anonymous-writes``; without an admin token the inspection views
are open.  ``/announce`` is also answered before Flask (app.AnnounceFastPath)
and is open to anyone, as this table says.
"""
from __future__ import annotations

from layerswarm.bridge.format.tokens import bearer, matches
from layerswarm.tracker.errors import Forbidden, Unauthorized

ANYONE = "anyone"
PUBLISHER = "publisher"
OPERATOR = "operator"

# URL rule -> method -> who may call it.
TABLE = {
    "/announce": {"GET": ANYONE},
    "/announce/<passkey>": {"GET": ANYONE},
    "/scrape": {"GET": ANYONE},
    "/scrape/<passkey>": {"GET": ANYONE},
    "/healthz": {"GET": ANYONE},
    "/metainfo/<digest>": {"GET": ANYONE, "HEAD": ANYONE, "PUT": PUBLISHER},
    "/metainfo/<digest>/reports": {"POST": PUBLISHER},
    "/manifests/<digest>": {"GET": ANYONE, "HEAD": ANYONE, "PUT": PUBLISHER},
    "/leases/<digest>": {"POST": PUBLISHER, "PUT": PUBLISHER, "DELETE": PUBLISHER},
    "/": {"GET": OPERATOR},
    "/swarms": {"GET": OPERATOR},
    "/metrics": {"GET": OPERATOR},
}


def check(rule: str, method: str, authorization, publish_token: str | None, admin_token: str | None) -> str:
    """Raise Unauthorized/Forbidden unless the caller may call ``method rule``; returns the role needed.

    A rule missing from the table is refused: every endpoint must have a row.
    """
    role = TABLE.get(rule, {}).get("GET" if method == "HEAD" and "HEAD" not in TABLE.get(rule, {}) else method)
    if role is None:
        raise Forbidden(f"{method} {rule} is not in the access table")
    token = bearer(authorization)
    expected = {PUBLISHER: publish_token, OPERATOR: admin_token}.get(role)
    if role == ANYONE or not expected:
        return role   # open endpoint, or a tracker without that token (open mode)
    if token is None:
        raise Unauthorized(f"{role} token required (Authorization: Bearer ...)")
    if not matches(token, expected):
        raise Forbidden(f"wrong {role} token")
    return role
