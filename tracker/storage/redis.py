"""Redis store: several tracker processes (workers, replicas) share one state.

Per swarm (hex info-hash ``H``): ``ls:s:H`` and ``ls:l:H`` hashes peer key (peer_id + ip) ->
compact addr for seeders and leechers (HLEN gives the counts in O(1),
HRANDFIELD samples without reading the swarm), ``ls:x:H`` a sorted set
peer key by expiry (expired peers are popped from its low end), ``ls:c:H``
the completed counter and last announce.  An announce is one Lua script: one
round trip, atomic.  First-write-wins publishing and quarantine are Lua too;
leases are optimistic WATCH/MULTI transactions around the shared
:func:`lease_step` rule.
"""
from __future__ import annotations

import json

import redis

from layerswarm.bridge.format.digest import Digest, InfoHash
from layerswarm.tracker.errors import StoreUnavailable
from layerswarm.tracker.protocol import SwarmCounts
from layerswarm.tracker.storage.base import MetainfoRecord, Store, SwarmInfo, lease_step

SWARM_INDEX = "ls:swarms"        # zset info-hash hex by last announce
METAINFO_INDEX = "ls:metainfo"   # set of published digests
MAX_LISTED = 10_000              # swarms listed by /swarms and scrape-all

_ANNOUNCE = """
local s, l, x, c, idx = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local pid, addr, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local event, want, seeder, ih = ARGV[5], tonumber(ARGV[6]), ARGV[7] == '1', ARGV[8]
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
  redis.call('ZADD', idx, now, ih)
  for _, k in ipairs({s, l, x}) do redis.call('EXPIRE', k, math.ceil(ttl)) end
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
return {out, redis.call('HLEN', s), redis.call('HLEN', l), tonumber(redis.call('HGET', c, 'completed') or '0')}
"""

_PURGE = """
local s, l, x = KEYS[1], KEYS[2], KEYS[3]
while true do
  local old = redis.call('ZRANGEBYSCORE', x, '-inf', ARGV[1], 'LIMIT', 0, 500)
  if #old == 0 then break end
  redis.call('HDEL', s, unpack(old)); redis.call('HDEL', l, unpack(old)); redis.call('ZREM', x, unpack(old))
end
local c = redis.call('HMGET', KEYS[4], 'completed', 'last')
return {redis.call('HLEN', s), redis.call('HLEN', l), tonumber(c[1] or '0'), c[2] or '0'}
"""

_PUT_METAINFO = """
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return {'quarantined', ''} end
local cur = redis.call('HGET', KEYS[1], 'info_hash')
if cur then
  if cur == ARGV[1] then return {'exists', cur} end
  return {'conflict', cur}
end
redis.call('HSET', KEYS[1], 'info_hash', ARGV[1], 'size', ARGV[2], 'format', ARGV[3], 'data', ARGV[4],
           'published_at', ARGV[5])
redis.call('SADD', KEYS[3], ARGV[6])
return {'created', ARGV[1]}
"""

_REPORT = """
local r, m, q, idx = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ih, host, trusted, threshold, digest = ARGV[1], ARGV[2], ARGV[3] == '1', tonumber(ARGV[4]), ARGV[5]
if redis.call('SISMEMBER', q, ih) == 1 then return 1 end
if redis.call('SCARD', r) < 10000 then redis.call('SADD', r, host) end
if redis.call('HGET', m, 'info_hash') ~= ih then return 0 end
if trusted or redis.call('SCARD', r) >= threshold then
  redis.call('DEL', m); redis.call('SADD', q, ih); redis.call('SREM', idx, digest)
  return 1
end
return 0
"""


def _swarm_keys(ih_hex: str) -> list:
    return [f"ls:s:{ih_hex}", f"ls:l:{ih_hex}", f"ls:x:{ih_hex}", f"ls:c:{ih_hex}"]


class RedisStore(Store):
    def __init__(self, url: str):
        self.r = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3,
                                      health_check_interval=30, max_connections=256)
        self._announce = self.r.register_script(_ANNOUNCE)
        self._purge = self.r.register_script(_PURGE)
        self._put_metainfo = self.r.register_script(_PUT_METAINFO)
        self._report = self.r.register_script(_REPORT)

    def _call(self, fn, *a, **kw):
        try:
            return fn(*a, **kw)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"redis: {exc.__class__.__name__}") from exc

    def ping(self):
        return bool(self._call(self.r.ping))

    def close(self):
        self.r.close()

    # -- peers --------------------------------------------------------------
    def announce(self, req, ttl, now):
        ih = req.info_hash.hex()
        out, ns, nl, done = self._call(
            self._announce, keys=[*_swarm_keys(ih), SWARM_INDEX],
            args=[req.peer_key, req.addr, repr(now), repr(float(ttl)), req.event, req.numwant,
                  "1" if req.left == 0 else "0", ih])
        peers = list(zip(out[0::2], out[1::2]))
        if len(peers) > req.numwant:
            import random
            peers = random.sample(peers, req.numwant)
        return peers, SwarmCounts(ns, nl, done)

    def _counts(self, ih_hexes, now):
        pipe = self.r.pipeline(transaction=False)
        for h in ih_hexes:
            self._purge(keys=_swarm_keys(h), args=[repr(now)], client=pipe)
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
    def put_metainfo(self, rec: MetainfoRecord):
        d = str(rec.digest)
        status, cur = self._call(
            self._put_metainfo, keys=[f"ls:m:{d}", f"ls:q:{d}", METAINFO_INDEX],
            args=[rec.info_hash.hex, rec.size, rec.format, rec.data, repr(rec.published_at), d])
        status = status.decode()
        return status, (InfoHash.from_hex(cur.decode()) if cur else None)

    def get_metainfo(self, digest):
        h = self._call(self.r.hgetall, f"ls:m:{digest}")
        if not h:
            return None
        return MetainfoRecord(digest=digest, info_hash=InfoHash.from_hex(h[b"info_hash"].decode()),
                              size=int(h[b"size"]), format=int(h[b"format"]), data=h[b"data"],
                              published_at=float(h[b"published_at"]))

    def list_metainfo(self):
        digests = sorted(d.decode() for d in self._call(self.r.smembers, METAINFO_INDEX))
        pipe = self.r.pipeline(transaction=False)
        for d in digests:
            pipe.hmget(f"ls:m:{d}", "info_hash", "size")
        out = []
        for d, (ih, size) in zip(digests, self._call(pipe.execute)):
            if ih:
                out.append((Digest.parse(d), InfoHash.from_hex(ih.decode()), int(size)))
        return out

    def report(self, digest, info_hash, host, trusted, threshold):
        d = str(digest)
        return bool(self._call(
            self._report, keys=[f"ls:r:{d}:{info_hash.hex}", f"ls:m:{d}", f"ls:q:{d}", METAINFO_INDEX],
            args=[info_hash.hex, host, "1" if trusted else "0", threshold, d]))

    # -- manifests ----------------------------------------------------------
    def put_manifest(self, digest, content_type, data):
        # content type, newline, bytes: one key, so SET NX keeps it immutable
        return bool(self._call(self.r.set, f"ls:mf:{digest}", content_type.encode() + b"\n" + data, nx=True))

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
            else:
                pipe.set(key, json.dumps(new_state), pxat=int(new_state["expires"] * 1000) + 1)
            result["answer"] = answer
        self._call(self.r.transaction, tx, key)
        return result["answer"]

    def acquire_lease(self, digest, host, url, ttl, fanout, now):
        return self._lease_tx(digest, lambda st: lease_step(st, host, url, ttl, fanout, now))

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
