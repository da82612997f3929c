"""Session settings for a private layer swarm, as a plain dict (no libtorrent import).

Kept apart from the session so the benchmark's raw libtorrent sessions and
our peers run with exactly the same knobs.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

# Benchmark/tuning hook: a JSON object of libtorrent settings applied last
# (e.g. LAYERSWARM_LT_SETTINGS='{"seed_choking_algorithm": 1}').
ENV_OVERRIDES = "LAYERSWARM_LT_SETTINGS"


@dataclass
class SessionConfig:
    listen: str = "0.0.0.0:6881"          # listen_interfaces; tests use 127.0.0.1:<free port>
    # Transport: TCP only by default.  Measured on loopback (scripts/bench_peer.py
    # --utp and DESIGN §5) uTP was several times slower for the same swarm.
    utp: bool = False
    alert_queue_size: int = 100_000       # read_piece_alerts carry piece data: never drop them
    stop_tracker_timeout: int = 1         # teardown waits this long for event=stopped
    unchoke_slots: int = 32               # a fresh layer's seeder serves a whole rollout wave at once
    connections_limit: int = 400
    # Accept backlog of the peer listen socket (libtorrent's default is 5).  A fleet
    # connects to a new layer's peers all at once: N=12 warm rollout saw 9 listen
    # overflows (SYNs dropped, retried after 1 s) with 5, none with 256.
    listen_queue_size: int = 256
    # libtorrent never re-announces more often than this (its default is 300 s).
    # The tracker expires peers after ~2 intervals, so a floor above the
    # tracker's interval makes seeders vanish from it: let the tracker decide.
    min_announce_interval: int = 5
    user_agent: str = "layerswarm/0.1"


def settings_pack(cfg: SessionConfig) -> dict:
    s = {
        "listen_interfaces": cfg.listen,
        "user_agent": cfg.user_agent,
        # Private swarm: nothing is discovered or announced outside the tracker.
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "webtorrent_stun_server": "",
        # Many peers share one address behind NAT (and on loopback in tests).
        "allow_multiple_connections_per_ip": True,
        # Every stored layer is seeded: no auto-managed queue caps (we also clear
        # auto_managed per torrent; these limits are belt and braces).
        "active_seeds": -1,
        "active_downloads": -1,
        "active_limit": -1,
        "dont_count_slow_torrents": False,
        "alert_queue_size": cfg.alert_queue_size,
        "stop_tracker_timeout": cfg.stop_tracker_timeout,
        "enable_outgoing_utp": cfg.utp,
        "enable_incoming_utp": cfg.utp,
        "enable_outgoing_tcp": True,
        "enable_incoming_tcp": True,
        "unchoke_slots_limit": cfg.unchoke_slots,
        "connections_limit": cfg.connections_limit,
        "listen_queue_size": cfg.listen_queue_size,
        # Announce to every tracker replica in the list, not just the first that answers.
        "announce_to_all_trackers": True,
        "announce_to_all_tiers": True,
        # A layer that is wanted right now should start transferring at once.
        "connection_speed": 200,
        "torrent_connect_boost": 50,
        "peer_connect_timeout": 5,
        # Our own stall detection decides when to give up; keep libtorrent's short.
        "request_timeout": 10,
        "piece_timeout": 5,
        "close_redundant_connections": True,
    }
    s["min_announce_interval"] = cfg.min_announce_interval
    extra = os.environ.get(ENV_OVERRIDES)
    if extra:
        s.update(json.loads(extra))
    return s
