"""Storage backends behind one contract (see base.py)."""
from __future__ import annotations

from layerswarm.tracker.storage.base import Limits, Store


def open_store(spec: str, limits: Limits | None = None) -> Store:
    """``memory`` or a ``redis://`` / ``rediss://`` / ``unix://`` URL."""
    if spec in (None, "", "memory"):
        from layerswarm.tracker.storage.memory import MemoryStore
        return MemoryStore(limits)
    if spec.startswith(("redis://", "rediss://", "unix://")):
        from layerswarm.tracker.storage.redis import RedisStore
        return RedisStore(spec, limits)
    raise ValueError(f"unknown store {spec!r} (use 'memory' or a redis:// URL)")
