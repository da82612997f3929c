"""Tracker settings: one dataclass, filled from defaults, env and CLI flags."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 6969
    store: str = "memory"          # "memory" or a redis:// URL
    publish_token: str | None = None
    interval: int = 120            # announce interval handed to clients (s)
    min_interval: int | None = None  # defaults to interval // 2
    peer_ttl: int | None = None    # defaults to 2 * interval: one missed announce is tolerated
    numwant_default: int = 50
    numwant_max: int = 200
    allow_ip_param: bool = False   # trust the `ip` query parameter (only behind a NAT you control)
    quarantine_reports: int = 3    # distinct untrusted hosts needed to quarantine a torrent
    lease_ttl: int = 30
    lease_ttl_max: int = 600
    # Each relay streams a cold layer at the origin's rate to this many children: 2 keeps that
    # within a host's uplink when hosts have ~2x the origin's bandwidth.  Measured (bench_rollout,
    # N=12, 40 MB/s hosts, 20 MB/s origin): cold/bound 1.17 and 1.16 with 2, 1.28 and 1.44 with 3.
    relay_fanout: int = 2
    workers: int = 1
    threads: int = 16
    max_query: int = 4096          # bytes of announce/scrape query string
    max_scrape: int = 100          # info-hashes per scrape request
    max_metainfo: int = 16 << 20   # a 1 TiB layer with 4 MiB pieces is ~5 MiB of piece hashes
    max_manifest: int = 4 << 20

    @property
    def effective_min_interval(self) -> int:
        return self.min_interval if self.min_interval is not None else max(1, self.interval // 2)

    @property
    def effective_peer_ttl(self) -> int:
        return self.peer_ttl if self.peer_ttl is not None else 2 * self.interval

    @classmethod
    def from_mapping(cls, values: dict | None) -> "Config":
        """Defaults, then LAYERSWARM_PUBLISH_TOKEN from the environment, then ``values``."""
        cfg = cls(publish_token=os.environ.get("LAYERSWARM_PUBLISH_TOKEN") or None)
        known = {f.name for f in fields(cls)}
        values = {k.lower(): v for k, v in (values or {}).items() if k.lower() in known and v is not None}
        return replace(cfg, **values)
