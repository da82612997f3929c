"""What only the integration tests need: fresh images per test and assertions on the bridge's counters.

Processes start in tests/fixtures.py (through ``layerswarm.bridge.devstack.daemons``).
"""
from __future__ import annotations

import secrets

from layerswarm.bridge.devstack import imagegen
from tests.fixtures import stats


def unique(name: str) -> str:
    """A repository-safe unique name: fresh blobs per test, no cache effects across tests."""
    return f"{name}-{secrets.token_hex(4)}"


def push_image(registry_url: str, repo: str, tag: str = "v1", layer_sizes=(256 << 10, 512 << 10), oci=False):
    img = imagegen.make_image(layer_sizes, seed=secrets.token_bytes(8), oci=oci)
    imagegen.push(registry_url, repo, tag, img)
    return img


def blob_responses(st: dict) -> int:
    """Successful blob GETs (200 + 206) the bridge answered."""
    return sum(n for k, n in st.get("requests", {}).items()
               if k.startswith("blob GET 2"))


def blob_bytes_served(st: dict) -> int:
    return int(st.get("bytes_served", {}).get("blob", 0))


def blob_bytes_from(st: dict, source: str) -> int:
    return int(st.get("blob_bytes", {}).get(source, 0))


def assert_bridge_served(bridge, image, before: dict | None = None) -> dict:
    """The bridge's counters show it answered every blob of ``image`` with all its bytes."""
    now = stats(bridge)
    before = before or {}
    n = blob_responses(now) - blob_responses(before)
    nbytes = blob_bytes_served(now) - blob_bytes_served(before)
    want = sum(len(b.data) for b in image.blobs)
    assert n >= len(image.blobs), f"bridge answered {n} blob GETs, expected >= {len(image.blobs)}: {now}"
    assert nbytes >= want, f"bridge served {nbytes} blob bytes, expected >= {want}: {now}"
    return now
