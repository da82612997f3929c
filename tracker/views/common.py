"""Helpers shared by the JSON views."""
from __future__ import annotations

import re
import unicodedata

from flask import request

from layerswarm.bridge.format.digest import Digest

from layerswarm.bridge.format.errors import InvalidDigest
from layerswarm.tracker.context import fleet_host, tracker
from layerswarm.tracker.errors import ClientError, TooLarge

_HOST_ID = re.compile(r"^[A-Za-z0-9._:@/-]{1,255}$")
_UNLOGGABLE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}   # Unicode categories: controls, format, separators


def parse_digest(text: str) -> Digest:
    try:
        return Digest.parse(text)
    except InvalidDigest as exc:
        raise ClientError(str(exc)) from None


def read_body(limit: int) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        raise TooLarge(f"body larger than {limit} bytes")
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"body larger than {limit} bytes")
    return data


def json_body() -> dict:
    body = request.get_json(silent=True, force=True)
    if not isinstance(body, dict):
        raise ClientError("body must be a JSON object")
    return body


def caller_id(value) -> str:
    """Who calls: in a secure fleet its certificate's CN (whatever ``host`` it sent: a host cannot
    speak for another), else the ``host`` it sent."""
    host = fleet_host()
    if host is not None:
        return host.name
    if not isinstance(value, str) or not _HOST_ID.fullmatch(value):
        raise ClientError("host must be 1-255 characters of [A-Za-z0-9._:@/-]")
    return value


def log_text(value, limit: int) -> str:
    """Caller-given text for a log line: at most ``limit`` characters, without control or format
    characters and line separators (a newline would forge a log line, a lone surrogate breaks the handler)."""
    return "".join(ch for ch in str(value)[:limit] if unicodedata.category(ch) not in _UNLOGGABLE)


def requested_kind() -> str | None:
    """The kind of torrent the caller works with, from ``?format=1|2`` (default: this tracker's own
    mode's format, so clients that do not say are served as before); None when none of it is served."""
    t = tracker()
    raw = request.args.get("format", str(t.own_format))
    if raw not in ("1", "2"):
        raise ClientError("format must be 1 (open mode) or 2 (secure fleet mode)")
    return t.kind_for(int(raw))
