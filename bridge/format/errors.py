"""Every error type the bridge, its commands and the shared format raise on purpose lives here.

``UserError`` is what the CLI turns into a one-line message and a non-zero
exit; ``RegistryError`` is what the registry API turns into a spec JSON error
body.  Anything else reaching the top is a bug: it is logged and answered
generically, never shown as a traceback.  (The tracker's HTTP errors, which
become bencoded or JSON answers, are in tracker/errors.py.)
"""
from __future__ import annotations


class LayerswarmError(Exception):
    """Base for errors we raise deliberately."""


class UserError(LayerswarmError):
    """Bad input or environment a CLI user can fix; printed as one line."""

    exit_code = 2


class RegistryError(LayerswarmError):
    """An error answered on the registry API as ``{"errors": [...]}``."""

    def __init__(self, code: str, message: str, status: int, detail=None, headers=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})

    def body(self) -> dict:
        err = {"code": self.code, "message": self.message}
        err["detail"] = self.detail if self.detail is not None else {}
        return {"errors": [err]}


def name_invalid(name: str) -> RegistryError:
    return RegistryError("NAME_INVALID", "invalid repository name", 400, {"name": name})


def digest_invalid(text: str) -> RegistryError:
    return RegistryError("DIGEST_INVALID", "provided digest did not match uploaded content", 400, {"digest": text})


def blob_unknown(digest: str) -> RegistryError:
    return RegistryError("BLOB_UNKNOWN", "blob unknown to registry", 404, {"digest": digest})


def manifest_unknown(reference: str) -> RegistryError:
    return RegistryError("MANIFEST_UNKNOWN", "manifest unknown", 404, {"reference": reference})


def unauthorized(challenge: str | None = None, message: str = "authentication required") -> RegistryError:
    headers = {"WWW-Authenticate": challenge} if challenge else {}
    return RegistryError("UNAUTHORIZED", message, 401, headers=headers)


def denied() -> RegistryError:
    return RegistryError("DENIED", "requested access to the resource is denied", 403)


def range_invalid(size: int) -> RegistryError:
    return RegistryError("RANGE_INVALID", "requested range not satisfiable", 416,
                         headers={"Content-Range": f"bytes */{size}"})


def unsupported(message: str = "operation not supported by a read-only mirror") -> RegistryError:
    return RegistryError("UNSUPPORTED", message, 405)


def too_many_requests(message: str, retry_after: int) -> RegistryError:
    return RegistryError("TOOMANYREQUESTS", message, 429, headers={"Retry-After": str(retry_after)})


def upstream_unavailable(message: str, status: int = 502) -> RegistryError:
    # 502 bad gateway (upstream answered nonsense / 5xx), 503 unreachable,
    # 504 upstream timed out.  Not spec codes, but every client treats a 5xx
    # as "try elsewhere", which is what we want.
    return RegistryError("UNAVAILABLE", message, status)


class UpstreamError(LayerswarmError):
    """The origin registry failed (unreachable, timeout, 5xx, bad answer)."""

    def __init__(self, message: str, status: int = 502):
        super().__init__(message)
        self.status = status


class SwarmError(LayerswarmError):
    """The swarm path failed (stall, no peers, tracker down); fall back."""


class DigestMismatch(LayerswarmError):
    """Bytes did not hash to the digest they claim."""


class StoreFull(LayerswarmError):
    """The layer store cannot take more bytes (cap reached or disk full)."""


# -- values that fail validation --------------------------------------------------
class InvalidDigest(ValueError):
    """The text is not a sha256 digest we accept."""


class InvalidInfoHash(ValueError):
    """The value is not a 20-byte BitTorrent v1 info-hash."""


class InvalidMetainfo(ValueError):
    """A .torrent that is not a valid layer torrent of this format."""


class InvalidOption(ValueError):
    """A configuration value a section refuses: ``field`` is the offending option."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


# -- the tracker, seen from a host -----------------------------------------------
class TrackerUnavailable(Exception):
    """The tracker could not be reached or answered with a server error."""


class PublishConflict(Exception):
    """The tracker holds a different torrent for the digest (HTTP 409)."""

    def __init__(self, digest, info_hash: str | None):
        super().__init__(f"tracker already has a different torrent for {digest}"
                         + (f" (info-hash {info_hash})" if info_hash else ""))
        self.digest = digest
        self.info_hash = info_hash


class PublishRejected(Exception):
    """The tracker refused the torrent (400 invalid, 401/403 token)."""


class TorrentConflict(UserError):
    """The tracker publishes a torrent for the digest whose pieces do not match our verified bytes."""


# -- the host's libtorrent session and the local stack ----------------------------
class TorrentGone(Exception):
    """The torrent was removed (its handle may still look valid for a moment)."""


class DaemonError(LayerswarmError):
    """A daemon or client of the local stack failed; the message says why."""
