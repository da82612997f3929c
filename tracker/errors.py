"""Every error the tracker raises on purpose.

``ClientError`` is the client's fault: BitTorrent endpoints answer it as a
bencoded ``failure reason`` (HTTP 200, clients only read the body), JSON
endpoints as ``{"error": ...}`` with ``status``.  Anything else reaching a
view is a bug: logged, answered generically, never with a traceback.
"""
from __future__ import annotations


class TrackerError(Exception):
    """Base for errors we raise deliberately."""


class ClientError(TrackerError):
    status = 400

    def __init__(self, message: str, status: int | None = None, **extra):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.extra = extra


class NotFound(ClientError):
    status = 404


class Unauthorized(ClientError):
    status = 401


class Forbidden(ClientError):
    status = 403


class Conflict(ClientError):
    status = 409


class TooLarge(ClientError):
    status = 413


class StoreUnavailable(TrackerError):
    """The backing store (Redis) cannot be reached."""
