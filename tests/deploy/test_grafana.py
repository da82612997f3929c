"""deploy/grafana/layerswarm.json asks only for metrics, labels and label values that a real bridge's and a real
tracker's /metrics show (both apps in this process, after a little traffic)."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import requests
from flask import Flask, Response
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures import PUBLISH_TOKEN
from tests.tracker.helpers import announce_qs, layer

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "layerswarm.json"
BLOB = b"layer bytes " * 20_000
BLOB_D = "sha256:" + hashlib.sha256(BLOB).hexdigest()


def _origin() -> Flask:
    """An anonymous registry holding one blob in library/app."""
    app = Flask("origin")

    @app.route("/v2/<path:p>", methods=["GET", "HEAD"])
    def v2(p):
        if p == "library/app/tags/list":
            return {"name": "library/app", "tags": ["v1"]}
        if p == f"library/app/blobs/{BLOB_D}":
            return Response(BLOB, 200, {"Content-Type": "application/octet-stream", "Docker-Content-Digest": BLOB_D})
        return Response('{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}', 404,
                        {"Content-Type": "application/json"})
    return app


def _series(text: str) -> dict:
    """Sample name -> {label: set of values} of a /metrics page."""
    out: dict = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = out.setdefault(s.name, {})
            for k, v in s.labels.items():
                labels.setdefault(k, set()).add(v)
    return out


def _bridge_metrics(local_bridge, thread_server) -> dict:
    b = local_bridge("--upstream", thread_server(_origin()).url)
    r = requests.get(f"{b.url}/v2/library/app/blobs/{BLOB_D}", timeout=30)
    assert r.status_code == 200 and r.content == BLOB
    requests.get(f"{b.url}/v2/library/app/manifests/v1", timeout=30)
    return _series(requests.get(b.url + "/metrics", timeout=30).text)


def _tracker_metrics(publish_auth) -> dict:
    from layerswarm.tracker.app import create_app
    tracker_client = create_app({"publish_token": PUBLISH_TOKEN, "max_relays": 1}).test_client()
    data, t = layer()
    assert tracker_client.put(f"/metainfo/{t.digest}", data=t.metainfo, headers=publish_auth).status_code == 201
    assert tracker_client.get("/announce?" + announce_qs(t.info_hash.raw, b"-LS0001-" + b"1" * 12, 6881,
                                                          left=0)).status_code == 200
    tracker_client.get("/announce")                                         # a failure
    other = layer()[1]
    for n, role in enumerate(("holder", "relay", "origin")):    # one relay at most: then the origin
        body = {"host": f"h{n}", "url": f"http://127.0.0.1:{5001 + n}"}
        r = tracker_client.post(f"/leases/{other.digest}", json=body, headers=publish_auth)
        assert r.status_code < 300 and r.get_json()["role"] == role, r.get_data(as_text=True)
    return _series(tracker_client.get("/metrics").get_data(as_text=True))


def _queries() -> list:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "layerswarm" and dash["templating"]["list"][0]["type"] == "datasource"
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def test_the_dashboard_asks_only_for_what_the_daemons_show(local_bridge, thread_server, publish_auth):
    shown = {**_bridge_metrics(local_bridge, thread_server), **_tracker_metrics(publish_auth)}
    used = set()
    for expr in _queries():
        names = re.findall(r"\b(layerswarm_[a-z_]+)\b(\{[^}]*\})?", expr)
        assert names, expr
        grouped = [g.strip() for by in re.findall(r"\bby \(([^)]*)\)", expr) for g in by.split(",")]
        for name, matchers in names:
            used.add(name)
            assert name in shown, f"{name} is on no /metrics page ({expr})"
            labels = shown[name]
            for g in grouped:
                assert g == "instance" or g in labels, f"{name} has no label {g} ({expr})"
            for label, op, value in re.findall(r'(\w+)\s*(=~|=)\s*"([^"]*)"', matchers):
                assert label in labels, f"{name} has no label {label}"
                hit = [v for v in labels[label] if (re.fullmatch(value, v) if op == "=~" else v == value)]
                assert hit, f"{name}{{{label}{op}{value!r}}} matches nothing in {sorted(labels[label])}"
    # the counters that matter, each on a panel
    assert {"layerswarm_bridge_blob_bytes_total", "layerswarm_bridge_fetched_bytes_total",
            "layerswarm_bridge_upstream_requests_total", "layerswarm_tracker_reports_total",
            "layerswarm_tracker_quarantines_total", "layerswarm_tracker_peers"} <= used
