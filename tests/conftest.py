"""Shared fixtures: real processes on loopback (see tests/procs.py)."""
from __future__ import annotations

import pytest

from tests import procs


@pytest.fixture
def redis_url(tmp_path):
    p, url = procs.start_redis(tmp_path / "redis")
    yield url
    p.stop()


@pytest.fixture
def origin(tmp_path):
    """A real docker-registry standing in as the origin; yields its base URL."""
    p, url = procs.start_registry(tmp_path / "origin")
    p.url = url
    yield p
    p.stop()
