"""The hardening issue's attacks on a running tracker, as an outsider would try them (open mode, a token set)."""
from __future__ import annotations

import hashlib

import bencodepy
import pytest
import requests

from layerswarm.bridge.devstack import daemons as devstack
from layerswarm.bridge.format.layertorrent import build_metainfo
from tests.tracker.helpers import announce_qs, layer

pytestmark = pytest.mark.slow
TOKEN = "attack-test-publish-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("attacks")
    (tmp / "token").write_text(TOKEN)
    t = devstack.start_tracker(tmp, extra=["--publish-token-file", tmp / "token", "--interval", "60"])
    yield t
    t.stop()


def _published(tracker) -> object:
    _, t = layer()
    assert requests.put(f"{tracker.url}/metainfo/{t.digest}", data=t.metainfo, headers=AUTH, timeout=10).status_code == 201
    return t


def test_made_up_reports_cannot_withdraw_a_torrent(tracker):
    t = _published(tracker)
    url = f"{tracker.url}/metainfo/{t.digest}"
    for host in ("evil-1", "evil-2", "evil-3", "evil-4"):
        r = requests.post(url + "/reports", json={"info_hash": t.info_hash.hex, "host": host, "reason": "x"},
                          timeout=10)
        assert r.status_code == 401
    assert requests.get(url, timeout=10).content == t.metainfo


def test_a_quarantine_ends_with_a_publish_by_a_token_holder_only(tracker):
    """Every bridge holds the token: one report quarantines (logged with its reason), and a bridge that
    built the torrent from verified bytes publishes it again; an outsider's publish lifts nothing."""
    t = _published(tracker)
    url = f"{tracker.url}/metainfo/{t.digest}"
    rep = {"info_hash": t.info_hash.hex, "host": "flaky-disk", "reason": "piece 2 mismatch\nforged line"}
    assert requests.post(url + "/reports", json=rep, headers=AUTH, timeout=10).json() == {"quarantined": True}
    assert requests.get(url, timeout=10).status_code == 404
    assert requests.put(url, data=t.metainfo, timeout=10).status_code == 401
    assert requests.get(url, timeout=10).status_code == 404
    assert requests.put(url, data=t.metainfo, headers=AUTH, timeout=10).status_code == 201
    assert requests.get(url, timeout=10).content == t.metainfo
    assert requests.post(url + "/reports", json=rep, headers=AUTH, timeout=10).json() == {"quarantined": True}
    assert requests.get(url, timeout=10).status_code == 404
    log = tracker.log.read_text()
    quarantined = f"QUARANTINED torrent {t.info_hash.hex} for {t.digest} (trusted=True, last report from flaky-disk)"
    assert log.count(quarantined + ": piece 2 mismatchforged line\n") == 2
    assert log.count(f"quarantine lifted by a publish with the token: {t.digest} info_hash={t.info_hash.hex}") == 1


def test_an_outsider_cannot_take_renew_or_drop_a_lease(tracker):
    _, t = layer()
    lu = f"{tracker.url}/leases/{t.digest}"
    assert requests.post(lu, json={"host": "evil", "url": "http://127.0.0.2:1"}, timeout=10).status_code == 401
    assert requests.post(lu, json={"host": "b1", "url": "http://127.0.0.1:5001"}, headers=AUTH,
                         timeout=10).status_code == 201
    assert requests.put(lu, json={"host": "b1", "ttl": 30}, timeout=10).status_code == 401
    assert requests.delete(lu, params={"host": "b1"}, timeout=10).status_code == 401
    r = requests.post(lu, json={"host": "b2", "url": "http://127.0.0.1:5002"}, headers=AUTH, timeout=10)
    assert r.json() == {"role": "relay", "source": {"host": "b1", "url": "http://127.0.0.1:5001"}}


def test_a_token_holder_cannot_steer_the_fleet_to_another_address(tracker):
    _, t = layer()
    lu = f"{tracker.url}/leases/{t.digest}"
    # this test calls from 127.0.0.1: 127.0.0.2 is another host (an internal service, say)
    r = requests.post(lu, json={"host": "evil", "url": "http://127.0.0.2:5001"}, headers=AUTH, timeout=10)
    assert r.status_code == 400 and "caller's address" in r.json()["error"]
    r = requests.post(lu, json={"host": "b1", "url": "http://localhost:5001"}, headers=AUTH, timeout=10)
    assert r.status_code == 201 and r.json()["role"] == "holder"   # the refused asker got no lease
    r = requests.post(lu, json={"host": "b2", "url": "http://127.0.0.1:5002"}, headers=AUTH, timeout=10)
    assert r.json() == {"role": "relay", "source": {"host": "b1", "url": "http://localhost:5001"}}


def test_a_replayed_peer_id_from_another_address_cannot_remove_a_seeder(tracker):
    ih, pid = hashlib.sha1(b"replay").digest(), b"-LS0001-seederseeder"
    ann = f"{tracker.url}/announce?"
    assert requests.get(ann + announce_qs(ih, pid, 7001, left=0), timeout=10).status_code == 200
    # the same peer_id stopping, from 127.0.0.2 (another address on this host's loopback)
    s = requests.Session()
    s.mount("http://", _SourceAddressAdapter("127.0.0.2"))
    s.get(ann + announce_qs(ih, pid, 7001, left=0, event="stopped"), timeout=10)
    scrape = bencodepy.decode(requests.get(f"{tracker.url}/scrape", params={"info_hash": ih}, timeout=10).content)
    assert scrape[b"files"][ih][b"complete"] == 1


def test_torrents_with_extra_keys_and_manifests_with_made_up_types_are_refused(tracker):
    _, t = layer()
    secure = build_metainfo(t.digest, t.size, t.pieces, ssl_cert=b"-----BEGIN CERTIFICATE-----\nx\n")
    r = requests.put(f"{tracker.url}/metainfo/{t.digest}", data=secure.metainfo, headers=AUTH, timeout=10)
    assert r.status_code == 400 and "ssl-cert" in r.json()["error"]
    body = b'{"schemaVersion":2}'
    d = "sha256:" + hashlib.sha256(body).hexdigest()
    r = requests.put(f"{tracker.url}/manifests/{d}", data=body, timeout=10,
                     headers={**AUTH, "Content-Type": "application/x-evil"})
    assert r.status_code == 400 and requests.get(f"{tracker.url}/manifests/{d}", timeout=10).status_code == 404


def test_swarms_created_by_completed_events_do_not_pile_up(tmp_path):
    t = devstack.start_tracker(tmp_path, extra=["--max-swarms", "20", "--interval", "60"])
    try:
        for i in range(60):
            ih = hashlib.sha1(b"pile%d" % i).digest()
            requests.get(f"{t.url}/announce?" + announce_qs(ih, b"p" * 20, 7000, left=0, event="completed"),
                         timeout=10)
        assert len(requests.get(f"{t.url}/swarms", timeout=10).json()) <= 20
    finally:
        t.stop()


class _SourceAddressAdapter(requests.adapters.HTTPAdapter):
    """Connect from a chosen loopback address (a second "host" on this machine's 127.0.0.0/8)."""

    def __init__(self, source: str):
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args, **kw):
        kw["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kw)
