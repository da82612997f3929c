"""What a registry client presents: its ``Authorization`` header parsed strictly, and the bridge's own tokens.

A client is anonymous, shows Basic credentials (which the bridge checks
against the upstream, never stores beyond the decision TTL, never logs), or
shows a token this bridge issued from its realm (``/_layerswarm/token``).
Tokens are JWTs signed with a key made at process start: they name a keyed
hash of the credential (never the credential), the (upstream, repository)
pairs granted and an expiry; another process's tokens do not verify.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import jwt

from layerswarm.bridge.format import errors

MAX_HEADER = 8192          # longer Authorization values are refused, whatever their scheme
MAX_FIELD = 1024           # a username or password longer than this is not one
ISSUER = "layerswarm-bridge"


@dataclass(frozen=True)
class Presented:
    """The parsed header: ``scheme`` is "anonymous", "basic" or "bearer"."""

    scheme: str
    username: str | None = None
    password: str | None = None
    token: str | None = None


ANONYMOUS = Presented("anonymous")


def parse_authorization(header: str | None, challenge: str) -> Presented:
    """The client's credentials; malformed or unknown ones are a 401 with ``challenge``, huge ones a 400."""
    if header is None or not header.strip():
        return ANONYMOUS
    if len(header) > MAX_HEADER:
        raise errors.RegistryError("UNAUTHORIZED", "Authorization header too large", 400)
    scheme, _, value = header.strip().partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme == "bearer" and value:
        return Presented("bearer", token=value)
    if scheme == "basic" and value:
        try:
            text = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise errors.unauthorized(challenge, "malformed Basic credentials") from None
        user, sep, password = text.partition(":")
        if not sep or not user or len(user) > MAX_FIELD or len(password) > MAX_FIELD \
                or any(ord(c) < 32 for c in user):
            raise errors.unauthorized(challenge, "malformed Basic credentials")
        return Presented("basic", username=user, password=password)
    raise errors.unauthorized(challenge, "unsupported authorization scheme")


class ClientTokens:
    """Issues and verifies this process's tokens; also the keyed hash that names a credential."""

    def __init__(self, key: bytes | None = None):
        self._key = key or secrets.token_bytes(32)

    def credential_key(self, username: str, password: str) -> str:
        """Names a credential in tokens and caches without holding it (keyed: no offline guessing)."""
        msg = b"basic\0" + username.encode() + b"\0" + password.encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()[:40]

    def issue(self, subject: str, grants: list, expires_at: float) -> str:
        """A token for ``grants`` [(upstream name, repository)]; ``expires_at`` in wall-clock seconds."""
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": subject, "iat": now, "nbf": now - 1, "exp": int(expires_at),
                  "jti": secrets.token_hex(8), "acc": [list(g) for g in grants]}
        return jwt.encode(claims, self._key, algorithm="HS256")

    def verify(self, token: str) -> tuple | None:
        """(subject, frozenset of grants, expiry) of a valid unexpired token of ours, else None."""
        try:
            claims = jwt.decode(token, self._key, algorithms=["HS256"], issuer=ISSUER,
                                options={"require": ["exp", "sub", "iss"]})
            grants = frozenset((str(u), str(r)) for u, r in claims.get("acc", []))
        except (jwt.InvalidTokenError, TypeError, ValueError):
            return None
        if not isinstance(claims["sub"], str):
            return None
        return claims["sub"], grants, float(claims["exp"])
