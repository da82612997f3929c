"""HTTP behaviour through the Flask test client (memory store)."""
from __future__ import annotations

import hashlib
import logging
import os

import bencodepy
import pytest

from layerswarm.tracker.app import create_app
from layerswarm.bridge.format.layertorrent import UNPUBLISHED_WARNING
from tests.tracker.helpers import announce_qs, bad_torrent_for, layer

IH = b"\x00\xff%&=+ \x80" + b"\x01" * 12  # bytes that text decoding or form parsing would mangle


def ann(tracker_client, qs, path="/announce"):
    r = tracker_client.get(f"{path}?{qs}", environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert r.status_code == 200
    return bencodepy.decode(r.data)


def test_announce_binary_safe_compact_and_dict(tracker_client):
    first = ann(tracker_client, announce_qs(IH, b"\xfe" * 20, 6881, event="started"))
    assert first[b"interval"] == 60 and first[b"min interval"] == 30 and first[b"peers"] == b""
    r = ann(tracker_client, announce_qs(IH, b"-XX0001-abcdefghijkl", 6882, left=0))
    assert r[b"peers"] == bytes([127, 0, 0, 1]) + (6881).to_bytes(2, "big")
    assert (r[b"complete"], r[b"incomplete"]) == (1, 1)
    r = ann(tracker_client, announce_qs(IH, b"-XX0001-abcdefghijkl", 6882, left=0, compact=0))
    assert r[b"peers"] == [{b"ip": b"127.0.0.1", b"peer id": b"\xfe" * 20, b"port": 6881}]
    r = ann(tracker_client, announce_qs(IH, b"-XX0001-abcdefghijkl", 6882, left=0, compact=0, no_peer_id=1))
    assert r[b"peers"] == [{b"ip": b"127.0.0.1", b"port": 6881}]


def test_seeders_get_the_long_interval_and_are_asked_for_torrents_not_published(tracker_client, publish_auth):
    _, t = layer()
    ih = t.info_hash.raw
    r = ann(tracker_client, announce_qs(ih, b"-XX0001-leecher00001", 6881, event="started"))
    assert (r[b"interval"], r[b"min interval"]) == (60, 30) and b"warning message" not in r
    r = ann(tracker_client, announce_qs(ih, b"-XX0001-seeder000001", 6882, left=0, event="started"))
    assert r[b"interval"] == 1800 and r[b"warning message"] == UNPUBLISHED_WARNING.encode()
    assert r[b"peers"] == bytes([127, 0, 0, 1]) + (6881).to_bytes(2, "big")   # the reply is whole otherwise
    assert tracker_client.put(f"/metainfo/{t.digest}", data=t.metainfo, headers=publish_auth).status_code == 201
    r = ann(tracker_client, announce_qs(ih, b"-XX0001-seeder000001", 6882, left=0))
    assert r[b"interval"] == 1800 and b"warning message" not in r
    r = ann(tracker_client, announce_qs(ih, b"-XX0001-leecher00001", 6881, left=0, event="completed"))
    assert r[b"interval"] == 1800 and r[b"complete"] == 2
    metrics = tracker_client.get("/metrics").data.decode()
    assert "layerswarm_tracker_unpublished_seeders_total 1.0" in metrics


def test_announce_passkey_path_and_ip_param_ignored(tracker_client):
    ann(tracker_client, announce_qs(IH, b"a" * 20, 7000, ip="10.9.9.9"), path="/announce/pk123")
    r = ann(tracker_client, announce_qs(IH, b"b" * 20, 7001), path="/announce/other")
    assert r[b"peers"] == bytes([127, 0, 0, 1]) + (7000).to_bytes(2, "big")  # address from the connection


def test_ip_param_when_allowed():
    c = create_app({"allow_ip_param": True}).test_client()
    ann(c, announce_qs(IH, b"a" * 20, 7000, ip="10.9.9.9"))
    assert ann(c, announce_qs(IH, b"b" * 20, 7001))[b"peers"] == bytes([10, 9, 9, 9]) + (7000).to_bytes(2, "big")


@pytest.mark.parametrize("qs, reason", [
    ("", b"missing info_hash"),
    (announce_qs(b"x" * 19, b"p" * 20, 1), b"info_hash must be 20 bytes"),
    (announce_qs(b"x" * 21, b"p" * 20, 1), b"info_hash must be 20 bytes"),
    ("info_hash=" + "%41" * 20 + "&port=1&left=0", b"missing peer_id"),
    (announce_qs(IH, b"p" * 5, 1), b"peer_id must be 20 bytes"),
    (announce_qs(IH, b"p" * 20, 0), b"port out of range"),
    (announce_qs(IH, b"p" * 20, 70000), b"port out of range"),
    (announce_qs(IH, b"p" * 20, "12a"), b"invalid port"),
    (announce_qs(IH, b"p" * 20, 1, left="-1").replace("left=100&", ""), b"invalid left"),
    (announce_qs(IH, b"p" * 20, 1, numwant="1e9"), b"invalid numwant"),
    (announce_qs(IH, b"p" * 20, 1, event="exploded"), b"unknown event"),
    (announce_qs(IH, b"p" * 20, 1) + "&port=2", b"port given more than once"),
    (announce_qs(IH, b"p" * 20, 1) + "&x=" + "a" * 5000, b"query string too long"),
])
def test_announce_bad_input_is_a_failure_reason(tracker_client, qs, reason):
    assert ann(tracker_client, qs) == {b"failure reason": reason}


def test_numwant_clamped(tracker_client):
    for n in range(250):
        ann(tracker_client, announce_qs(IH, b"%020d" % n, 1000 + n))
    r = ann(tracker_client, announce_qs(IH, b"z" * 20, 999, numwant=100000))
    assert len(r[b"peers"]) == 6 * 200


def test_scrape(tracker_client):
    ann(tracker_client, announce_qs(IH, b"a" * 20, 7000, left=0))
    other = os.urandom(20)
    from urllib.parse import quote_from_bytes
    r = bencodepy.decode(tracker_client.get(f"/scrape?info_hash={quote_from_bytes(IH, safe='')}"
                                    f"&info_hash={quote_from_bytes(other, safe='')}").data)
    assert r[b"files"][IH] == {b"complete": 1, b"downloaded": 0, b"incomplete": 0}
    assert r[b"files"][other][b"complete"] == 0
    assert IH in bencodepy.decode(tracker_client.get("/scrape").data)[b"files"]
    assert b"failure reason" in bencodepy.decode(tracker_client.get("/scrape?info_hash=short").data)


def test_healthz_and_unknown_routes(tracker_client):
    assert tracker_client.get("/healthz").data == b"ok\n"
    r = tracker_client.get("/nope")
    assert r.status_code == 404 and r.json["error"]
    assert b"failure reason" in bencodepy.decode(tracker_client.post("/announce").data)


def test_metainfo_publish_serve_auth_conflict(tracker_client, publish_auth):
    data, t = layer()
    url = f"/metainfo/{t.digest}"
    assert tracker_client.get(url).status_code == 404
    assert tracker_client.put(url, data=t.metainfo).status_code == 401
    assert tracker_client.put(url, data=t.metainfo, headers={"Authorization": "Bearer wrong"}).status_code == 403
    r = tracker_client.put(url, data=t.metainfo, headers=publish_auth)
    assert r.status_code == 201 and r.json["info_hash"] == t.info_hash.hex
    assert tracker_client.put(url, data=t.metainfo, headers=publish_auth).status_code == 200
    bad = bad_torrent_for(t.digest, t.size)
    r = tracker_client.put(url, data=bad, headers=publish_auth)
    assert r.status_code == 409 and r.json["info_hash"] == t.info_hash.hex
    r = tracker_client.get(url)
    assert r.status_code == 200 and r.data == t.metainfo and r.mimetype == "application/x-bittorrent"
    h = tracker_client.head(url)
    assert h.status_code == 200 and h.data == b"" and int(h.headers["Content-Length"]) == len(t.metainfo)
    # invalid: wrong digest in name, garbage, bad digest in URL
    other = layer(1000)[1]
    assert tracker_client.put(f"/metainfo/{other.digest}", data=t.metainfo, headers=publish_auth).status_code == 400
    r = tracker_client.put(f"/metainfo/{other.digest}", data=b"garbage", headers=publish_auth)
    assert r.status_code == 400 and "invalid layer torrent" in r.json["error"]
    assert tracker_client.get("/metainfo/sha256:xyz").status_code == 400
    assert tracker_client.get("/metainfo/..%2f..%2fetc").status_code in (400, 404)


def test_metainfo_too_large():
    c = create_app({"max_metainfo": 100}).test_client()
    _, t = layer()
    assert c.put(f"/metainfo/{t.digest}", data=t.metainfo).status_code == 413


def test_reports_need_the_publish_token(tracker_client, publish_auth):
    """An outsider's made-up host ids quarantine nothing: with a publish token, reports need it."""
    _, good = layer()
    url = f"/metainfo/{good.digest}"
    assert tracker_client.put(url, data=good.metainfo, headers=publish_auth).status_code == 201
    rep = {"info_hash": good.info_hash.hex, "reason": "lies"}
    for host in ("a", "b", "c", "d"):
        assert tracker_client.post(url + "/reports", json={**rep, "host": host}).status_code == 401
    assert tracker_client.get(url).data == good.metainfo


def test_poisoned_torrent_quarantined_by_reports_in_open_mode(caplog):
    """Without a publish token (anonymous writes, loopback only) distinct hosts' reports quarantine."""
    tracker_client, publish_auth = create_app({"quarantine_reports": 2}).test_client(), {}
    _, good = layer()
    url = f"/metainfo/{good.digest}"
    bad = bad_torrent_for(good.digest, good.size)
    assert tracker_client.put(url, data=bad, headers=publish_auth).status_code == 201  # poison wins the race
    bad_ih = tracker_client.get(url).headers["X-Layerswarm-Info-Hash"]
    rep = {"info_hash": bad_ih, "reason": "piece 0 hash mismatch"}
    assert tracker_client.post(url + "/reports", json={**rep, "host": "node-1"}).json == {"quarantined": False}
    assert tracker_client.post(url + "/reports", json={**rep, "host": "node-1"}).json == {"quarantined": False}
    assert tracker_client.get(url).status_code == 200
    with caplog.at_level(logging.WARNING):
        assert tracker_client.post(url + "/reports", json={**rep, "host": "node-2"}).json == {"quarantined": True}
    assert "QUARANTINED" in caplog.text
    assert tracker_client.get(url).status_code == 404
    assert tracker_client.put(url, data=bad, headers=publish_auth).status_code == 409  # no token: nothing lifts it
    assert tracker_client.put(url, data=good.metainfo, headers=publish_auth).status_code == 201
    assert tracker_client.get(url).data == good.metainfo
    assert tracker_client.post(url + "/reports", json={"info_hash": "zz", "host": "x"}).status_code == 400
    assert tracker_client.post(url + "/reports", json={**rep, "host": "bad host!"}).status_code == 400


def test_trusted_report_quarantines_at_once(tracker_client, publish_auth):
    _, good = layer()
    url = f"/metainfo/{good.digest}"
    tracker_client.put(url, data=good.metainfo, headers=publish_auth)
    body = {"info_hash": good.info_hash.hex, "host": "ops", "reason": "operator"}
    assert tracker_client.post(url + "/reports", json=body, headers={"Authorization": "Bearer nope"}).status_code == 403
    assert tracker_client.post(url + "/reports", json=body, headers=publish_auth).json == {"quarantined": True}
    assert tracker_client.get(url).status_code == 404


def test_a_publish_with_the_token_lifts_a_quarantine(tracker_client, publish_auth, caplog):
    """Every bridge holds the token: one report quarantines, and a bridge that built the torrent from
    verified bytes brings it back by publishing it; reports can quarantine it again."""
    _, good = layer()
    url = f"/metainfo/{good.digest}"
    assert tracker_client.put(url, data=good.metainfo, headers=publish_auth).status_code == 201
    body = {"info_hash": good.info_hash.hex, "host": "flaky", "reason": "piece 3 hash mismatch"}
    assert tracker_client.post(url + "/reports", json=body, headers=publish_auth).json == {"quarantined": True}
    assert tracker_client.get(url).status_code == 404
    assert tracker_client.put(url, data=good.metainfo).status_code == 401
    with caplog.at_level(logging.WARNING):
        r = tracker_client.put(url, data=good.metainfo, headers=publish_auth)
    assert r.status_code == 201 and r.json["info_hash"] == good.info_hash.hex
    lifted = [rec for rec in caplog.records if "quarantine lifted" in rec.getMessage()]
    assert len(lifted) == 1 and lifted[0].levelno == logging.WARNING
    assert str(good.digest) in lifted[0].getMessage() and good.info_hash.hex in lifted[0].getMessage()
    assert tracker_client.get(url).data == good.metainfo
    assert tracker_client.put(url, data=good.metainfo, headers=publish_auth).status_code == 200
    assert b'metainfo_puts_total{result="unquarantined"} 1.0' in tracker_client.get("/metrics").data
    assert tracker_client.post(url + "/reports", json=body, headers=publish_auth).json == {"quarantined": True}
    assert tracker_client.get(url).status_code == 404


def test_a_reports_reason_is_logged_bounded_on_one_line(tracker_client, publish_auth, caplog):
    _, t = layer()
    url = f"/metainfo/{t.digest}"
    tracker_client.put(url, data=t.metainfo, headers=publish_auth)
    forged = "bad piece\n2030-01-01 WARNING forged\x1b[31m\u2028\u202e\ud800"
    body = {"info_hash": t.info_hash.hex, "host": "h1", "reason": forged + "x" * 1000}
    with caplog.at_level(logging.WARNING):
        assert tracker_client.post(url + "/reports", json=body, headers=publish_auth).json == {"quarantined": True}
    (line,) = [rec.getMessage() for rec in caplog.records if "QUARANTINED" in rec.getMessage()]
    assert line.endswith(": bad piece2030-01-01 WARNING forged[31m" + "x" * (500 - len(forged)))


def test_manifests(tracker_client, publish_auth):
    body = b'{"schemaVersion":2}'
    d = "sha256:" + hashlib.sha256(body).hexdigest()
    ct = "application/vnd.oci.image.manifest.v1+json"
    assert tracker_client.put(f"/manifests/{d}", data=body, headers={"Content-Type": ct}).status_code == 401
    assert tracker_client.put(f"/manifests/{d}", data=body + b" ", headers={**publish_auth, "Content-Type": ct}).status_code == 400
    assert tracker_client.put(f"/manifests/{d}", data=body, headers={**publish_auth, "Content-Type": ct}).status_code == 201
    assert tracker_client.put(f"/manifests/{d}", data=body, headers={**publish_auth, "Content-Type": ct}).status_code == 200
    r = tracker_client.get(f"/manifests/{d}")
    assert r.data == body and r.headers["Content-Type"] == ct and r.headers["Docker-Content-Digest"] == d
    assert tracker_client.head(f"/manifests/{d}").data == b""
    assert tracker_client.get("/manifests/sha256:" + "0" * 64).status_code == 404
    c = create_app({"max_manifest": 10}).test_client()
    assert c.put(f"/manifests/{d}", data=body).status_code == 413


@pytest.mark.parametrize("body,ct", [
    (b'{"schemaVersion":2}', "application/x-made-up"),
    (b'{"schemaVersion":2}', ""),
    (b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}',
     "application/vnd.oci.image.manifest.v1+json"),
    (b'not json', "application/vnd.oci.image.manifest.v1+json"),
    (b'[1, 2]', "application/vnd.oci.image.manifest.v1+json"),
])
def test_manifest_with_a_made_up_or_mismatched_type_is_refused(tracker_client, publish_auth, body, ct):
    d = "sha256:" + hashlib.sha256(body).hexdigest()
    assert tracker_client.put(f"/manifests/{d}", data=body, headers={**publish_auth, "Content-Type": ct}).status_code == 400
    assert tracker_client.get(f"/manifests/{d}").status_code == 404


def test_torrent_with_an_ssl_cert_is_refused_in_open_mode(tracker_client, publish_auth):
    from layerswarm.bridge.format.layertorrent import build_metainfo
    _, t = layer()
    secure = build_metainfo(t.digest, t.size, t.pieces, ssl_cert=b"-----BEGIN CERTIFICATE-----\nx\n")
    r = tracker_client.put(f"/metainfo/{t.digest}", data=secure.metainfo, headers=publish_auth)
    assert r.status_code == 400 and "ssl-cert" in r.json["error"]
    assert tracker_client.put(f"/metainfo/{t.digest}", data=t.metainfo, headers=publish_auth).status_code == 201


def test_leases_http(tracker_client, publish_auth):
    _, t = layer()
    lu = f"/leases/{t.digest}"
    assert tracker_client.post(lu, json={"host": "a", "url": "http://127.0.0.1:5001"}).status_code == 401
    assert tracker_client.post(lu, json={"host": "a", "url": "http://127.0.0.1:5001"},
                       headers={"Authorization": "Bearer wrong"}).status_code == 403
    r = tracker_client.post(lu, json={"host": "a", "url": "http://127.0.0.1:5001", "ttl": 20}, headers=publish_auth)
    assert r.status_code == 201 and r.json == {"role": "holder", "ttl": 20.0}
    r = tracker_client.post(lu, json={"host": "b", "url": "http://127.0.0.1:5002"}, headers=publish_auth)
    assert r.status_code == 200 and r.json == {"role": "relay", "source": {"host": "a", "url": "http://127.0.0.1:5001"}}
    assert tracker_client.put(lu, json={"host": "a", "ttl": 30}, headers=publish_auth).status_code == 200
    assert tracker_client.put(lu, json={"host": "b", "ttl": 30}, headers=publish_auth).status_code == 409
    assert tracker_client.post(lu, json={"host": "c", "url": "ftp://x"}, headers=publish_auth).status_code == 400
    assert tracker_client.post(lu, json={"host": "c", "url": "http://127.0.0.1:5003", "ttl": -1},
                               headers=publish_auth).status_code == 400
    assert tracker_client.delete(f"{lu}?host=a", headers=publish_auth).json == {"released": True}
    assert tracker_client.post(lu, json={"host": "b", "url": "http://127.0.0.1:5002"}, headers=publish_auth).status_code == 201
    tracker_client.put(f"/metainfo/{t.digest}", data=t.metainfo, headers=publish_auth)
    assert tracker_client.post(lu, json={"host": "d", "url": "http://127.0.0.1:5004"}, headers=publish_auth).json == {"role": "published"}


def test_swarms_html_escaped_and_metrics(tracker_client, publish_auth):
    _, t = layer()
    tracker_client.put(f"/metainfo/{t.digest}", data=t.metainfo, headers=publish_auth)
    ann(tracker_client, announce_qs(t.info_hash.raw, b"s" * 20, 7000, left=0))
    ann(tracker_client, announce_qs(b"<script>x</script>!!", b"l" * 20, 7001))
    rows = {r["info_hash"]: r for r in tracker_client.get("/swarms").json}
    row = rows[t.info_hash.hex]
    assert row["digest"] == str(t.digest) and row["size"] == t.size and row["seeders"] == 1
    assert rows[b"<script>x</script>!!".hex()]["digest"] is None
    html = tracker_client.get("/").data.decode()
    assert str(t.digest) in html and "<script>" not in html
    m = tracker_client.get("/metrics").data.decode()
    assert "layerswarm_tracker_announces_total" in m and "layerswarm_tracker_published_torrents 1.0" in m


def test_internal_error_is_generic(tracker_app, tracker_client):
    class Boom(Exception):
        pass

    def explode(*a, **kw):
        raise Boom("secret internals")
    tracker_app.extensions["layerswarm"].store.announce = explode
    tracker_app.extensions["layerswarm"].store.swarms = explode
    r = ann(tracker_client, announce_qs(IH, b"a" * 20, 7000))
    # with the time to retry (the min interval): without it libtorrent would wait its default 1800 s
    assert r == {b"failure reason": b"internal tracker error", b"interval": 30, b"min interval": 30, b"retry in": 1}
    r = tracker_client.get("/swarms")
    assert r.status_code == 500 and b"secret" not in r.data and b"Traceback" not in r.data


@pytest.mark.parametrize("url", ["ftp://h", "http://", "http://u:p@h:1", "http://h:1/?x=1", "http://h:1/#f",
                                 "http://h:99999", "http://h 1", "http://h:1/\n", "//h:1", "h:1", 5, None])
def test_lease_relay_url_must_be_a_plain_base_url(tracker_client, publish_auth, url):
    _, t = layer()
    r = tracker_client.post(f"/leases/{t.digest}", json={"host": "a", "url": url}, headers=publish_auth)
    assert r.status_code == 400 and "url" in r.json["error"]


@pytest.mark.parametrize("caller, url", [
    ("127.0.0.1", "http://127.0.0.1:5001"), ("127.0.0.1", "https://127.0.0.1/bridge"),
    ("127.0.0.1", "http://localhost:5001"), ("127.0.0.1", "http://[::ffff:127.0.0.1]:5001"),
    ("::ffff:10.0.0.7", "http://10.0.0.7:5001"), ("::1", "http://[::1]:5001")])
def test_lease_relay_url_on_the_callers_own_host_is_taken(tracker_client, publish_auth, caller, url):
    _, t = layer()
    r = tracker_client.post(f"/leases/{t.digest}", json={"host": "a", "url": url}, headers=publish_auth,
                            environ_base={"REMOTE_ADDR": caller})
    assert r.status_code == 201, r.json
    r = tracker_client.post(f"/leases/{t.digest}", json={"host": "b", "url": "http://127.0.0.1:5002"},
                            headers=publish_auth)
    assert r.json["source"] == {"host": "a", "url": url}


@pytest.mark.parametrize("caller, url", [
    ("127.0.0.1", "http://10.0.0.7:5001"), ("127.0.0.1", "http://127.0.0.2:5001"),
    ("127.0.0.1", "http://[::1]:5001"), ("10.0.0.7", "http://localhost:5001"),
    ("127.0.0.1", "http://no-such-host.invalid:5001"), ("127.0.0.1", "http://a..b:1"),
    ("127.0.0.1", "http://169.254.169.254/latest")])
def test_lease_relay_url_on_another_host_is_refused_and_not_stored(tracker_client, publish_auth, caller, url):
    _, t = layer()
    r = tracker_client.post(f"/leases/{t.digest}", json={"host": "evil", "url": url}, headers=publish_auth,
                            environ_base={"REMOTE_ADDR": caller})
    assert r.status_code == 400 and "caller's address" in r.json["error"], r.json
    r = tracker_client.post(f"/leases/{t.digest}", json={"host": "b", "url": "http://127.0.0.1:5002"},
                            headers=publish_auth)
    assert r.status_code == 201 and r.json["role"] == "holder"   # the refused asker holds nothing


def test_lease_relay_url_name_that_resolves_too_slowly_is_refused(tracker_client, publish_auth, monkeypatch):
    import socket
    import time

    from layerswarm.tracker.views import leases
    monkeypatch.setattr(leases, "RESOLVE_TIMEOUT", 0.2)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **kw: time.sleep(3) or [])   # a resolver that hangs
    _, t = layer()
    started = time.monotonic()
    r = tracker_client.post(f"/leases/{t.digest}", json={"host": "a", "url": "http://slow.example:1"},
                            headers=publish_auth)
    assert r.status_code == 400 and time.monotonic() - started < 2.5


def test_full_lease_table_answers_503_and_existing_leases_keep_working():
    c = create_app({"max_leases": 1}).test_client()
    (_, a), (_, b) = layer(), layer()
    assert c.post(f"/leases/{a.digest}", json={"host": "h1", "url": "http://127.0.0.1:1"}).status_code == 201
    r = c.post(f"/leases/{b.digest}", json={"host": "h1", "url": "http://127.0.0.1:1"})
    assert r.status_code == 503 and "origin" in r.json["error"]
    assert c.post(f"/leases/{a.digest}", json={"host": "h2", "url": "http://127.0.0.1:2"}).json["role"] == "relay"


def test_metainfo_body_capped_at_the_largest_valid_torrent(tracker_client, publish_auth):
    from layerswarm.bridge.format.layertorrent import MAX_METAINFO_BYTES
    _, t = layer()
    r = tracker_client.put(f"/metainfo/{t.digest}", data=b"x" * (MAX_METAINFO_BYTES + 1), headers=publish_auth)
    assert r.status_code == 413
