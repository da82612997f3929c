"""Redis store: several tracker processes (workers, replicas) share one state.

Per swarm (hex info-hash ``H``): ``ls:s:H`` and ``ls:l:H`` hashes peer key (peer_id + ip) ->
compact addr for seeders and leechers (HLEN gives the counts in O(1),
HRANDFIELD samples without reading the swarm), ``ls:x:H`` a sorted set
peer key by expiry (expired peers are popped from its low end), ``ls:c:H``
the completed counter and last announce.  Per digest ``D``: ``ls:m:D`` one hash
for the torrents of every kind (fields ``<kind>/info_hash``, ``<kind>/data``, ...,
so a report finds its torrent's kind inside the one key).  An announce is one Lua script: one
round trip, atomic.  First-write-wins publishing and quarantine are Lua too;
leases are optimistic WATCH/MULTI transactions around the shared
:func:`lease_step` rule.
"""
from __future__ import annotations

import json
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from layerswarm.bridge.format.digest import Digest, InfoHash
from layerswarm.tracker.errors import StoreUnavailable
from layerswarm.tracker.protocol import SwarmCounts
from layerswarm.tracker.storage.base import LeaseTableFull, Limits, MetainfoRecord, Store, SwarmInfo, lease_step
from layerswarm.tracker.storage.spec import StoreOptions, StoreSpec, parse_store

SWARM_INDEX = "ls:swarms"                # zset info-hash hex by last announce
METAINFO_INDEX = "ls:metainfo:by-time"   # zset published digest by publish time
MANIFEST_INDEX = "ls:manifests"          # zset manifest digest by store time
REPORT_INDEX = "ls:reports"              # zset report key by first report
QUARANTINE_INDEX = "ls:quarantined"      # zset digest with a quarantine set, by time
LEASE_INDEX = "ls:leases"                # zset digest with a lease, by expiry
RETRY_STEP = 0.25                        # seconds between attempts while the store is unreachable
MAX_LISTED = 10_000                      # swarms listed by /swarms and scrape-all
_FIELDS = ("info_hash", "size", "format", "data", "published_at")   # of each torrent in ls:m:D

# Shared Lua: add member M to index zset I at score S, then drop the oldest beyond cap C with
# their keys (prefix P .. member).  Keeps every table bounded in one round trip.
_BOUND = """
local function bound(i, s, m, c, p)
  redis.call('ZADD', i, s, m)
  local n = redis.call('ZCARD', i) - c
  if n > 0 then
    local old = redis.call('ZPOPMIN', i, n)
    for k = 1, #old, 2 do
      if type(p) == 'table' then
        for _, pre in ipairs(p) do redis.call('DEL', pre .. old[k]) end
      else
        redis.call('DEL', p .. old[k])
      end
    end
  end
end
"""

_ANNOUNCE = _BOUND + """
local function extend(k, secs)   -- EXPIRE that never shortens
  if redis.call('TTL', k) < secs then redis.call('EXPIRE', k, secs) end
end
local s, l, x, c, idx = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local pid, addr, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local event, want, seeder, ih = ARGV[5], tonumber(ARGV[6]), ARGV[7] == '1', ARGV[8]
local max_swarms, idle = tonumber(ARGV[9]), tonumber(ARGV[10])
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
  bound(idx, now, ih, max_swarms, {'ls:s:', 'ls:l:', 'ls:x:', 'ls:c:'})
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

# Shared Lua: drop the torrent of kind prefix K (kind .. '/') from metainfo hash M; the digest leaves
# index I with its last torrent.
_DROP_KIND = """
local function drop_kind(m, k, i, digest)
  local ih = redis.call('HGET', m, k .. 'info_hash')
  redis.call('HDEL', m, k .. 'info_hash', k .. 'size', k .. 'format', k .. 'data', k .. 'published_at')
  if redis.call('EXISTS', m) == 0 then redis.call('ZREM', i, digest) end
  return ih
end
"""

_PUT_METAINFO = _BOUND + """
local quarantined = redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1
if quarantined and ARGV[8] ~= '1' then return {'quarantined', ''} end
local k = ARGV[9] .. '/'
local cur = redis.call('HGET', KEYS[1], k .. 'info_hash')
if cur then
  if cur == ARGV[1] then return {'exists', cur} end
  return {'conflict', cur}
end
redis.call('HSET', KEYS[1], k .. 'info_hash', ARGV[1], k .. 'size', ARGV[2], k .. 'format', ARGV[3],
           k .. 'data', ARGV[4], k .. 'published_at', ARGV[5])
bound(KEYS[3], tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7]), 'ls:m:')
if quarantined then
  redis.call('SREM', KEYS[2], ARGV[1])   -- the set goes with its last member
  if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('ZREM', KEYS[4], ARGV[6]) end
  return {'unquarantined', ARGV[1]}
end
return {'created', ARGV[1]}
"""

_DROP_METAINFO = _DROP_KIND + "return drop_kind(KEYS[1], ARGV[1] .. '/', KEYS[2], ARGV[2])"

_REPORT = _BOUND + _DROP_KIND + """
local r, m, q, idx = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ih, host, trusted, threshold, digest = ARGV[1], ARGV[2], ARGV[3] == '1', tonumber(ARGV[4]), ARGV[5]
local now, max_reports, max_hosts = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
if redis.call('SISMEMBER', q, ih) == 1 then return 1 end
if redis.call('EXISTS', r) == 0 then bound(KEYS[5], now, string.sub(r, 6), max_reports, 'ls:r:') end
if redis.call('SCARD', r) < max_hosts then redis.call('SADD', r, host) end
local kind   -- the kind prefix of the published torrent with this info-hash (HKEYS: no torrent bodies read)
for _, f in ipairs(redis.call('HKEYS', m)) do
  if string.sub(f, -10) == '/info_hash' and redis.call('HGET', m, f) == ih then kind = string.sub(f, 1, -10) end
end
if not kind then return 0 end
if trusted or redis.call('SCARD', r) >= threshold then
  drop_kind(m, kind, idx, digest)
  redis.call('DEL', r); redis.call('SADD', q, ih)
  redis.call('ZREM', KEYS[5], string.sub(r, 6))
  bound(KEYS[6], now, digest, max_reports, 'ls:q:')
  return 1
end
return 0
"""
_PUT_MANIFEST = _BOUND + """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  bound(KEYS[2], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), 'ls:mf:')
  return 1
end
return 0
"""


def _swarm_keys(ih_hex: str) -> list:
    return [f"ls:s:{ih_hex}", f"ls:l:{ih_hex}", f"ls:x:{ih_hex}", f"ls:c:{ih_hex}"]


def connect(spec: StoreSpec, o: StoreOptions) -> redis.Redis:
    """A client of the primary: the URL's server, or whichever server the Sentinels name now.

    redis-py's own retries are off: :meth:`RedisStore._call` retries for a
    bounded time instead, the same for every backend.
    """
    common = {"password": o.password, "username": spec.username, "health_check_interval": 30,
              "max_connections": 256, "retry": Retry(NoBackoff(), 0), "socket_connect_timeout": 2,
              # a quarantine's WAIT blocks its connection up to wait_timeout
              "socket_timeout": max(5.0, o.wait_timeout + 2)}
    if spec.kind == "sentinel":
        asked = {"password": o.sentinel_password, "socket_timeout": 2, "socket_connect_timeout": 2}
        if spec.tls:
            asked["ssl"] = True
        sentinel = Sentinel(list(spec.sentinels), sentinel_kwargs=asked)
        return sentinel.master_for(spec.service, db=spec.db, ssl=spec.tls, **common)
    return redis.Redis.from_url(spec.url, **common)


class RedisStore(Store):
    def __init__(self, spec: StoreSpec | str, limits: Limits | None = None, options: StoreOptions | None = None):
        self.limits = limits or Limits()
        self.options = options or StoreOptions()
        self.r = connect(parse_store(spec) if isinstance(spec, str) else spec, self.options)
        self._announce = self.r.register_script(_ANNOUNCE)
        self._purge = self.r.register_script(_PURGE)
        self._put_metainfo = self.r.register_script(_PUT_METAINFO)
        self._drop_metainfo = self.r.register_script(_DROP_METAINFO)
        self._report = self.r.register_script(_REPORT)
        self._put_manifest = self.r.register_script(_PUT_MANIFEST)

    def _call(self, fn, *a, **kw):
        """``fn(...)``, retried while the connection is lost for up to ``retry_for`` seconds: a Sentinel
        failover or a restart is waited out, then StoreUnavailable."""
        deadline = time.monotonic() + self.options.retry_for
        while True:
            try:
                return fn(*a, **kw)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if time.monotonic() + RETRY_STEP > deadline:
                    raise StoreUnavailable(f"redis: {exc.__class__.__name__}: {exc}") from exc
                time.sleep(RETRY_STEP)
            except redis.RedisError as exc:
                raise StoreUnavailable(f"redis: {exc.__class__.__name__}: {exc}") from exc

    def ping(self):
        return bool(self._call(self.r.ping))

    def close(self):
        self.r.close()

    # -- peers --------------------------------------------------------------
    def announce(self, req, ttl, now):
        ih = req.info_hash.hex()
        out, ns, nl, done, published = self._call(
            self._announce, keys=[*_swarm_keys(ih), SWARM_INDEX],
            args=[req.peer_key, req.addr, repr(now), repr(float(ttl)), req.event, req.numwant,
                  "1" if req.left == 0 else "0", ih, self.limits.max_swarms, self.limits.idle_swarm_ttl])
        peers = list(zip(out[0::2], out[1::2]))
        if len(peers) > req.numwant:
            import random
            peers = random.sample(peers, req.numwant)
        return peers, SwarmCounts(ns, nl, done), bool(published)

    def _counts(self, ih_hexes, now):
        pipe = self.r.pipeline(transaction=False)
        for h in ih_hexes:
            self._purge(keys=_swarm_keys(h), args=[repr(now), self.limits.idle_swarm_ttl], client=pipe)
        return self._call(pipe.execute)

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
        status, cur = self._call(
            self._put_metainfo, keys=[f"ls:m:{d}", f"ls:q:{d}", METAINFO_INDEX, QUARANTINE_INDEX],
            args=[rec.info_hash.hex, rec.size, rec.format, rec.data, repr(rec.published_at), d,
                  self.limits.max_torrents, "1" if lift_quarantine else "0", rec.kind])
        status = status.decode()
        if status in ("created", "exists", "unquarantined"):
            self._mark_published(rec.info_hash.hex, True)
        return status, (InfoHash.from_hex(cur.decode()) if cur else None)

    def _mark_published(self, ih_hex: str, published: bool) -> None:
        """The swarm's ``pub`` flag, which announces pass on to seeders (memory.py says why).  Its own
        command, not part of the metainfo script: the swarm's key is another key (another Cluster slot);
        a flag lost between the two only costs a seeder one needless publish."""
        c = f"ls:c:{ih_hex}"
        if not published:
            self._call(self.r.hdel, c, "pub")
            return
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(c, "pub", 1)
        pipe.expire(c, int(self.limits.idle_swarm_ttl) + 1, nx=True)   # a swarm nobody announced to yet
        self._call(pipe.execute)

    def get_metainfo(self, digest, kind):
        ih, size, fmt, data, at = self._call(self.r.hmget, f"ls:m:{digest}", [f"{kind}/{f}" for f in _FIELDS])
        if ih is None:
            return None
        return MetainfoRecord(digest=digest, info_hash=InfoHash.from_hex(ih.decode()), size=int(size),
                              format=int(fmt), kind=kind, data=data, published_at=float(at))

    def list_metainfo(self):
        digests = sorted(d.decode() for d in self._call(self.r.zrange, METAINFO_INDEX, 0, -1))
        pipe = self.r.pipeline(transaction=False)
        for d in digests:
            pipe.hkeys(f"ls:m:{d}")
        kinds = [(d, f.decode()[:-len("/info_hash")]) for d, fields in zip(digests, self._call(pipe.execute))
                 for f in fields if f.decode().endswith("/info_hash")]
        for d, kind in kinds:
            pipe.hmget(f"ls:m:{d}", f"{kind}/info_hash", f"{kind}/size")
        out = []
        for (d, kind), (ih, size) in zip(kinds, self._call(pipe.execute)):
            if ih:
                out.append((Digest.parse(d), kind, InfoHash.from_hex(ih.decode()), int(size)))
        return out

    def drop_metainfo(self, digest, kind):
        ih = self._call(self._drop_metainfo, keys=[f"ls:m:{digest}", METAINFO_INDEX], args=[kind, str(digest)])
        if ih:
            self._mark_published(ih.decode(), False)

    def report(self, digest, info_hash, host, trusted, threshold):
        d = str(digest)
        pipe = self.r.pipeline(transaction=False)   # one connection: WAIT covers this connection's writes
        self._report(keys=[f"ls:r:{d}:{info_hash.hex}", f"ls:m:{d}", f"ls:q:{d}", METAINFO_INDEX, REPORT_INDEX,
                           QUARANTINE_INDEX],
                     args=[info_hash.hex, host, "1" if trusted else "0", threshold, d, repr(time.time()),
                           self.limits.max_reports, self.limits.max_report_hosts], client=pipe)
        want = self.options.wait_replicas
        if want:
            # Replication is asynchronous: a quarantine only the failed primary held would serve the bad
            # torrent again after a failover, so it counts once enough replicas hold it.
            pipe.execute_command("WAIT", want, int(self.options.wait_timeout * 1000))
        out = self._call(pipe.execute)
        quarantined = bool(out[0])
        if quarantined:
            self._mark_published(info_hash.hex, False)
        if quarantined and want and out[1] < want:
            raise StoreUnavailable(f"quarantine of {info_hash.hex} for {d} reached {out[1]} of {want} replicas "
                                   f"within {self.options.wait_timeout} s")
        return quarantined

    # -- manifests ----------------------------------------------------------
    def put_manifest(self, digest, content_type, data):
        # content type, newline, bytes: one key, so SET NX keeps it immutable
        return bool(self._call(self._put_manifest, keys=[f"ls:mf:{digest}", MANIFEST_INDEX],
                               args=[content_type.encode() + b"\n" + data, repr(time.time()), str(digest),
                                     self.limits.max_manifests]))

    def get_manifest(self, digest):
        v = self._call(self.r.get, f"ls:mf:{digest}")
        if v is None:
            return None
        ctype, _, data = v.partition(b"\n")
        return ctype.decode(), data

    # -- leases -------------------------------------------------------------
    def _lease_tx(self, digest, update):
        key = f"ls:lease:{digest}"
        result = {}

        def tx(pipe):
            raw = pipe.get(key)
            state = json.loads(raw) if raw else None
            new_state, answer = update(state)
            pipe.multi()
            if new_state is None:
                pipe.delete(key)
                pipe.zrem(LEASE_INDEX, str(digest))
            else:
                pipe.set(key, json.dumps(new_state), pxat=int(new_state["expires"] * 1000) + 1)
                pipe.zadd(LEASE_INDEX, {str(digest): new_state["expires"]})
            result["answer"] = answer
        self._call(self.r.transaction, tx, key)
        return result["answer"]

    def acquire_lease(self, digest, host, url, ttl, fanout, now):
        # The count is checked before the transaction: concurrent acquirers may overshoot the cap
        # by their number, which keeps it bounded.
        if not self._call(self.r.exists, f"ls:lease:{digest}"):
            self._call(self.r.zremrangebyscore, LEASE_INDEX, "-inf", now)
            if self._call(self.r.zcard, LEASE_INDEX) >= self.limits.max_leases:
                raise LeaseTableFull(f"{self.limits.max_leases} live leases")
        return self._lease_tx(digest, lambda st: lease_step(st, host, url, ttl, fanout, now, self.limits.max_relays))

    def renew_lease(self, digest, host, ttl, now):
        def update(st):
            if st is None or st["expires"] <= now or st["holder"]["host"] != host:
                return st, {"ok": False}
            st["expires"] = now + ttl
            return st, {"ok": True}
        return self._lease_tx(digest, update)["ok"]

    def release_lease(self, digest, host, now):
        def update(st):
            if st is None or st["expires"] <= now:
                return None, {"ok": False}
            if st["holder"]["host"] == host:
                return None, {"ok": True}
            before = len(st["relays"])
            st["relays"] = [r for r in st["relays"] if r["host"] != host]
            return st, {"ok": len(st["relays"]) != before}
        return self._lease_tx(digest, update)["ok"]
