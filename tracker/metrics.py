"""Prometheus metrics, one registry per app (tests build many apps).

With several gunicorn workers each worker exposes its own counters; swarm
gauges come from the shared store and are the same everywhere.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from layerswarm.tracker.protocol import EVENTS


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry(auto_describe=True)
        announces = Counter("layerswarm_tracker_announces", "Announces answered, by event", ["event"], registry=r)
        # children bound once: labels() lookups are measurable on the hot path
        self.announce = {e: announces.labels(e or "none") for e in set(EVENTS.values())}
        self.unpublished = Counter("layerswarm_tracker_unpublished_seeders", "Seeders of a torrent not published "
                                   "here, asked to publish it (announce warning)", registry=r)
        self.failures = Counter("layerswarm_tracker_failures", "Requests answered with a failure reason",
                                ["endpoint"], registry=r)
        self.scrapes = Counter("layerswarm_tracker_scrapes", "Scrapes answered", registry=r)
        self.metainfo_puts = Counter("layerswarm_tracker_metainfo_puts", "Metainfo PUTs, by outcome",
                                     ["result"], registry=r)
        self.reports = Counter("layerswarm_tracker_reports", "Bad-torrent reports received", registry=r)
        self.quarantines = Counter("layerswarm_tracker_quarantines", "Torrents quarantined", registry=r)
        self.leases = Counter("layerswarm_tracker_lease_requests", "Lease requests, by answer", ["role"],
                              registry=r)
        self.swarms = Gauge("layerswarm_tracker_swarms", "Swarms with peers", registry=r)
        self.peers = Gauge("layerswarm_tracker_peers", "Peers, by kind", ["kind"], registry=r)
        self.published = Gauge("layerswarm_tracker_published_torrents", "Published layer torrents", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
