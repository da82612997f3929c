"""Property-based fuzzing of every parser that outsiders reach: no 5xx, no traceback, spec errors only."""
from __future__ import annotations

import argparse
from urllib.parse import quote_from_bytes

import bencodepy
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from layerswarm.bridge import config as bconfig
from layerswarm.bridge.format import errors
from layerswarm.bridge.format.layertorrent import parse_metainfo
from layerswarm.bridge.format.names import ByteRange, parse_api_path
from layerswarm.tracker.app import create_app
from tests.tracker.helpers import layer

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
_, TORRENT = layer(50_000)


@pytest.fixture(scope="module")
def tracker():
    return create_app({"publish_token": TOKEN}).test_client()


raw_bytes = st.binary(max_size=64)
text = st.text(max_size=64)
digests = st.one_of(st.just(str(TORRENT.digest)), st.text(max_size=80),
                    st.from_regex(r"sha256:[a-f0-9]{60,68}\n?", fullmatch=True))


@FUZZ
@given(params=st.lists(st.tuples(st.sampled_from(["info_hash", "peer_id", "port", "left", "uploaded", "downloaded",
                                                   "event", "numwant", "compact", "ip", "key", "x"]), raw_bytes),
                       max_size=12))
def test_announce_and_scrape_answer_bencode(tracker, params):
    qs = "&".join(f"{k}={quote_from_bytes(v, safe='')}" for k, v in params)
    for path in ("/announce", "/scrape"):
        r = tracker.get(f"{path}?{qs}")
        assert r.status_code < 500, r.data[:200]
        body = bencodepy.decode(r.data)
        assert isinstance(body, dict) and (b"failure reason" in body or b"files" in body or b"interval" in body)


@FUZZ
@given(digest=digests, body=st.one_of(raw_bytes, st.just(TORRENT.metainfo),
                                      st.builds(lambda b, i: TORRENT.metainfo[:i] + b + TORRENT.metainfo[i:],
                                                raw_bytes, st.integers(0, 400))),
       ctype=st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), max_size=64), auth=st.booleans())
def test_metainfo_and_manifest_writes(tracker, digest, body, ctype, auth):
    headers = {**(AUTH if auth else {}), "Content-Type": ctype.encode("utf-8", "replace").decode("latin-1")}
    for path in (f"/metainfo/{digest}", f"/manifests/{digest}"):
        r = tracker.put(path, data=body, headers=headers)
        assert r.status_code < 500 and "error" in r.get_json() if r.status_code >= 400 else True
        assert tracker.get(path).status_code < 500


@FUZZ
@given(digest=digests, body=st.one_of(st.dictionaries(text, st.one_of(text, st.integers(), st.floats(), st.none(),
                                                                         st.booleans()), max_size=5),
                                      st.lists(text, max_size=3), text),
       method=st.sampled_from(["POST", "PUT", "DELETE"]), auth=st.booleans())
def test_leases_and_reports(tracker, digest, body, method, auth):
    headers = AUTH if auth else {}
    r = tracker.open(f"/leases/{digest}", method=method, json=body, headers=headers)
    assert r.status_code < 500 or r.status_code == 503 and "full" in r.get_json()["error"]
    r = tracker.post(f"/metainfo/{digest}/reports", json=body, headers=headers)
    assert r.status_code < 500


@FUZZ
@given(path=st.one_of(st.text(max_size=120), st.from_regex(r"/v2/[a-z0-9./_%-]{0,60}/(manifests|blobs)/[\w:.%-]{0,80}",
                                                            fullmatch=True)))
def test_registry_paths_parse_or_give_spec_errors(path):
    try:
        parsed = parse_api_path(path)
    except errors.RegistryError as exc:
        assert exc.code in ("NAME_INVALID", "DIGEST_INVALID", "TAG_INVALID") and 400 <= exc.status < 500
        return
    if parsed is not None:
        assert parsed.kind in ("manifests", "blobs")


@FUZZ
@given(header=st.one_of(st.text(max_size=40), st.from_regex(r"bytes=\d{0,20}-\d{0,20}(,\d*-\d*)?", fullmatch=True)),
       size=st.integers(1, 1 << 40))
def test_range_headers(header, size):
    rng = ByteRange.parse(header)
    if rng is None:
        return
    try:
        start, end = rng.resolve(size)
    except errors.RegistryError as exc:
        assert exc.status == 416
        return
    assert 0 <= start <= end < size


@FUZZ
@given(data=st.binary(max_size=300))
def test_torrent_parser_only_raises_its_own_error(data):
    try:
        parse_metainfo(data)
    except errors.InvalidMetainfo:
        pass


@FUZZ
@given(values=st.dictionaries(st.sampled_from(["LAYERSWARM_THREADS", "LAYERSWARM_CACHE_MAX", "LAYERSWARM_LISTEN",
                                               "LAYERSWARM_LEASE_TTL", "LAYERSWARM_UTP", "LAYERSWARM_ALIAS",
                                               "LAYERSWARM_LT_SETTINGS", "LAYERSWARM_TRACKER",
                                               "LAYERSWARM_DEFAULT_UPSTREAM"]),
                              st.text(max_size=30), max_size=4))
def test_config_values_from_the_environment(values):
    p = argparse.ArgumentParser()
    bconfig.add_arguments(p)
    try:
        bconfig.from_args(p.parse_args(["--store-dir", "/s"]), environ=values)
    except errors.UserError as exc:
        assert str(exc) and "\n" not in str(exc).strip()
