"""Manifests by digest are shared through the tracker: the upstream sees one GET per fleet."""
import re

import pytest
import requests

from layerswarm.bridge.devstack import imagegen
from tests.fixtures import stats

pytestmark = pytest.mark.slow


def _origin_manifest_gets(origin, ref: str) -> int:
    return len(re.findall(r'"GET /v2/library/shared/manifests/%s[^"]*" 200' % re.escape(ref), origin.log_text(10 ** 8)))


def test_manifest_by_digest_fetched_once_per_fleet(fleet, origin):
    img = imagegen.make_image((1000,), seed=b"shared-manifest")
    digest = str(imagegen.push(origin.url, "library/shared", "v1", img))
    bridges = [fleet.start_bridge(f"m{i}") for i in range(3)]
    accept = {"Accept": img.manifest_media_type}
    for b in bridges:
        head = requests.head(f"{b.url}/v2/library/shared/manifests/v1", headers=accept, timeout=30)
        assert head.status_code == 200 and head.headers["Docker-Content-Digest"] == digest
        r = requests.get(f"{b.url}/v2/library/shared/manifests/{digest}", headers=accept, timeout=30)
        assert r.status_code == 200 and r.content == img.manifest
        assert r.headers["Content-Type"] == img.manifest_media_type
    assert _origin_manifest_gets(origin, digest) == 1
    shared = [stats(b)["manifests"]["shared"] for b in bridges]
    assert sorted(shared) == [0, 1, 1]
