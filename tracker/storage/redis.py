"""Redis store: several tracker processes (workers, replicas) share one state.

Per swarm (hex info-hash ``H``): ``ls:{H}:s`` and ``ls:{H}:l`` hashes peer key (peer_id + ip) ->
compact addr for seeders and leechers (HLEN gives the counts in O(1),
HRANDFIELD samples without reading the swarm), ``ls:{H}:x`` a sorted set
peer key by expiry (expired peers are popped from its low end), ``ls:{H}:c``
the completed counter, last announce and whether a torrent is published.  Per
digest ``D``: ``ls:{D}:m`` one hash for the torrents of every kind (fields
``<kind>/info_hash``, ``<kind>/data``, ..., so a report finds its torrent's kind
inside the one key), ``ls:{D}:q`` its quarantined info-hashes, ``ls:{D}:r:<ih>``
who reported one, ``ls:{D}:mf`` a manifest, ``ls:{D}:lease`` a cold-fetch lease.

An announce is one Lua script (one round trip with its index update, atomic).
First-write-wins publishing and quarantine are Lua too; leases are optimistic
WATCH/MULTI transactions around the shared :func:`lease_step` rule.

Redis Cluster: the ``{...}`` hash tags put a swarm's keys, or a digest's, in one
slot, and every script and transaction touches the keys it is given and no
other, all of one tag.  The indexes that bound and list the tables
(``ls:swarms``, ...) are keys of their own, updated by separate commands: a
script returns what it changed, the store then updates the index (in the same
pipeline where it can) and deletes what the index evicted.  Index and table
may disagree for a moment (a crash between the two), which costs at most an
entry listed or bounded late.
"""
from __future__ import annotations

import json
import random
import time

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

from layerswarm.bridge.format.digest import Digest, InfoHash
from layerswarm.tracker.errors import StoreUnavailable
from layerswarm.tracker.protocol import SwarmCounts
from layerswarm.tracker.storage.base import (LeaseTableFull, Limits, MetainfoRecord, Store, SwarmInfo, lease_step,
                                             relay_edges)
from layerswarm.tracker.storage.spec import StoreOptions, StoreSpec, parse_store

SWARM_INDEX = "ls:swarms"                # zset info-hash hex by last announce
METAINFO_INDEX = "ls:metainfo:by-time"   # zset published digest by publish time
MANIFEST_INDEX = "ls:manifests"          # zset manifest digest by store time
REPORT_INDEX = "ls:reports"              # zset "<digest> <info-hash>" of report records by first report
QUARANTINE_INDEX = "ls:quarantined"      # zset digest with a quarantine set, by time
LEASE_INDEX = "ls:leases"                # zset digest with a lease, by expiry
RETRY_STEP = 0.25                        # seconds between attempts while the store is unreachable
MAX_LISTED = 10_000                      # swarms listed by /swarms and scrape-all
_FIELDS = ("info_hash", "size", "format", "data", "published_at")   # of each torrent in ls:{D}:m


def swarm_keys(ih_hex: str) -> list:
    return [f"ls:{{{ih_hex}}}:{k}" for k in "slxc"]


def digest_key(digest, what: str) -> str:
    """A key of digest ``D``: ``ls:{D}:<what>`` (one Cluster slot per digest)."""
    return f"ls:{{{digest}}}:{what}"


def relay_key(host: str) -> str:
    """A host's uploads in live lease trees (its relay load, see lease_step): a zset of
    "<digest> <child>" scored by the lease's expiry, one Cluster slot per host."""
    return f"ls:{{h:{host}}}:relaying"


# Add member ARGV[2] to index KEYS[1] at score ARGV[1]; beyond ARGV[3] members, pop and return the oldest
# (member, score, ...): the caller deletes their keys, which live in other slots.
_TOUCH_INDEX = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
local n = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
if n > 0 then return redis.call('ZPOPMIN', KEYS[1], n) end
return {}
"""

_ANNOUNCE = """
local function extend(k, secs)   -- EXPIRE that never shortens
  if redis.call('TTL', k) < secs then redis.call('EXPIRE', k, secs) end
end
local s, l, x, c = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local pid, addr, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local event, want, seeder = ARGV[5], tonumber(ARGV[6]), ARGV[7] == '1'
local idle = tonumber(ARGV[8])
local old = redis.call('ZRANGEBYSCORE', x, '-inf', now, 'LIMIT', 0, 64)
if #old > 0 then
  redis.call('HDEL', s, unpack(old)); redis.call('HDEL', l, unpack(old)); redis.call('ZREM', x, unpack(old))
end
local was_seeder = redis.call('HDEL', s, pid) == 1
local was_leecher = redis.call('HDEL', l, pid) == 1
-- a completion: the event, or a known leecher now reporting nothing left
if (event == 'completed' and not was_seeder) or (was_leecher and seeder) then
  redis.call('HINCRBY', c, 'completed', 1)
end
local out = {}
if event == 'stopped' then
  redis.call('ZREM', x, pid)
else
  redis.call('HSET', seeder and s or l, pid, addr)
  redis.call('ZADD', x, now + ttl, pid)
  redis.call('HSET', c, 'last', ARGV[3])
  -- keys live as long as their longest-lived peer (seeders are handed longer TTLs than downloads)
  for _, k in ipairs({s, l, x}) do extend(k, math.ceil(ttl)) end
  extend(c, math.ceil(math.max(ttl, idle)))   -- counters outlive the peers by idle
  if want > 0 then
    local pools = seeder and {l} or {s, l}
    for _, pool in ipairs(pools) do
      local r = redis.call('HRANDFIELD', pool, want + 1, 'WITHVALUES')
      for i = 1, #r, 2 do
        if r[i] ~= pid and r[i + 1] ~= addr then out[#out + 1] = r[i]; out[#out + 1] = r[i + 1] end
      end
    end
  end
end
local published = redis.call('HGET', c, 'pub') and 1 or 0
return {out, redis.call('HLEN', s), redis.call('HLEN', l), tonumber(redis.call('HGET', c, 'completed') or '0'),
        published}
"""

# KEYS[1] a host's relay_key; ARGV[1] now, then (expiry, member) pairs to add or move: the expired go, and
# the key expires with its last edge.
_RELAY_EDGES = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for i = 2, #ARGV, 2 do redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1]) end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if #last > 0 then redis.call('PEXPIREAT', KEYS[1], math.ceil(tonumber(last[2]) * 1000) + 1) end
"""

_PURGE = """
local s, l, x = KEYS[1], KEYS[2], KEYS[3]
while true do
  local old = redis.call('ZRANGEBYSCORE', x, '-inf', ARGV[1], 'LIMIT', 0, 500)
  if #old == 0 then break end
  redis.call('HDEL', s, unpack(old)); redis.call('HDEL', l, unpack(old)); redis.call('ZREM', x, unpack(old))
end
local c = redis.call('HMGET', KEYS[4], 'completed', 'last')
local ns, nl = redis.call('HLEN', s), redis.call('HLEN', l)
if ns == 0 and nl == 0 and tonumber(c[2] or '0') < tonumber(ARGV[1]) - tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[4])   -- the peers left long ago: the counters go too
  return {0, 0, 0, '0'}
end
return {ns, nl, tonumber(c[1] or '0'), c[2] or '0'}
"""

# Shared Lua: drop the torrent of kind prefix K (kind .. '/') from metainfo hash M; returns its info-hash.
_DROP_KIND = """
local function drop_kind(m, k)
  local ih = redis.call('HGET', m, k .. 'info_hash')
  redis.call('HDEL', m, k .. 'info_hash', k .. 'size', k .. 'format', k .. 'data', k .. 'published_at')
  return ih
end
"""

# -> {status, current info-hash, 1 if the quarantine set emptied}
_PUT_METAINFO = """
local m, q = KEYS[1], KEYS[2]
local quarantined = redis.call('SISMEMBER', q, ARGV[1]) == 1
if quarantined and ARGV[6] ~= '1' then return {'quarantined', '', 0} end
local k = ARGV[7] .. '/'
local cur = redis.call('HGET', m, k .. 'info_hash')
if cur then
  if cur == ARGV[1] then return {'exists', cur, 0} end
  return {'conflict', cur, 0}
end
redis.call('HSET', m, k .. 'info_hash', ARGV[1], k .. 'size', ARGV[2], k .. 'format', ARGV[3],
           k .. 'data', ARGV[4], k .. 'published_at', ARGV[5])
if quarantined then
  redis.call('SREM', q, ARGV[1])   -- the set goes with its last member
  return {'unquarantined', ARGV[1], redis.call('EXISTS', q) == 0 and 1 or 0}
end
return {'created', ARGV[1], 0}
"""

# -> {dropped info-hash or false, 1 if the digest has no torrent left}
_DROP_METAINFO = _DROP_KIND + """
local ih = drop_kind(KEYS[1], ARGV[1] .. '/')
return {ih, redis.call('EXISTS', KEYS[1]) == 0 and 1 or 0}
"""

# -> {quarantined (1/0), 1 if this report made a new record, 1 if it quarantined now, 1 if no torrent left}
_REPORT = _DROP_KIND + """
local r, m, q = KEYS[1], KEYS[2], KEYS[3]
local ih, host, trusted, threshold = ARGV[1], ARGV[2], ARGV[3] == '1', tonumber(ARGV[4])
local max_hosts = tonumber(ARGV[5])
if redis.call('SISMEMBER', q, ih) == 1 then return {1, 0, 0, 0} end
local new = redis.call('EXISTS', r) == 0 and 1 or 0
if redis.call('SCARD', r) < max_hosts then redis.call('SADD', r, host) end
local kind   -- the kind prefix of the published torrent with this info-hash (HKEYS: no torrent bodies read)
for _, f in ipairs(redis.call('HKEYS', m)) do
  if string.sub(f, -10) == '/info_hash' and redis.call('HGET', m, f) == ih then kind = string.sub(f, 1, -10) end
end
if not kind then return {0, new, 0, 0} end
if trusted or redis.call('SCARD', r) >= threshold then
  drop_kind(m, kind)
  redis.call('DEL', r); redis.call('SADD', q, ih)
  return {1, new, 1, redis.call('EXISTS', m) == 0 and 1 or 0}
end
return {0, new, 0, 0}
"""


def connect(spec: StoreSpec, o: StoreOptions):
    """A client of the primary: the URL's server, whichever server the Sentinels name now, or a Cluster.

    redis-py's own retries are off: :meth:`RedisStore._call` retries for a
    bounded time instead, the same for every backend.
    """
    common = {"password": o.password, "username": spec.username, "health_check_interval": 30,
              "retry": Retry(NoBackoff(), 0), "socket_connect_timeout": 2,
              # a quarantine's WAIT blocks its connection up to wait_timeout
              "socket_timeout": max(5.0, o.wait_timeout + 2)}
    if spec.kind == "cluster":
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in spec.nodes], ssl=spec.tls,
                            max_connections=64, **common)
    common["max_connections"] = 256
    if spec.kind == "sentinel":
        asked = {"password": o.sentinel_password, "socket_timeout": 2, "socket_connect_timeout": 2}
        if spec.tls:
            asked["ssl"] = True
        sentinel = Sentinel(list(spec.nodes), sentinel_kwargs=asked)
        return sentinel.master_for(spec.service, db=spec.db, ssl=spec.tls, **common)
    return redis.Redis.from_url(spec.url, **common)


class RedisStore(Store):
    def __init__(self, spec: StoreSpec | str, limits: Limits | None = None, options: StoreOptions | None = None):
        self.limits = limits or Limits()
        self.options = options or StoreOptions()
        spec = parse_store(spec) if isinstance(spec, str) else spec
        self.cluster = spec.kind == "cluster"
        self.r = connect(spec, self.options)
        self._scripts = [self.r.register_script(s) for s in (_TOUCH_INDEX, _ANNOUNCE, _PURGE, _PUT_METAINFO,
                                                              _DROP_METAINFO, _REPORT, _RELAY_EDGES)]
        (self._touch_index, self._announce, self._purge, self._put_metainfo, self._drop_metainfo,
         self._report, self._relay_edges) = self._scripts

    def _call(self, fn, *a, **kw):
        """``fn(...)``, retried while the connection is lost for up to ``retry_for`` seconds: a Sentinel
        failover or a restart is waited out, then StoreUnavailable."""
        deadline = time.monotonic() + self.options.retry_for
        load = False
        while True:
            try:
                if load:   # batches send bare EVALSHA (_eval): a server that lacks the scripts gets them
                    for script in self._scripts:
                        self.r.script_load(script.script)
                return fn(*a, **kw)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if time.monotonic() + RETRY_STEP > deadline:
                    raise StoreUnavailable(f"redis: {exc.__class__.__name__}: {exc}") from exc
                time.sleep(RETRY_STEP)
            except redis.exceptions.NoScriptError as exc:
                if load and time.monotonic() > deadline:
                    raise StoreUnavailable("redis: the scripts vanish as soon as they are loaded") from exc
                load = True
            except redis.RedisError as exc:
                raise StoreUnavailable(f"redis: {exc.__class__.__name__}: {exc}") from exc

    def _batch(self, build) -> list:
        """The answers of the commands ``build(pipe)`` queues, sent as one pipeline (on a Cluster, one after
        another: its pipelines cannot carry scripts) and retried whole like one call (a pipeline is
        spent once executed, even when that failed)."""
        def run():
            pipe = self._pipe()
            build(pipe)
            return pipe.execute() if len(pipe) else []
        return self._call(run)

    def _pipe(self):
        return _Serial(self.r) if self.cluster else self.r.pipeline(transaction=False)

    def _touch(self, pipe, index: str, score: float, member: str, cap: int) -> None:
        """Queue an index update on ``pipe``; its answer (evicted members) goes to :meth:`_evict`."""
        _eval(pipe, self._touch_index, [index], [repr(score), member, cap])

    def _evict(self, popped, keys_of) -> None:
        """Delete the keys of index members a touch popped (``keys_of(member)`` -> keys)."""
        keys = [k for member in popped[0::2] for k in keys_of(member.decode())]

        def build(pipe):
            for k in keys:   # one DEL each: in a Cluster they live in as many slots
                pipe.delete(k)
        self._batch(build)

    def ping(self):
        return bool(self._call(self.r.ping))

    def close(self):
        self.r.close()

    # -- peers --------------------------------------------------------------
    def announce(self, req, ttl, now):
        ih = req.info_hash.hex()

        def build(pipe):
            _eval(pipe, self._announce, swarm_keys(ih),
                  [req.peer_key, req.addr, repr(now), repr(float(ttl)), req.event, req.numwant,
                   "1" if req.left == 0 else "0", self.limits.idle_swarm_ttl])
            if req.event != "stopped":
                self._touch(pipe, SWARM_INDEX, now, ih, self.limits.max_swarms)
        (out, ns, nl, done, published), *touched = self._batch(build)
        if touched and touched[0]:
            self._evict(touched[0], swarm_keys)
        peers = list(zip(out[0::2], out[1::2]))
        if len(peers) > req.numwant:
            peers = random.sample(peers, req.numwant)
        return peers, SwarmCounts(ns, nl, done), bool(published)

    def _counts(self, ih_hexes, now):
        def build(pipe):
            for h in ih_hexes:
                _eval(pipe, self._purge, swarm_keys(h), [repr(now), self.limits.idle_swarm_ttl])
        return self._batch(build)

    def scrape(self, info_hashes, now):
        if info_hashes is None:
            hexes = [h.decode() for h in self._call(self.r.zrevrange, SWARM_INDEX, 0, MAX_LISTED - 1)]
        else:
            hexes = [h.hex() for h in info_hashes]
        rows = self._counts(hexes, now)
        return {bytes.fromhex(h): SwarmCounts(ns, nl, done) for h, (ns, nl, done, _) in zip(hexes, rows)}

    def swarms(self, now):
        hexes = [h.decode() for h in self._call(self.r.zrevrange, SWARM_INDEX, 0, MAX_LISTED - 1)]
        out, dead = [], []
        for h, (ns, nl, done, last) in zip(hexes, self._counts(hexes, now)):
            if ns or nl or done:
                out.append(SwarmInfo(bytes.fromhex(h), ns, nl, done, float(last)))
            else:
                dead.append(h)
        if dead:
            self._call(self.r.zrem, SWARM_INDEX, *dead)
        return out

    # -- metainfo -----------------------------------------------------------
    def put_metainfo(self, rec: MetainfoRecord, lift_quarantine=False):
        d = str(rec.digest)
        status, cur, q_empty = self._call(
            self._put_metainfo, keys=[digest_key(d, "m"), digest_key(d, "q")],
            args=[rec.info_hash.hex, rec.size, rec.format, rec.data, repr(rec.published_at),
                  "1" if lift_quarantine else "0", rec.kind])
        status = status.decode()
        if status in ("created", "unquarantined"):
            def build(pipe):
                self._touch(pipe, METAINFO_INDEX, rec.published_at, d, self.limits.max_torrents)
                if q_empty:
                    pipe.zrem(QUARANTINE_INDEX, d)
            self._evict(self._batch(build)[0], lambda m: [digest_key(m, "m")])
        if status in ("created", "exists", "unquarantined"):
            self._mark_published(rec.info_hash.hex, True)
        return status, (InfoHash.from_hex(cur.decode()) if cur else None)

    def _mark_published(self, ih_hex: str, published: bool) -> None:
        """The swarm's ``pub`` flag, which announces pass on to seeders (memory.py says why).  Its own
        command, not part of the metainfo script: the swarm's key is another key (another Cluster slot);
        a flag lost between the two only costs a seeder one needless publish."""
        c = swarm_keys(ih_hex)[3]
        if not published:
            self._call(self.r.hdel, c, "pub")
            return
        # a swarm nobody announced to yet goes after idle_swarm_ttl
        self._batch(lambda pipe: pipe.hset(c, "pub", 1).expire(c, int(self.limits.idle_swarm_ttl) + 1, nx=True))

    def get_metainfo(self, digest, kind):
        ih, size, fmt, data, at = self._call(self.r.hmget, digest_key(digest, "m"), [f"{kind}/{f}" for f in _FIELDS])
        if ih is None:
            return None
        return MetainfoRecord(digest=digest, info_hash=InfoHash.from_hex(ih.decode()), size=int(size),
                              format=int(fmt), kind=kind, data=data, published_at=float(at))

    def list_metainfo(self):
        digests = sorted(d.decode() for d in self._call(self.r.zrange, METAINFO_INDEX, 0, -1))

        def fields(pipe):
            for d in digests:
                pipe.hkeys(digest_key(d, "m"))
        kinds = [(d, f.decode()[:-len("/info_hash")]) for d, names in zip(digests, self._batch(fields))
                 for f in names if f.decode().endswith("/info_hash")]

        def values(pipe):
            for d, kind in kinds:
                pipe.hmget(digest_key(d, "m"), f"{kind}/info_hash", f"{kind}/size")
        out = []
        for (d, kind), (ih, size) in zip(kinds, self._batch(values)):
            if ih:
                out.append((Digest.parse(d), kind, InfoHash.from_hex(ih.decode()), int(size)))
        return out

    def drop_metainfo(self, digest, kind):
        ih, gone = self._call(self._drop_metainfo, keys=[digest_key(digest, "m")], args=[kind])
        if gone:
            self._call(self.r.zrem, METAINFO_INDEX, str(digest))
        if ih:
            self._mark_published(ih.decode(), False)

    def report(self, digest, info_hash, host, trusted, threshold):
        d, now = str(digest), time.time()
        record = f"{d} {info_hash.hex}"
        want = 0 if self.cluster else self.options.wait_replicas   # a Cluster "pipeline" spans connections

        def reported(pipe):   # one connection: WAIT covers this connection's writes
            _eval(pipe, self._report, [digest_key(d, f"r:{info_hash.hex}"), digest_key(d, "m"), digest_key(d, "q")],
                  [info_hash.hex, host, "1" if trusted else "0", threshold, self.limits.max_report_hosts])
            if want:
                # Replication is asynchronous: a quarantine only the failed primary held would serve the bad
                # torrent again after a failover, so it counts once enough replicas hold it.
                pipe.execute_command("WAIT", want, int(self.options.wait_timeout * 1000))
        out = self._batch(reported)
        quarantined, new_record, now_quarantined, no_torrent_left = out[0]

        def indexed(pipe):
            if new_record and not now_quarantined:
                self._touch(pipe, REPORT_INDEX, now, record, self.limits.max_reports)
            if now_quarantined:
                pipe.zrem(REPORT_INDEX, record)
                self._touch(pipe, QUARANTINE_INDEX, now, d, self.limits.max_reports)
                if no_torrent_left:
                    pipe.zrem(METAINFO_INDEX, d)
        for popped in self._batch(indexed):
            if isinstance(popped, list) and popped:
                self._evict(popped, _report_keys)
        if quarantined:
            self._mark_published(info_hash.hex, False)
        if quarantined and want and out[1] < want:
            raise StoreUnavailable(f"quarantine of {info_hash.hex} for {d} reached {out[1]} of {want} replicas "
                                   f"within {self.options.wait_timeout} s")
        return bool(quarantined)

    # -- manifests ----------------------------------------------------------
    def put_manifest(self, digest, content_type, data):
        # content type, newline, bytes: one key, so SET NX keeps it immutable
        if not self._call(self.r.set, digest_key(digest, "mf"), content_type.encode() + b"\n" + data, nx=True):
            return False
        popped = self._batch(lambda pipe: self._touch(pipe, MANIFEST_INDEX, time.time(), str(digest),
                                                      self.limits.max_manifests))
        self._evict(popped[0], lambda m: [digest_key(m, "mf")])
        return True

    def get_manifest(self, digest):
        v = self._call(self.r.get, digest_key(digest, "mf"))
        if v is None:
            return None
        ctype, _, data = v.partition(b"\n")
        return ctype.decode(), data

    # -- leases -------------------------------------------------------------
    def _lease_tx(self, digest, update):
        key = digest_key(digest, "lease")
        result = {}

        def tx(pipe):
            raw = pipe.get(key)
            state = json.loads(raw) if raw else None
            new_state, answer = update(state)
            pipe.multi()
            if new_state is None:
                pipe.delete(key)
            else:
                pipe.set(key, json.dumps(new_state), pxat=int(new_state["expires"] * 1000) + 1)
            result["answer"], result["state"] = answer, new_state
        self._call(self.r.transaction, tx, key)
        # the index of live leases is another key (another Cluster slot): it follows the transaction
        st = result["state"]
        if st is None:
            self._call(self.r.zrem, LEASE_INDEX, str(digest))
        else:
            self._call(self.r.zadd, LEASE_INDEX, {str(digest): st["expires"]})
        return result["answer"]

    def acquire_lease(self, digest, host, url, ttl, fanout, now):
        # The count is checked before the transaction: concurrent acquirers may overshoot the cap
        # by their number, which keeps it bounded.
        if not self._call(self.r.exists, digest_key(digest, "lease")):
            self._call(self.r.zremrangebyscore, LEASE_INDEX, "-inf", now)
            if self._call(self.r.zcard, LEASE_INDEX) >= self.limits.max_leases:
                raise LeaseTableFull(f"{self.limits.max_leases} live leases")
        after = {}

        def step(st):
            after["state"], answer = lease_step(st, host, url, ttl, fanout, now, self.limits.max_relays,
                                                lambda hosts: self._relay_load(hosts, now))
            return after["state"], answer
        answer = self._lease_tx(digest, step)
        if answer["role"] == "relay":   # the load keys live in other slots: they follow the transaction
            self._put_edges(digest, relay_edges(after["state"], host), after["state"]["expires"], now)
        return answer

    def renew_lease(self, digest, host, ttl, now):
        after = {}

        def update(st):
            if st is None or st["expires"] <= now or st["holder"]["host"] != host:
                return st, {"ok": False}
            st["expires"] = now + ttl
            after["state"] = st
            return st, {"ok": True}
        if not self._lease_tx(digest, update)["ok"]:
            return False
        # its uploads count as long as the lease lives
        self._put_edges(digest, relay_edges(after["state"]), after["state"]["expires"], now)
        return True

    def release_lease(self, digest, host, now):
        gone = []

        def update(st):
            gone.clear()
            if st is None or st["expires"] <= now:
                return None, {"ok": False}
            if st["holder"]["host"] == host:
                gone.extend(relay_edges(st))
                return None, {"ok": True}
            gone.extend(relay_edges(st, host))
            before = len(st["relays"])
            st["relays"] = [r for r in st["relays"] if r["host"] != host]
            return st, {"ok": len(st["relays"]) != before}
        ok = self._lease_tx(digest, update)["ok"]
        if gone:
            self._batch(lambda pipe: [pipe.zrem(relay_key(source), f"{digest} {child}") for source, child in gone])
        return ok

    def _relay_load(self, hosts, now) -> dict:
        """Each host's uploads in live lease trees; called inside a lease transaction, whose retries
        cover this read's (the keys live in other slots, so they are read, not watched: a hint)."""
        pipe = self._pipe()
        for h in hosts:
            pipe.zcount(relay_key(h), f"({now!r}", "+inf")
        return {h: n for h, n in zip(hosts, pipe.execute() if hosts else []) if n}

    def _put_edges(self, digest, edges, expires: float, now: float) -> None:
        by_source: dict = {}
        for source, child in edges:
            by_source.setdefault(source, []).extend((repr(expires), f"{digest} {child}"))
        self._batch(lambda pipe: [_eval(pipe, self._relay_edges, [relay_key(source)], [repr(now), *pairs])
                                  for source, pairs in by_source.items()])


def _eval(pipe, script, keys: list, args: list) -> None:
    """Queue ``script`` on ``pipe`` as a bare EVALSHA: redis-py's own script handling would ask the server
    SCRIPT EXISTS before every pipeline (a round trip each announce); a script the server lacks (a new
    primary after a failover, a restart) fails the batch with NoScriptError instead, and the batch is
    sent again once the scripts are loaded (RedisStore._call)."""
    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)


class _Serial:
    """Stands in for a pipeline on a Redis Cluster, whose pipelines cannot carry scripts (redis-py refuses
    EVALSHA there): the calls are queued, then made one after another by :meth:`execute`, answered
    together as a pipeline would."""

    def __init__(self, r):
        self.r = r
        self.calls = []

    def __getattr__(self, name):
        def queue(*a, **kw):
            self.calls.append((name, a, kw))
            return self
        return queue

    def __len__(self):
        return len(self.calls)

    def execute(self):
        calls, self.calls = self.calls, []   # emptied, as a pipeline is
        return [getattr(self.r, name)(*a, **kw) for name, a, kw in calls]


def _report_keys(member: str) -> list:
    """Keys of an evicted REPORT_INDEX member ("<digest> <info-hash>") or QUARANTINE_INDEX member (a digest)."""
    d, _, ih = member.partition(" ")
    return [digest_key(d, f"r:{ih}")] if ih else [digest_key(d, "q")]
