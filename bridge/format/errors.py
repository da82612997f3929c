"""Every error type the bridge and CLI raise on purpose lives here.

``UserError`` is what the CLI turns into a one-line message and a non-zero
exit; ``RegistryError`` is what the registry API turns into a spec JSON error
body.  Anything else reaching the top is a bug: it is logged and answered
generically, never shown as a traceback.
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


def unauthorized(challenge: str | None = None) -> RegistryError:
    headers = {"WWW-Authenticate": challenge} if challenge else {}
    return RegistryError("UNAUTHORIZED", "authentication required", 401, headers=headers)


def denied() -> RegistryError:
    return RegistryError("DENIED", "requested access to the resource is denied", 403)


def range_invalid(size: int) -> RegistryError:
    return RegistryError("RANGE_INVALID", "requested range not satisfiable", 416,
                         headers={"Content-Range": f"bytes */{size}"})


def unsupported(message: str = "operation not supported by a read-only mirror") -> RegistryError:
    return RegistryError("UNSUPPORTED", message, 405)


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
