"""Bearer tokens: taken from a parsed ``Authorization`` header, compared in constant time."""
from __future__ import annotations

import hmac


def bearer(authorization) -> str | None:
    """The token of an ``Authorization: Bearer`` header (werkzeug's parsed form), else None."""
    if authorization is None or authorization.type != "bearer" or not authorization.token:
        return None
    return authorization.token


def matches(token: str | None, expected: str) -> bool:
    """``token`` is ``expected``, without leaking where they differ through timing."""
    return token is not None and hmac.compare_digest(token.encode(), expected.encode())
