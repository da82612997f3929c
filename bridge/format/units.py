"""Byte sizes as people write them (``20G``, ``512MiB``) and as we print them (``1.5 GiB``)."""
from __future__ import annotations

import re

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", re.I)


def parse_size(text) -> int | None:
    """``20G``, ``512M``, ``1.5GiB``, ``1048576`` (or an int) -> bytes; None for empty; ValueError otherwise."""
    if text is None or text == "":
        return None
    if isinstance(text, int) and not isinstance(text, bool):
        n = text
    else:
        m = _SIZE.fullmatch(str(text).strip())
        if not m:
            raise ValueError(f"not a size: {text!r} (examples: 20G, 512M, 1048576)")
        exact = float(m.group(1)) * (1 << (10 * " KMGT".index((m.group(2) or " ").upper())))
        if exact != int(exact):
            raise ValueError(f"not a whole number of bytes: {text!r}")
        n = int(exact)
    if n <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return n


def human_size(n: int) -> str:
    """Bytes for a table column: ``512 B``, ``1.5 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
