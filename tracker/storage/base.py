"""The one storage contract every backend (memory, Redis) implements.

Peers, metainfo, reports, manifests and fetch leases.  Backends keep the
per-announce cost bounded by ``numwant``, not by swarm size: counts are kept
incrementally and peers are sampled, never copied wholesale.  The lease tree
rule lives here once (:func:`lease_step`) so both backends agree on it.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass

from layerswarm.bridge.format.digest import Digest, InfoHash
from layerswarm.tracker.protocol import AnnounceRequest


@dataclass(frozen=True)
class MetainfoRecord:
    digest: Digest
    info_hash: InfoHash
    size: int
    format: int
    kind: str   # layertorrent.torrent_kind: open mode, or SSL torrents of one fleet CA
    data: bytes
    published_at: float


@dataclass(frozen=True)
class SwarmInfo:
    info_hash: bytes
    seeders: int
    leechers: int
    completed: int
    last_announce: float


@dataclass(frozen=True)
class Limits:
    """Bounds on what callers can make a store hold; when full, the least recently used entry goes
    (new leases are refused instead: evicting a live lease would send its relays to the origin)."""

    max_swarms: int = 100_000
    idle_swarm_ttl: float = 3600.0    # a swarm without peers keeps its counters this long
    max_torrents: int = 100_000
    max_manifests: int = 100_000
    max_leases: int = 10_000
    max_relays: int = 1_000           # relays in one lease tree; later askers fetch from the origin
    max_reports: int = 10_000         # (digest, info-hash) report records and quarantine entries
    max_report_hosts: int = 1_000     # distinct hosts remembered per report record


class LeaseTableFull(Exception):
    """Every lease slot holds a live lease: the caller fetches from the origin without one."""


# put_metainfo outcomes
CREATED, EXISTS, CONFLICT, REJECTED = "created", "exists", "conflict", "quarantined"
UNQUARANTINED = "unquarantined"   # created, and its quarantine lifted


RELAY_DEPTH_SLACK = 2        # levels a relay tree may grow below a breadth-first tree of its size
RELAY_CANDIDATES = 32        # open nodes whose relay load is read per lease request


def lease_step(state: dict | None, host: str, url: str, ttl: float, fanout: int, now: float,
               max_relays: int = Limits.max_relays, relay_load=None):
    """Apply one lease request to ``state``; returns (new state, answer).

    One holder fetches from the origin; every other requester is handed a
    source to stream from: the holder or an earlier relay with fewer than
    ``fanout`` children.  Asking again gives the same answer.  Past
    ``max_relays`` relays the answer is ``origin``.

    Without ``relay_load`` the tree is breadth-first (earliest open node).
    With it (``relay_load(hosts) -> {host: children across live leases}``)
    the open node with the fewest children in all live trees is chosen,
    among nodes no deeper than a breadth-first tree of this size plus
    ``RELAY_DEPTH_SLACK - 1`` (so the tree stays within that many levels of
    breadth-first).  Why: a fleet asks for an image's layers at once, so
    arrival order alone builds the same tree for every layer and the same
    few hosts send every layer ``fanout`` times, saturating their uplinks
    while the rest send nothing.
    """
    if state is None or state["expires"] <= now:
        state = {"holder": {"host": host, "url": url}, "expires": now + ttl, "relays": []}
        return state, {"role": "holder", "ttl": ttl}
    holder = state["holder"]
    if holder["host"] == host:
        return state, {"role": "holder", "ttl": max(0.0, state["expires"] - now)}
    nodes = {holder["host"]: holder}
    for r in state["relays"]:
        if r["host"] == host:
            src = nodes.get(r["source"], holder)
            return state, {"role": "relay", "source": {"host": src["host"], "url": src["url"]}}
        nodes[r["host"]] = r
    if len(state["relays"]) >= max_relays:
        return state, {"role": "origin"}   # the tree is full: fetch from the origin, no relay
    children: dict = {}
    depth = {holder["host"]: 0}
    for r in state["relays"]:
        children[r["source"]] = children.get(r["source"], 0) + 1
        depth[r["host"]] = depth.get(r["source"], 0) + 1   # a released source counts as the holder
    open_nodes = [n for n in [holder, *state["relays"]] if children.get(n["host"], 0) < fanout]
    if relay_load is None or fanout < 2:
        source = open_nodes[0]
    else:
        deepest = _breadth_first_depth(len(nodes), fanout) + RELAY_DEPTH_SLACK - 1
        near = sorted((n for n in open_nodes if depth[n["host"]] <= deepest), key=lambda n: depth[n["host"]])
        near = near[:RELAY_CANDIDATES] or open_nodes[:1]
        load = relay_load([n["host"] for n in near])
        source = min(near, key=lambda n: load.get(n["host"], 0))   # ties: the shallowest, earliest
    state["relays"].append({"host": host, "url": url, "source": source["host"]})
    return state, {"role": "relay", "source": {"host": source["host"], "url": source["url"]}}


def _breadth_first_depth(size: int, fanout: int) -> int:
    """Depth of the deepest node of a breadth-first tree of ``size`` nodes, ``fanout`` children each."""
    depth, level, total = 0, 1, 1
    while total < size:
        level *= fanout
        total += level
        depth += 1
    return depth


def relay_edges(state: dict | None, host: str | None = None) -> list:
    """(source, child) of the relays in ``state`` (only ``host``'s own when given): the uploads
    :func:`lease_step` counts as each source's relay load."""
    if state is None:
        return []
    return [(r["source"], r["host"]) for r in state["relays"] if host is None or r["host"] == host]


class Store(abc.ABC):
    # -- peers --------------------------------------------------------------
    @abc.abstractmethod
    def announce(self, req: AnnounceRequest, ttl: float, now: float) -> tuple:
        """Record the peer (or drop it on ``stopped``); return (peers, SwarmCounts, published).

        ``peers`` is at most ``req.numwant`` (peer key, compact addr) pairs,
        never the announcing peer, and no seeders when it is a seeder.
        This peer is gone if it does not announce again within ``ttl`` seconds
        (each peer its own: seeders are handed a longer interval).
        ``published``: a torrent with this info-hash was published here and
        not dropped or quarantined since (one marked when published stays
        marked if the table evicts it).
        """

    @abc.abstractmethod
    def scrape(self, info_hashes: list | None, now: float) -> dict:
        """{info_hash: SwarmCounts} for the given hashes (all known when None)."""

    @abc.abstractmethod
    def swarms(self, now: float) -> list:
        """SwarmInfo of every swarm with peers or a completion on record."""

    # -- metainfo -----------------------------------------------------------
    @abc.abstractmethod
    def put_metainfo(self, rec: MetainfoRecord, lift_quarantine: bool = False) -> tuple:
        """First valid write of its kind wins: (CREATED|EXISTS|CONFLICT|REJECTED|UNQUARANTINED, current
        info_hash or None).  A digest holds one torrent per kind; torrents of other kinds never conflict.

        A quarantined torrent is REJECTED, unless ``lift_quarantine`` (a host
        that verified the blob built it): then it is stored as if new and its
        quarantine entry goes (UNQUARANTINED).  Its report records went when it
        was quarantined, so reports count from zero again.  While another
        torrent holds the digest it is a CONFLICT and stays quarantined.
        """

    @abc.abstractmethod
    def get_metainfo(self, digest: Digest, kind: str) -> MetainfoRecord | None: ...

    @abc.abstractmethod
    def list_metainfo(self) -> list:
        """[(digest, kind, info_hash, size)] of every published torrent."""

    @abc.abstractmethod
    def drop_metainfo(self, digest: Digest, kind: str) -> None:
        """Forget the torrent of this kind for ``digest`` (one the tracker no longer accepts)."""

    @abc.abstractmethod
    def report(self, digest: Digest, info_hash: InfoHash, host: str, trusted: bool, threshold: int) -> bool:
        """Record a bad-torrent report; quarantine when trusted or ``threshold`` distinct hosts.

        Returns True when the published torrent with ``info_hash`` (of whichever
        kind) is (now) quarantined: no longer served, refused when published
        again (unless the publish lifts the quarantine, see :meth:`put_metainfo`),
        and its kind free for a new publish.
        """

    # -- manifests ----------------------------------------------------------
    @abc.abstractmethod
    def put_manifest(self, digest: Digest, content_type: str, data: bytes) -> bool:
        """Store (content already verified); True if new."""

    @abc.abstractmethod
    def get_manifest(self, digest: Digest) -> tuple | None:
        """(content_type, data) or None."""

    # -- leases -------------------------------------------------------------
    @abc.abstractmethod
    def acquire_lease(self, digest: Digest, host: str, url: str, ttl: float, fanout: int, now: float) -> dict: ...

    @abc.abstractmethod
    def renew_lease(self, digest: Digest, host: str, ttl: float, now: float) -> bool: ...

    @abc.abstractmethod
    def release_lease(self, digest: Digest, host: str, now: float) -> bool:
        """The holder drops the whole lease (relays re-ask); a relay leaves the tree."""

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass
