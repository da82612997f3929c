"""Tracker fixtures: Flask apps over the memory store, stores over both backends."""
from __future__ import annotations

import pytest

from layerswarm.tracker.app import create_app
from layerswarm.tracker.storage import open_store

TOKEN = "s3cret-publish-token"


@pytest.fixture(params=["memory", "redis"])
def store(request):
    url = "memory" if request.param == "memory" else request.getfixturevalue("redis_url")
    s = open_store(url)
    yield s
    s.close()


@pytest.fixture
def app():
    return create_app({"publish_token": TOKEN, "quarantine_reports": 2, "interval": 60})


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def auth():
    return {"Authorization": f"Bearer {TOKEN}"}
