"""In-process store: the default, for one tracker process (one gunicorn worker).

One lock guards everything; every operation is O(numwant) or O(1) amortized,
so holding it is cheap.  Each swarm keeps its peers in an OrderedDict ordered
by last announce (expired peers are popped off the front) and two index-able
pools, seeders and leechers, that random samples are drawn from without
copying the swarm.
"""
from __future__ import annotations

import random
import threading
from collections import OrderedDict

from layerswarm.tracker.protocol import SwarmCounts
from layerswarm.tracker.storage.base import (CONFLICT, CREATED, EXISTS, REJECTED, UNQUARANTINED, LeaseTableFull,
                                             Limits, MetainfoRecord, Store, SwarmInfo, lease_step, relay_edges)

PURGE_BATCH = 64        # expired peers dropped per announce on a swarm
SWEEP_EVERY = 30.0      # seconds between sweeps of swarms nobody announces to


class _Pool:
    """A set with O(1) add/remove and O(k) random sampling."""

    __slots__ = ("items", "pos")

    def __init__(self):
        self.items: list = []
        self.pos: dict = {}

    def add(self, key) -> None:
        if key not in self.pos:
            self.pos[key] = len(self.items)
            self.items.append(key)

    def remove(self, key) -> None:
        i = self.pos.pop(key, None)
        if i is None:
            return
        last = self.items.pop()
        if i < len(self.items):
            self.items[i] = last
            self.pos[last] = i

    def __len__(self):
        return len(self.items)


class _Swarm:
    __slots__ = ("peers", "lanes", "seeders", "leechers", "completed", "last_announce", "published")

    def __init__(self):
        self.peers: dict = {}   # peer key (peer_id + ip) -> (addr, seeder, expires, ttl)
        # One lane per TTL (seeders and downloads are handed different intervals): within a lane the
        # oldest announce expires first, so expired peers are popped off the fronts.
        self.lanes: dict = {}   # ttl -> OrderedDict of peer keys, by last announce
        self.seeders = _Pool()
        self.leechers = _Pool()
        self.completed = 0
        self.last_announce = 0.0
        self.published = False  # a torrent with this info-hash is published (set by put_metainfo)

    def add(self, pid, addr, seeder: bool, now: float, ttl: float) -> None:
        self.peers[pid] = (addr, seeder, now + ttl, ttl)
        self.lanes.setdefault(ttl, OrderedDict())[pid] = None
        (self.seeders if seeder else self.leechers).add(pid)

    def drop(self, pid) -> None:
        _, seeder, _, ttl = self.peers.pop(pid)
        (self.seeders if seeder else self.leechers).remove(pid)
        lane = self.lanes[ttl]
        del lane[pid]
        if not lane:
            del self.lanes[ttl]

    def purge(self, now: float, limit: int | None = PURGE_BATCH) -> None:
        for lane in list(self.lanes.values()):
            while lane and (limit is None or limit > 0):
                pid = next(iter(lane))
                if self.peers[pid][2] > now:
                    break
                self.drop(pid)
                if limit is not None:
                    limit -= 1

    def counts(self) -> SwarmCounts:
        return SwarmCounts(len(self.seeders), len(self.leechers), self.completed)


def _bounded_put(table: OrderedDict, key, value, cap: int) -> None:
    """Insert as most recently used; drop the least recently used entries beyond ``cap``."""
    table[key] = value
    table.move_to_end(key)
    while len(table) > cap:
        table.popitem(last=False)


class MemoryStore(Store):
    def __init__(self, limits: Limits | None = None):
        self.limits = limits or Limits()
        self._lock = threading.Lock()
        # Every table is an OrderedDict in least-recently-used order, bounded by self.limits.
        self._swarms: OrderedDict = OrderedDict()       # info-hash raw -> _Swarm, by last announce
        self._metainfo: OrderedDict = OrderedDict()     # Digest -> {kind: MetainfoRecord}
        self._quarantined: OrderedDict = OrderedDict()  # (Digest, info-hash raw) -> True
        self._reports: OrderedDict = OrderedDict()      # (Digest, info-hash raw) -> set of hosts
        self._manifests: OrderedDict = OrderedDict()    # Digest -> (content type, bytes)
        self._leases: dict = {}                         # Digest -> lease state (see lease_step)
        self._relaying: dict = {}                       # source host -> {(Digest, child): expiry}: relay load
        self._next_sweep = 0.0

    # -- peers --------------------------------------------------------------
    def announce(self, req, ttl, now):
        with self._lock:
            if now >= self._next_sweep:
                self._sweep(now)
            sw = self._swarms.get(req.info_hash)
            if sw is None:
                if req.event == "stopped":
                    return [], SwarmCounts(), False
                sw = _Swarm()
                _bounded_put(self._swarms, req.info_hash, sw, self.limits.max_swarms)
            else:
                self._swarms.move_to_end(req.info_hash)
            sw.purge(now)
            sw.last_announce = now
            pid = req.peer_key
            old = sw.peers.get(pid)
            if old is not None:
                sw.drop(pid)
            # a completion: the event, or a known leecher now reporting nothing left
            # (aria2c with --seed-time=0 goes straight to "stopped")
            if (req.event == "completed" and not (old and old[1])) or (old and not old[1] and req.left == 0):
                sw.completed += 1
            if req.event == "stopped":
                counts = sw.counts()
                if not sw.peers and not sw.completed and not sw.published:
                    del self._swarms[req.info_hash]
                return [], counts, sw.published
            seeder = req.left == 0
            sw.add(pid, req.addr, seeder, now, ttl)
            return self._sample(sw, req, seeder), sw.counts(), sw.published

    @staticmethod
    def _sample(sw: _Swarm, req, seeder: bool) -> list:
        want = req.numwant
        if want <= 0:
            return []
        pools = (sw.leechers.items,) if seeder else (sw.seeders.items, sw.leechers.items)
        total = sum(len(p) for p in pools)
        picks = random.sample(range(total), min(total, want + 1))  # +1: room to skip ourselves
        out = []
        first = len(pools[0])
        for i in picks:
            pid = pools[0][i] if i < first else pools[1][i - first]
            if pid == req.peer_key:
                continue
            addr = sw.peers[pid][0]
            if addr == req.addr:
                continue  # same host:port under another peer id: still ourselves
            out.append((pid, addr))
            if len(out) == want:
                break
        return out

    def _sweep(self, now):
        self._next_sweep = now + SWEEP_EVERY
        idle_before = now - self.limits.idle_swarm_ttl
        for ih in list(self._swarms):
            sw = self._swarms[ih]
            sw.purge(now, None)
            if not sw.peers and (not (sw.completed or sw.published) or sw.last_announce < idle_before):
                del self._swarms[ih]
        for d in [d for d, st in self._leases.items() if st["expires"] <= now]:
            del self._leases[d]
        self._relay_load(list(self._relaying), now)   # drops expired edges and hosts left with none

    def scrape(self, info_hashes, now):
        with self._lock:
            if info_hashes is None:
                self._sweep(now)
                return {ih: sw.counts() for ih, sw in self._swarms.items()}
            out = {}
            for ih in info_hashes:
                sw = self._swarms.get(ih)
                if sw is not None:
                    sw.purge(now, None)
                out[ih] = sw.counts() if sw else SwarmCounts()
            return out

    def swarms(self, now):
        with self._lock:
            self._sweep(now)
            return [SwarmInfo(ih, len(sw.seeders), len(sw.leechers), sw.completed, sw.last_announce)
                    for ih, sw in self._swarms.items() if sw.peers or sw.completed]

    # -- metainfo -----------------------------------------------------------
    def put_metainfo(self, rec: MetainfoRecord, lift_quarantine=False):
        with self._lock:
            key = (rec.digest, rec.info_hash.raw)
            quarantined = key in self._quarantined
            if quarantined and not lift_quarantine:
                return REJECTED, None
            kinds = self._metainfo.get(rec.digest, {})
            cur = kinds.get(rec.kind)
            if cur is None:
                kinds[rec.kind] = rec
                _bounded_put(self._metainfo, rec.digest, kinds, self.limits.max_torrents)
                self._mark_published(rec.info_hash.raw, True, rec.published_at)
                if quarantined:
                    del self._quarantined[key]
                    return UNQUARANTINED, rec.info_hash
                return CREATED, rec.info_hash
            if cur.info_hash == rec.info_hash:
                self._mark_published(rec.info_hash.raw, True, rec.published_at)   # a seeder gave it again
                return EXISTS, cur.info_hash
            return CONFLICT, cur.info_hash

    def _mark_published(self, ih: bytes, published: bool, now: float) -> None:
        """Tell the swarm whether its torrent is published (announces pass it on to seeders); a swarm
        nobody announced to yet is made, and kept like counters (idle_swarm_ttl).  A torrent evicted
        from a full table stays marked: its seeders are not asked to bring it back."""
        sw = self._swarms.get(ih)
        if sw is None:
            if not published:
                return
            sw = _Swarm()
            sw.last_announce = now
            _bounded_put(self._swarms, ih, sw, self.limits.max_swarms)
        sw.published = published

    def get_metainfo(self, digest, kind):
        with self._lock:
            return self._metainfo.get(digest, {}).get(kind)

    def list_metainfo(self):
        with self._lock:
            return [(r.digest, r.kind, r.info_hash, r.size) for kinds in self._metainfo.values()
                    for r in kinds.values()]

    def drop_metainfo(self, digest, kind):
        with self._lock:
            self._drop(digest, kind)

    def _drop(self, digest, kind):
        kinds = self._metainfo.get(digest, {})
        rec = kinds.pop(kind, None)
        if rec is not None:
            self._mark_published(rec.info_hash.raw, False, 0.0)
        if not kinds:
            self._metainfo.pop(digest, None)

    def report(self, digest, info_hash, host, trusted, threshold):
        with self._lock:
            key = (digest, info_hash.raw)
            if key in self._quarantined:
                return True
            hosts = self._reports.get(key)
            if hosts is None:
                hosts = set()
                _bounded_put(self._reports, key, hosts, self.limits.max_reports)
            if len(hosts) < self.limits.max_report_hosts:
                hosts.add(host)
            cur = next((r for r in self._metainfo.get(digest, {}).values() if r.info_hash == info_hash), None)
            if cur is None:
                return False  # not a published torrent: remembered, nothing to quarantine
            if trusted or len(hosts) >= threshold:
                self._drop(digest, cur.kind)
                self._reports.pop(key, None)
                _bounded_put(self._quarantined, key, True, self.limits.max_reports)
                return True
            return False

    # -- manifests ----------------------------------------------------------
    def put_manifest(self, digest, content_type, data):
        with self._lock:
            if digest in self._manifests:
                self._manifests.move_to_end(digest)
                return False
            _bounded_put(self._manifests, digest, (content_type, bytes(data)), self.limits.max_manifests)
            return True

    def get_manifest(self, digest):
        with self._lock:
            return self._manifests.get(digest)

    # -- leases -------------------------------------------------------------
    def acquire_lease(self, digest, host, url, ttl, fanout, now):
        with self._lock:
            if digest not in self._leases and len(self._leases) >= self.limits.max_leases:
                for d in [d for d, st in self._leases.items() if st["expires"] <= now]:
                    del self._leases[d]
                if len(self._leases) >= self.limits.max_leases:
                    raise LeaseTableFull(f"{len(self._leases)} live leases")
            state, answer = lease_step(self._leases.get(digest), host, url, ttl, fanout, now,
                                       self.limits.max_relays, lambda hosts: self._relay_load(hosts, now))
            self._leases[digest] = state
            if answer["role"] == "relay":
                for source, child in relay_edges(state, host):
                    self._relaying.setdefault(source, {})[(digest, child)] = state["expires"]
            return answer

    def renew_lease(self, digest, host, ttl, now):
        with self._lock:
            st = self._leases.get(digest)
            if st is None or st["expires"] <= now or st["holder"]["host"] != host:
                return False
            st["expires"] = now + ttl
            for source, child in relay_edges(st):   # its uploads count as long as the lease lives
                self._relaying.setdefault(source, {})[(digest, child)] = st["expires"]
            return True

    def release_lease(self, digest, host, now):
        with self._lock:
            st = self._leases.get(digest)
            if st is None or st["expires"] <= now:
                self._leases.pop(digest, None)
                return False
            if st["holder"]["host"] == host:
                self._drop_edges(digest, relay_edges(st))
                del self._leases[digest]
                return True
            self._drop_edges(digest, relay_edges(st, host))
            before = len(st["relays"])
            st["relays"] = [r for r in st["relays"] if r["host"] != host]
            return len(st["relays"]) != before

    def _relay_load(self, hosts, now) -> dict:
        """Each host's uploads in live lease trees (see lease_step); expired ones are dropped on the way."""
        out = {}
        for h in hosts:
            edges = self._relaying.get(h)
            if edges is None:
                continue
            for k in [k for k, expires in edges.items() if expires <= now]:
                del edges[k]
            if edges:
                out[h] = len(edges)
            else:
                del self._relaying[h]
        return out

    def _drop_edges(self, digest, edges) -> None:
        for source, child in edges:
            mine = self._relaying.get(source)
            if mine is not None:
                mine.pop((digest, child), None)
                if not mine:
                    del self._relaying[source]
