"""Storage backends behind one contract (see base.py)."""
from __future__ import annotations

from layerswarm.tracker.storage.base import Limits, Store
from layerswarm.tracker.storage.spec import StoreOptions, parse_store


def open_store(spec: str, limits: Limits | None = None, options: StoreOptions | None = None) -> Store:
    """``memory``, a ``redis://`` / ``rediss://`` / ``unix://`` URL or a ``redis+sentinel://`` one (spec.py);
    ValueError when it is none of those."""
    parsed = parse_store(spec)
    if parsed.kind == "memory":
        from layerswarm.tracker.storage.memory import MemoryStore
        return MemoryStore(limits)
    from layerswarm.tracker.storage.redis import RedisStore
    return RedisStore(parsed, limits, options)
