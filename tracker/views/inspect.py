"""Swarm inspection: JSON for tools, an HTML page for people, Prometheus metrics."""
from __future__ import annotations

import time

from flask import Blueprint, Response, jsonify, render_template_string

from layerswarm.tracker.context import tracker

bp = Blueprint("inspect", __name__)


def swarm_rows() -> list:
    """Published torrents joined with live swarms; swarms nobody published are listed too."""
    t = tracker()
    now = time.time()
    live = {s.info_hash: s for s in t.store.swarms(now)}
    rows = []
    for digest, ih, size in t.published():
        s = live.pop(ih.raw, None)
        rows.append(_row(str(digest), ih.hex, size, s))
    rows.extend(_row(None, raw.hex(), None, s) for raw, s in live.items())
    rows.sort(key=lambda r: (-(r["last_announce"] or 0), r["info_hash"]))
    return rows


def _row(digest, ih_hex, size, s):
    return {"digest": digest, "info_hash": ih_hex, "size": size,
            "seeders": s.seeders if s else 0, "leechers": s.leechers if s else 0,
            "completed": s.completed if s else 0, "last_announce": s.last_announce if s else None}


@bp.get("/swarms")
def swarms():
    return jsonify(swarm_rows())


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>layerswarm tracker</title>
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}
td,th{padding:.2em .8em;border-bottom:1px solid #ddd;text-align:right}td.l,th.l{text-align:left;font-family:monospace}</style>
</head><body><h1>layerswarm tracker</h1>
<p>{{ rows|length }} swarm(s), {{ seeders }} seeder(s), {{ leechers }} leecher(s). JSON at <a href="swarms">/swarms</a>,
metrics at <a href="metrics">/metrics</a>.</p>
<table><tr><th class="l">layer digest</th><th class="l">info-hash</th><th>size</th><th>seeders</th>
<th>leechers</th><th>completed</th><th>last announce</th></tr>
{% for r in rows %}<tr><td class="l">{{ r.digest or "(unpublished)" }}</td><td class="l">{{ r.info_hash }}</td>
<td>{{ r.size if r.size is not none else "" }}</td><td>{{ r.seeders }}</td><td>{{ r.leechers }}</td>
<td>{{ r.completed }}</td><td>{{ r.ago }}</td></tr>
{% endfor %}</table></body></html>
"""


@bp.get("/")
def index():
    rows = swarm_rows()
    now = time.time()
    for r in rows:
        r["ago"] = f"{max(0, now - r['last_announce']):.0f} s ago" if r["last_announce"] else "never"
    # render_template_string autoescapes: nothing a client sent reaches the page raw
    html = render_template_string(_PAGE, rows=rows, seeders=sum(r["seeders"] for r in rows),
                                  leechers=sum(r["leechers"] for r in rows))
    return Response(html, mimetype="text/html")


@bp.get("/metrics")
def metrics():
    t = tracker()
    live = t.store.swarms(time.time())
    t.metrics.swarms.set(sum(1 for s in live if s.seeders or s.leechers))
    t.metrics.peers.labels("seeder").set(sum(s.seeders for s in live))
    t.metrics.peers.labels("leecher").set(sum(s.leechers for s in live))
    t.metrics.published.set(len(t.published()))
    return Response(t.metrics.render(), mimetype="text/plain; version=0.0.4")
