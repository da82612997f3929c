#!/usr/bin/env python3
"""Tracker memory at fleet scale, measured: N peers across M swarms, then silence until they expire.

For each store (the memory store in one process; Redis with its tracker), on
loopback: start a tracker, announce ``--peers`` distinct peers spread evenly
over ``--swarms`` swarms (``--seeders`` of them with nothing left, the rest
downloading) over keep-alive HTTP connections, then stop announcing.  Reported
at three points — before, after the load, and once every peer's TTL has passed
(2 x the interval it was handed: ``--seed-interval`` for seeders, ``--interval``
for downloads) — the peers the tracker lists (``/swarms``: at most 10,000 swarms with Redis), the tracker's
anonymous RSS (RssAnon, its whole process tree) and, for Redis, ``INFO memory``
(used_memory, used_memory_rss) and the number of keys.  Bytes per peer are
(after - before) / peers.  The announce rate of the load is printed too (one
Python client process: a floor, not the tracker's ceiling; scripts/bench_tracker.py
measures that).

``--direct`` fills the Redis store through the store's own code in this
process (``RedisStore.announce``, several threads), no tracker in between:
Redis memory at the size of a whole fleet (a million peers) in minutes rather
than the better part of an hour; the tracker's RSS is then not reported.

    .venv/bin/python scripts/bench_tracker_memory.py                      # 100,000 peers, 10,000 swarms
    .venv/bin/python scripts/bench_tracker_memory.py --stores redis --direct --peers 1000000 --swarms 10000
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote_from_bytes

import redis
import requests

from layerswarm.bridge.devstack.daemons import Daemon, free_port, layerswarm_argv, start_redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_rollout import rss_anon_tree  # noqa: E402  (scripts/ beside this one)
from bench_tracker import wait_port  # noqa: E402


def announce_path(i: int, swarms: int, seeders: float) -> str:
    """Peer ``i``: swarm i mod M, its own peer_id and port; a seeder for the first ``seeders`` of each 1000."""
    ih = hashlib.sha1(b"swarm-%d" % (i % swarms)).digest()
    pid = b"-BM0001-" + b"%012d" % i
    left = 0 if i % 1000 < seeders * 1000 else 1 << 20
    return (f"/announce?info_hash={quote_from_bytes(ih, safe='')}&peer_id={quote_from_bytes(pid, safe='')}"
            f"&port={1024 + i % 60000}&uploaded=0&downloaded=0&left={left}&compact=1&numwant=50&event=started")


async def _announce_all(port: int, n: int, swarms: int, seeders: float, conns: int) -> dict:
    todo = iter(range(n))
    failures = 0

    async def worker():
        nonlocal failures
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in todo:
            writer.write(f"GET {announce_path(i, swarms, seeders)} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            body = await reader.readexactly(length)
            failures += b"failure reason" in body
        writer.close()
    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(conns)))
    took = time.monotonic() - t0
    return {"announces": n, "seconds": took, "per_s": n / took, "failures": failures}


def _announce_direct(store_url: str, a) -> dict:
    """The same peers through RedisStore.announce, from threads, TTLs as the tracker would hand them."""
    from concurrent.futures import ThreadPoolExecutor
    from layerswarm.tracker.app import create_app
    from layerswarm.tracker.protocol import parse_announce
    app = create_app({"store": store_url, "interval": a.interval, "seed_interval": a.seed_interval,
                      "max_swarms": max(a.swarms, 100_000), "idle_swarm_ttl": 2 * a.seed_interval})
    t = app.extensions["layerswarm"]

    def one(i):
        req = parse_announce(announce_path(i, a.swarms, a.seeders).split("?", 1)[1].encode(), "127.0.0.1", t.config)
        t.store.announce(req, t.config.announce.peer_ttl(req.seeder), time.time())
    t0 = time.monotonic()
    with ThreadPoolExecutor(a.connections) as pool:
        for _ in pool.map(one, range(a.peers), chunksize=1000):
            pass
    took = time.monotonic() - t0
    t.store.close()
    return {"announces": a.peers, "seconds": took, "per_s": a.peers / took, "failures": 0}


def listed_peers(url: str) -> int:
    rows = requests.get(url + "/swarms", timeout=120).json()
    return sum(r["seeders"] + r["leechers"] for r in rows)


def snapshot(tracker: Daemon, url: str, r: redis.Redis | None) -> dict:
    out = {"peers_listed": listed_peers(url), "tracker_rss_anon_kib": rss_anon_tree(tracker.pid)}
    if r is not None:
        mem = r.info("memory")
        out.update(redis_used_memory=mem["used_memory"], redis_used_memory_rss=mem["used_memory_rss"],
                   redis_keys=r.dbsize())
    return out


def run_store(store: str, a, tmp: Path) -> dict:
    started = []
    try:
        port = free_port()
        # counters of swarms without peers go with the peers, so that nothing is left once they expired
        args = ["tracker", "--port", port, "--interval", a.interval, "--seed-interval", a.seed_interval,
                "--max-swarms", max(a.swarms, 100_000), "--idle-swarm-ttl", 2 * a.seed_interval]
        r = None
        if store == "redis":
            rd = start_redis(tmp / "redis")
            started.append(rd)
            r = redis.Redis.from_url(rd.url)
            args += ["--store", rd.url, "--workers", a.redis_workers]
        tracker = Daemon(layerswarm_argv(*args), tmp / f"tracker-{store}.log", name=f"tracker ({store})")
        started.append(tracker)
        wait_port(tracker, port, "/healthz")
        url = f"http://127.0.0.1:{port}"
        time.sleep(1)
        out = {"store": store, "before": snapshot(tracker, url, r)}
        if a.direct:
            out["load"] = _announce_direct(rd.url, a)
        else:
            out["load"] = asyncio.run(_announce_all(port, a.peers, a.swarms, a.seeders, a.connections))
        out["after_load"] = snapshot(tracker, url, r)
        if a.no_expiry:
            out["after_expiry"] = out["after_load"]
            return out
        wait = 2 * max(a.interval, a.seed_interval) + 5   # the longest TTL handed out, and a little
        print(f"  {store}: {a.peers} announces in {out['load']['seconds']:.0f} s ({out['load']['per_s']:.0f}/s); "
              f"waiting {wait} s for every peer to expire", flush=True)
        if out["load"]["seconds"] > 2 * min(a.interval, a.seed_interval):
            print(f"  {store}: the load outlasted the shortest TTL: peers expired during it (raise --interval)",
                  flush=True)
        time.sleep(wait)
        listed_peers(url)   # a listing drops expired peers (Redis also expires the keys on its own)
        time.sleep(2)
        out["after_expiry"] = snapshot(tracker, url, r)
        return out
    finally:
        for p in reversed(started):
            p.stop()


def report(res: dict, peers: int) -> None:
    b, l, e = res["before"], res["after_load"], res["after_expiry"]
    line = (f"{res['store']:>6}: {l['peers_listed']} peers listed after the load, {e['peers_listed']} after expiry; "
            f"tracker RssAnon {b['tracker_rss_anon_kib'] / 1024:.1f} -> {l['tracker_rss_anon_kib'] / 1024:.1f} -> "
            f"{e['tracker_rss_anon_kib'] / 1024:.1f} MiB "
            f"({(l['tracker_rss_anon_kib'] - b['tracker_rss_anon_kib']) * 1024 / peers:.0f} B/peer)")
    if "redis_used_memory" in b:
        line += (f"; redis used_memory {b['redis_used_memory'] / 2**20:.1f} -> {l['redis_used_memory'] / 2**20:.1f} "
                 f"-> {e['redis_used_memory'] / 2**20:.1f} MiB "
                 f"({(l['redis_used_memory'] - b['redis_used_memory']) / peers:.0f} B/peer), "
                 f"used_memory_rss {l['redis_used_memory_rss'] / 2**20:.1f} MiB, keys {b['redis_keys']} -> "
                 f"{l['redis_keys']} -> {e['redis_keys']}")
    print(line + f"; load {res['load']['per_s']:.0f} announces/s, {res['load']['failures']} failures", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", type=int, default=100_000)
    ap.add_argument("--swarms", type=int, default=10_000)
    ap.add_argument("--seeders", type=float, default=0.9, help="share of peers with nothing left (default 0.9)")
    ap.add_argument("--stores", default="memory,redis")
    ap.add_argument("--redis-workers", type=int, default=2)
    ap.add_argument("--connections", type=int, default=32)
    # TTLs (2 x interval) must outlast the load, and are waited for once it is over
    ap.add_argument("--interval", type=int, default=90, help="the tracker's --interval (default %(default)s)")
    ap.add_argument("--seed-interval", type=int, default=180, help="the tracker's --seed-interval (default %(default)s)")
    ap.add_argument("--direct", action="store_true", help="fill Redis through the store's code, no tracker between")
    ap.add_argument("--no-expiry", action="store_true", help="do not wait for the peers to expire")
    ap.add_argument("--json", help="write results here")
    a = ap.parse_args(argv)
    if a.direct and "memory" in a.stores:
        ap.error("--direct fills a Redis store: give --stores redis")
    tmp = Path(tempfile.mkdtemp(prefix="bench-tracker-memory-"))
    results = []
    for store in [s.strip() for s in a.stores.split(",") if s.strip()]:
        print(f"{store}: {a.peers} peers over {a.swarms} swarms ({a.seeders:.0%} seeders)", flush=True)
        res = run_store(store, a, tmp)
        results.append(res)
        report(res, a.peers)
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
