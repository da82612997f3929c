"""The tracker client with several tracker URLs: which replica a call goes to, and when it moves on."""
from __future__ import annotations

import pytest

from layerswarm.bridge.devstack.threadserver import ThreadServer
from layerswarm.bridge.format.errors import TrackerUnavailable
from layerswarm.bridge.node.trackerclient import TrackerClient
from tests.fixtures import LocalTracker, free_port
from tests.sources.fakes import blob, torrent


class SickReplica(ThreadServer):
    """A replica whose store is gone: 503 to everything; ``.hits`` counts the requests."""

    def __init__(self):
        self.hits = 0

        def app(environ, start_response):
            self.hits += 1
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"store unavailable\n"]
        super().__init__(app)


@pytest.fixture
def replicas():
    """Two real trackers with separate memory stores (so each answer shows who gave it) and a sick one."""
    made = [LocalTracker(), LocalTracker(), SickReplica()]
    yield made
    for r in made:
        r.stop()


def test_a_call_moves_on_past_dead_and_failing_replicas_and_stays_where_it_got_an_answer(replicas):
    a, b, sick = replicas
    d, data = blob(300_000)
    t = torrent(data)
    assert TrackerClient(b.url).put_metainfo(t)            # only b knows the torrent
    dead = f"http://127.0.0.1:{free_port()}"
    client = TrackerClient([dead, sick.url, b.url, a.url], timeout=5)
    assert client.announce_urls == [f"{u}/announce" for u in (dead, sick.url, b.url, a.url)]

    assert client.get_metainfo(d).info_hash == t.info_hash    # refused, 503, then b answers
    assert client.url == b.url and sick.hits == 1
    assert client.get_metainfo(d).info_hash == t.info_hash    # sticky: straight to b
    assert sick.hits == 1

    b.stop()
    assert client.get_metainfo(d) is None                     # b gone: a answers (it has no torrent)
    assert client.url == a.url


def test_a_4xx_is_an_answer_not_a_reason_to_ask_another_replica(replicas):
    a, b, _ = replicas
    d, data = blob(300_000)
    TrackerClient(b.url).put_metainfo(torrent(data))
    client = TrackerClient([a.url, b.url])
    assert client.get_metainfo(d) is None                     # a's 404 stands, although b has it
    assert client.url == a.url


def test_no_replica_answering_is_one_error_naming_each(replicas):
    sick = replicas[2]
    dead = f"http://127.0.0.1:{free_port()}"
    client = TrackerClient([dead, sick.url], timeout=5)
    with pytest.raises(TrackerUnavailable) as ei:
        client.get_metainfo(blob(1000)[0])
    assert dead in str(ei.value) and sick.url in str(ei.value) and "503" in str(ei.value)
    assert client.url == dead and not client.healthy()


def test_one_url_is_still_a_tracker_client(replicas):
    a = replicas[0]
    assert TrackerClient(a.url + "/").urls == (a.url,) and TrackerClient(a.url).healthy()
    with pytest.raises(ValueError):
        TrackerClient([])
