"""Three bridges pull the same image at once: each layer leaves the origin once."""
import pytest

from layerswarm.bridge.devstack import imagegen
from layerswarm.bridge.format.digest import Digest
from tests.fixtures import origin_blob_gets, stats
from tests.swarm.helpers import pull_all, pull_blob

pytestmark = pytest.mark.slow


def test_cold_rollout_each_layer_leaves_origin_once(fleet, origin):
    img = imagegen.make_image((6 << 20, 3 << 20, 2 << 20), seed=b"cold-rollout")
    imagegen.push(origin.url, "library/app", "v1", img)
    before = origin_blob_gets(origin)
    bridges = [fleet.start_bridge(f"h{i}") for i in range(3)]
    digests = [b.digest for b in img.blobs]
    results = pull_all(bridges, "library/app", digests)
    for (i, d), got in results.items():
        assert not isinstance(got, Exception), f"bridge {i} {d}: {got!r}"
        assert Digest.of_bytes(got) == d
    after = origin_blob_gets(origin)
    for d in digests:
        assert after.get(str(d), 0) - before.get(str(d), 0) == 1, (d, after, _why_origin(bridges))
    # The others got their bytes from a relay (a fetch in progress) or the swarm, not the origin.
    fetched = [stats(b)["fetched"] for b in bridges]
    total = sum(len(b.data) for b in img.blobs)
    assert sum(f["origin"] for f in fetched) == total
    assert sum(f["relay"] + f["peer"] for f in fetched) >= 2 * total - (1 << 20)
    # Later pulls are store hits everywhere, and a fresh bridge gets layers from the swarm.
    late = fleet.start_bridge("late")
    for d in digests:
        assert Digest.of_bytes(pull_blob(late.url, "library/app", d)) == d
    assert origin_blob_gets(origin).get(str(img.layers[0].digest)) == after[str(img.layers[0].digest)]
    assert stats(late)["fetched"]["peer"] >= len(img.layers[0].data)


def _why_origin(bridges) -> list:
    """Each bridge's fallback counters and warnings: what sent a layer to the origin twice."""
    return [(b.name, stats(b)["fallbacks"], [l for l in b.log_text(10 ** 7).splitlines() if " WARNING " in l])
            for b in bridges]
