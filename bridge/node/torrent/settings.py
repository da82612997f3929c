"""Session settings for a private layer swarm, as a plain dict (no libtorrent import).

Kept apart from the session so the benchmark's raw libtorrent sessions and
our peers run with exactly the same knobs (the ``[session]`` configuration section).
"""
from __future__ import annotations

from layerswarm.bridge.config import BudgetSection, SessionSection


def listen_interfaces(cfg: SessionSection, secure: bool = False) -> str:
    """The peer sockets: plain, and in secure fleet mode an SSL one too (the ``s`` suffix)."""
    return f"{cfg.peer_listen},{cfg.peer_ssl_listen}s" if secure else cfg.peer_listen


def budget_settings(upload: int | None, download: int | None) -> dict:
    """libtorrent's side of the host budgets (node/budget.py moves the upload limit as it goes).

    The limits bind peers in libtorrent's global class; the session puts LAN peers there too
    (session.py), else they would be exempt."""
    s = {"upload_rate_limit": upload or 0, "download_rate_limit": download or 0}
    if upload:
        # libtorrent hands out quota once per tick, so bytes leave in bursts: with the default 500 ms
        # 1 s windows swung 0.4-1.8x a fixed limit.  A short tick makes the bursts small; the budget
        # controller (node/budget.py) does the rest.  (A smaller send buffer, 128 KiB, made them smaller
        # still but held each peer to 128 KiB per two ticks: 3 leechers got 0.75 of the budget.)
        s["tick_interval"] = 25
    return s


def disk_io_constructor(cfg: SessionSection) -> str:
    """The disk back-end, by the name libtorrent's Python bindings take for session_params."""
    return f"{cfg.disk_io}_disk_io_constructor"


def settings_pack(cfg: SessionSection, secure: bool = False, budgets: BudgetSection | None = None) -> dict:
    s = {
        "listen_interfaces": listen_interfaces(cfg, secure),
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
        # Piece picking for a fleet that starts together (scripts/bench_rollout.py, N=8 raw and warm):
        # short request queues at the uploader (see SessionSection.peer_request_queue); rarest-first from
        # the first piece (libtorrent picks its first 4 at random and finishes partial pieces first: all 8
        # hosts fetched the same first pieces from the seeder); no "whole pieces" mode (at these rates it
        # picked up to 8 MiB of adjacent pieces at once, so every leecher fetched the same runs, in order).
        "max_allowed_in_request_queue": cfg.peer_request_queue,
        "initial_picker_threshold": 0,
        "whole_pieces_threshold": 0,
        "connections_limit": cfg.connections_limit,
        "listen_queue_size": cfg.listen_queue_size,
        # Announce to every configured tracker, each on its own schedule: a dead replica's errors and
        # back-off never hold up the announce to a live one (by default a tier's trackers are tried one
        # after another, and a silent one costs its timeout first).  Replicas share one store, so the
        # extra announces record the same peer: one request per interval per tracker.
        "announce_to_all_trackers": True,
        "announce_to_all_tiers": True,
        # A layer that is wanted right now should start transferring at once.
        "connection_speed": 200,
        "torrent_connect_boost": 50,
        "peer_connect_timeout": 5,
        # Our own stall detection decides when to give up; keep libtorrent's short.
        "request_timeout": 10,
        "piece_timeout": 5,
        # Kept open: a download gated on its first pieces (StreamSection.first_piece_gate) is "finished"
        # for a moment when they both arrive before the gate opens, and closing redundant connections
        # then dropped its seeds for good (the download stalled, then went to the origin).
        "close_redundant_connections": False,
    }
    s["min_announce_interval"] = cfg.min_announce_interval
    if budgets is not None:
        s.update(budget_settings(budgets.upload_budget, budgets.download_budget))
    s.update(cfg.lt_settings)   # tuning: raw libtorrent settings from the configuration, applied last
    return s
