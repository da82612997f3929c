#!/usr/bin/env python3
"""Announce load, side by side in one run: our tracker (memory store, one
process; Redis store, several workers), opentracker, and a hello-world Flask
app served by the same gunicorn setup (the ceiling for any Flask view).

The driver is wrk with a Lua script; every request is a new TCP connection
(``Connection: close``, as BitTorrent clients do).  Two mixes:

* ``--mix burst`` (default): a fresh random peer_id and port each time,
  ~half the announces to one hot swarm (which grows past 10k peers within
  seconds) and the rest spread over 1000 swarms, mostly ``event=started``
  with a mix of seeders and leechers — the burst a freshly (re)started
  tracker sees when a fleet re-announces, or a rollout starts.
* ``--mix steady``: a fleet at rest re-announcing: peers drawn from a fixed
  population (``--population``, spread evenly over the swarms, so 100 peers
  per swarm by default), 90% of them seeders, no event — what the capacity
  plan in the README is made of.

Targets: ``hello`` (a Flask hello-world under gunicorn gthread, the issue's
yardstick), ``floor`` (a bare WSGI callable under the tracker's own gunicorn
gevent setup: what serving alone costs), ``memory``, ``redis`` (see
``--redis-workers``), ``opentracker``.

Prints announces/s and p99 latency per target, the hot swarm's size after
the run (scrape), the ratio to hello-world, and CPU: the target's own CPU
milliseconds per announce (its whole process tree; for Redis targets also
redis-server's, the part replicas share), and how busy the whole machine was
(the CPU figures hold on a shared machine when rates do not).  ``--rounds``
repeats the targets (order reversed every other round) and prints median
ratios.  ``--redis-workers 1,2`` measures a Redis tracker of each size (one
worker: one process, comparable with hello-world).  wrk counts a "read error"
on every opentracker connection (opentracker closes it itself after
replying; curl sees complete, valid replies), and still counts the reply.
``--json`` writes the same figures.  Only loopback is used.

``--tls`` adds secure fleet mode: wrk cannot show a client certificate, so a
small Python client (processes of asyncio connections, the same announce
mix) measures a tracker with ``--tls-cert/--tls-key/--fleet-ca`` and the plain
tracker in the same run, interleaved, as keep-alive connections and as a new
connection per announce (a full TLS handshake each); then TLS handshakes
alone (handshakes/s, server and client CPU per handshake, one handshake's
latency) at the tracker and at a secure bridge's fleet listener, whose
``/healthz`` is also fetched both ways, plain and over mTLS.  Compare the
ratios, not this client's figures with wrk's.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote_from_bytes, urlsplit

from layerswarm.bridge.devstack.daemons import Daemon as Proc, free_port, layerswarm_argv, start_redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_rollout import _children, cpu_tree, machine_cpu, pct  # noqa: E402  (scripts/ beside this one)

WRK_LUA = r"""
local ihs = {%(ihs)s}
local hot = %(hot)d
local nswarms = %(swarms)d
function init(args)
  math.randomseed(os.time() * 1000 + (tonumber(tostring({}):match("0x(%%x+)"), 16) or 0) %% 100000)
end
local alnum = "abcdefghijklmnopqrstuvwxyz0123456789"
local function pid()
  local t = {"-LS0001-"}
  for i = 1, 12 do local k = math.random(1, 36) t[#t + 1] = alnum:sub(k, k) end
  return table.concat(t)
end
local mix = "%(mix)s"
local population = %(population)d
function request()
  local ih, peer_id, port, left, ev
  if mix == "steady" then   -- a known peer re-announcing: 90%% seeders, no event
    local i = math.random(0, population - 1)
    ih = ihs[(i %% nswarms) + 1]
    peer_id = string.format("-LS0001-%%012d", i)
    port = 1024 + i %% 60000
    left = (i %% 10 < 9) and 0 or 1000000
    ev = ""
  else
    if math.random() < hot / 100 then ih = ihs[1] else ih = ihs[math.random(2, nswarms)] end
    peer_id = pid()
    port = math.random(1024, 65535)
    left = (math.random() < 0.3) and 0 or math.random(1, 100000000)
    ev = (math.random() < 0.9) and "&event=started" or ""
  end
  local path = "/announce?info_hash=" .. ih .. "&peer_id=" .. peer_id .. "&port=" .. port
    .. "&uploaded=0&downloaded=0&left=" .. left .. "&compact=1&numwant=50" .. ev
  return wrk.format("GET", path, {["Connection"] = "close"})
end
function done(summary, latency, requests)
  io.write(string.format("RESULT {\"requests\": %%d, \"duration_us\": %%d, \"p50_us\": %%d, \"p99_us\": %%d, " ..
    "\"errors_connect\": %%d, \"errors_read\": %%d, \"errors_status\": %%d, \"errors_timeout\": %%d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.connect, summary.errors.read, summary.errors.status, summary.errors.timeout))
end
"""

# The serving floor: a bare WSGI callable under the tracker's own gunicorn setup (gevent worker), so
# what is left of an announce's cost above it is the tracker's own.
FLOOR = """
BODY = b"d8:completei0e10:incompletei0e8:intervali120e5:peers0:e"

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
    return [BODY]
"""

HELLO = """
from flask import Flask, Response
app = Flask(__name__)

@app.get("/announce")
def hello():
    return Response(b"d8:completei0e10:incompletei0e8:intervali120e5:peers0:e", mimetype="text/plain")
"""


def run_wrk(url: str, lua: Path, duration: float, conns: int, threads: int, tmp: Path) -> dict:
    import subprocess
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{max(1, round(duration))}s", "--timeout", "5s",
                          "-s", str(lua), url], capture_output=True, text=True, timeout=duration + 60)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[7:])
            r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
            return r
    raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")


def hot_swarm_size(port: int, info_hash: bytes):
    import urllib.request
    from urllib.parse import quote_from_bytes
    import bencodepy
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/scrape?info_hash={quote_from_bytes(info_hash, safe='')}",
                                    timeout=10) as resp:
            f = bencodepy.decode(resp.read())[b"files"][info_hash]
        return f[b"complete"] + f[b"incomplete"]
    except Exception:
        return None


def wait_port(proc: Proc, port: int, path: str | None = None):
    """Until ``port`` answers: a connection, or a 200 on ``path`` (gunicorn listens before its worker is up)."""
    import socket
    import urllib.request

    def up():
        if path is not None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                return r.status == 200
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    proc.wait_until(up, what=f"listening on {port}")


def wrk_target(target: str, args, tmp: Path, lua: Path, hashes: list) -> dict:
    """Start one target, drive it with wrk for ``args.duration`` seconds, stop it: rates, latency, CPU."""
    port = free_port()
    procs = []
    store = None
    try:
        if target == "hello":
            p = Proc([sys.executable, "-m", "gunicorn", "-k", "gthread", "-w", "1", "--threads", str(args.threads),
                      "--backlog", "2048", "--no-control-socket", "-b", f"127.0.0.1:{port}", "--chdir", tmp,
                      "hello:app"], tmp / "hello.log")
        elif target == "floor":
            p = Proc([sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "1", "--worker-connections", "4096",
                      "--backlog", "2048", "--no-control-socket", "-b", f"127.0.0.1:{port}", "--chdir", tmp,
                      "floor:app"], tmp / "floor.log")
        elif target == "memory":
            p = Proc(layerswarm_argv("tracker", "--port", port), tmp / "memory.log")
        elif target.startswith("redis x"):
            store = start_redis(tmp / f"redis-{port}")
            procs.append(store)
            p = Proc(layerswarm_argv("tracker", "--port", port, "--store", store.url, "--workers", target[7:]),
                     tmp / "redis-tracker.log")
        elif target == "opentracker":
            conf = tmp / "opentracker.conf"
            conf.write_text(f"listen.tcp 127.0.0.1:{port}\nlisten.udp 127.0.0.1:{port}\n"
                            "access.whitelist /whitelist\n")  # a path inside the -d chroot
            p = Proc(["opentracker", "-f", conf, "-d", tmp], tmp / "opentracker.log")
        else:
            raise SystemExit(f"unknown target {target}")
        procs.append(p)
        wait_port(p, port, {"hello": "/announce", "floor": "/announce", "opentracker": None}.get(target, "/healthz"))
        time.sleep(0.5)
        kids = _children()
        cpu0, store0, mach0 = cpu_tree(p.pid, kids), cpu_tree(store.pid, kids) if store else 0, machine_cpu()
        r = run_wrk(f"http://127.0.0.1:{port}", lua, args.duration, args.connections, args.wrk_threads, tmp)
        kids = _children()
        cpu1, store1, mach1 = cpu_tree(p.pid, kids), cpu_tree(store.pid, kids) if store else 0, machine_cpu()
        r["server_cpu_ms_each"] = 1000 * (cpu1 - cpu0) / max(1, r["requests"])
        r["redis_cpu_ms_each"] = 1000 * (store1 - store0) / max(1, r["requests"]) if store else None
        r["machine_busy_pct"] = 100 * (mach1[0] - mach0[0]) / max(1e-9, mach1[1] - mach0[1])
        if target not in ("hello", "floor"):  # how big the hot swarm got: per-announce cost must not grow with it
            r["hot_swarm_peers"] = hot_swarm_size(port, hashes[0])
        redis_cpu = f" + redis {r['redis_cpu_ms_each']:.2f}" if store else ""
        print(f"{target:>14}: {r['rps']:8.0f} announces/s  p50 {r['p50_us'] / 1000:6.1f} ms  "
              f"p99 {r['p99_us'] / 1000:6.1f} ms  CPU {r['server_cpu_ms_each']:.2f}{redis_cpu} ms each  "
              f"machine {r['machine_busy_pct']:.0f}% busy  non-2xx {r['errors_status']}  read errors "
              f"{r['errors_read']}  hot swarm {r.get('hot_swarm_peers', '-')} peers", flush=True)
        return r
    finally:
        for pr in reversed(procs):
            pr.stop()


# -------------------------------------------------------------------------- the mTLS load client

ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
MODES = ("keep-alive", "new connection", "handshake")


def announce_path(rnd: random.Random, hashes: list, hot: int) -> str:
    """One announce of the wrk script's mix: half to the hot swarm, fresh peer_id and port, mostly started."""
    ih = hashes[0] if rnd.random() < hot / 100 else hashes[rnd.randrange(1, len(hashes))]
    left = 0 if rnd.random() < 0.3 else rnd.randint(1, 100_000_000)
    event = "&event=started" if rnd.random() < 0.9 else ""
    return (f"/announce?info_hash={quote_from_bytes(ih, safe='')}&peer_id=-LS0001-"
            f"{''.join(rnd.choice(ALNUM) for _ in range(12))}&port={rnd.randint(1024, 65535)}"
            f"&uploaded=0&downloaded=0&left={left}&compact=1&numwant=50{event}")


async def _load(spec: dict) -> dict:
    """``spec['conns']`` connections hitting one URL from ``t0`` for ``duration`` seconds: requests on
    keep-alive connections, a new connection per request, or TLS handshakes alone (then close)."""
    u = urlsplit(spec["url"])
    ctx = None
    if u.scheme == "https":
        ctx = ssl.create_default_context(cafile=spec["ca"])
        if spec.get("cert"):
            ctx.load_cert_chain(spec["cert"], spec["key"])
    rnd = random.Random(spec["seed"])
    mode, end = spec["mode"], spec["t0"] + spec["duration"]
    st = {"done": 0, "errors": 0, "failures": 0, "lat": [], "tls": set(), "error_samples": []}

    async def request(reader, writer) -> bool:
        path = announce_path(rnd, spec["hashes"], spec["hot"]) if spec["announce"] else u.path
        conn = "keep-alive" if mode == "keep-alive" else "close"
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {u.hostname}\r\nConnection: {conn}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), None)
        body = await (reader.readexactly(length) if length is not None else reader.read())
        return head.split(b" ", 2)[1] == b"200" and b"failure reason" not in body

    async def one_conn():
        reader = writer = None
        while time.time() < end:
            t = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(u.hostname, u.port, ssl=ctx)
                    if ctx is not None:
                        st["tls"].add(writer.get_extra_info("ssl_object").version())
                ok = True if mode == "handshake" else await request(reader, writer)
            except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                st["errors"] += 1
                if len(st["error_samples"]) < 3:
                    st["error_samples"].append(repr(exc)[:200])
                ok = None
            if writer is not None and (mode != "keep-alive" or ok is None):
                writer.close()
                writer = None
            if ok is None or time.time() > end:
                continue
            st["done"] += 1
            st["failures"] += not ok
            st["lat"].append(time.perf_counter() - t)
        if writer is not None:
            writer.close()

    await asyncio.sleep(max(0.0, spec["t0"] - time.time()))
    cpu = time.process_time()
    await asyncio.gather(*(one_conn() for _ in range(spec["conns"])))
    st["cpu_s"] = time.process_time() - cpu
    st["tls"] = sorted(st["tls"])
    return st


def _load_process(spec: dict) -> dict:
    return asyncio.run(_load(spec))


def measure(url: str, mode: str, conns: int, duration: float, procs: int, server_pid: int, tls: dict,
            hashes: list, hot: int, announce: bool) -> dict:
    """``conns`` connections over ``procs`` client processes; rates, latency, server and client CPU."""
    from concurrent.futures import ProcessPoolExecutor
    procs = max(1, min(procs, conns))
    t0 = time.time() + 1.0   # every process connected its first one at the same instant
    specs = [{"url": url, "mode": mode, "conns": conns // procs + (i < conns % procs), "duration": duration,
              "t0": t0, "seed": random.random(), "hashes": hashes, "hot": hot, "announce": announce, **tls}
             for i in range(procs)]
    with ProcessPoolExecutor(procs) as pool:
        futures = [pool.submit(_load_process, sp) for sp in specs]
        time.sleep(max(0.0, t0 - time.time()))
        cpu0, mach0 = cpu_tree(server_pid), machine_cpu()
        parts = [f.result() for f in futures]
        cpu1, mach1 = cpu_tree(server_pid), machine_cpu()
    done = sum(p["done"] for p in parts)
    lat = [x for p in parts for x in p["lat"]]
    return {"url": url, "mode": mode, "connections": conns, "client_processes": procs,
            "per_s": done / duration, "done": done, "errors": sum(p["errors"] for p in parts),
            "failures": sum(p["failures"] for p in parts),
            "error_samples": [e for p in parts for e in p["error_samples"]][:3],
            "p50_ms": 1000 * (pct(lat, 50) or 0), "p99_ms": 1000 * (pct(lat, 99) or 0),
            "server_cpu_ms_each": 1000 * (cpu1 - cpu0) / max(1, done),
            "client_cpu_ms_each": 1000 * sum(p["cpu_s"] for p in parts) / max(1, done),
            "machine_busy_pct": 100 * (mach1[0] - mach0[0]) / max(1e-9, mach1[1] - mach0[1]),
            "tls": sorted({v for p in parts for v in p["tls"]})}


def tls_bench(args, tmp: Path, hashes: list) -> dict:
    """Plain vs mTLS at the tracker and at a bridge's fleet listener, interleaved; TLS handshakes alone."""
    from layerswarm.bridge.devstack.certs import FleetPKI
    from layerswarm.bridge.devstack.daemons import start_bridge, start_tracker
    pki = FleetPKI(tmp / "pki", ca_name="bench fleet CA")
    tc, client = pki.host("tracker"), pki.host("loadgen")
    tls = {"ca": str(pki.ca), "cert": str(client.cert), "key": str(client.key)}
    started = []
    try:
        trackers = {"plain": start_tracker(tmp / "tracker-plain"),
                    "mTLS": start_tracker(tmp / "tracker-mtls", tls=(tc.cert, tc.key, pki.ca))}
        started += trackers.values()
        bridges = {"plain": start_bridge(tmp / "bridge-plain", tracker=trackers["plain"].url, name="bridge-plain"),
                   "mTLS": start_bridge(tmp / "bridge-mtls", tracker=trackers["mTLS"].url, name="bridge-mtls",
                                        fleet=pki)}
        started += bridges.values()
        time.sleep(1)
        out = {"rounds": args.tls_rounds, "duration_s": args.tls_duration, "connections": args.tls_connections,
               "client_processes": args.tls_procs, "loadavg_at_start": os.getloadavg(), "runs": []}

        def run(what, mode, kind, conns=args.tls_connections):
            d = trackers[kind] if what == "tracker" else bridges[kind]
            url = d.url + "/announce" if what == "tracker" else d.fleet_url + "/healthz"
            r = measure(url, mode, conns, args.tls_duration, args.tls_procs, d.pid, tls, hashes, args.hot,
                        announce=what == "tracker")
            r.update(target=what, kind=kind)
            out["runs"].append(r)
            print(f"{what:>8} {kind:>5} {mode:>14} x{conns:<3}: {r['per_s']:8.0f}/s  p50 {r['p50_ms']:6.1f} ms  "
                  f"p99 {r['p99_ms']:6.1f} ms  server CPU {r['server_cpu_ms_each']:.2f} ms each  client CPU "
                  f"{r['client_cpu_ms_each']:.2f} ms each  errors {r['errors']}  failures {r['failures']}  "
                  f"machine {r['machine_busy_pct']:.0f}% {' '.join(r['tls'])}", flush=True)
        for rnd in range(args.tls_rounds):
            kinds = ("plain", "mTLS") if rnd % 2 == 0 else ("mTLS", "plain")
            for what in ("tracker", "bridge"):
                for mode in MODES[:2]:
                    for kind in kinds:
                        run(what, mode, kind)
                run(what, "handshake", "mTLS")
                run(what, "handshake", "mTLS", conns=1)   # one at a time: a handshake's latency
        out["summary"] = tls_summary(out["runs"])
        return out
    finally:
        for d in reversed(started):
            d.stop()


def tls_summary(runs: list) -> dict:
    """Medians over rounds: mTLS ÷ plain rate per target and mode, and the handshake figures."""
    def med(rows, key):
        vals = [r[key] for r in rows]
        return statistics.median(vals) if vals else None

    def pick(what, mode, kind, conns=None):
        return [r for r in runs if (r["target"], r["mode"], r["kind"]) == (what, mode, kind)
                and (conns is None or r["connections"] == conns)]
    out = {}
    for what in ("tracker", "bridge"):
        for mode in MODES[:2]:
            plain, mtls = med(pick(what, mode, "plain"), "per_s"), med(pick(what, mode, "mTLS"), "per_s")
            out[f"{what} {mode}"] = {
                "plain_per_s": plain, "mtls_per_s": mtls, "mtls_over_plain": mtls / plain if plain else None,
                "server_cpu_ms_plain": med(pick(what, mode, "plain"), "server_cpu_ms_each"),
                "server_cpu_ms_mtls": med(pick(what, mode, "mTLS"), "server_cpu_ms_each")}
        many = [r for r in pick(what, "handshake", "mTLS") if r["connections"] > 1]
        out[f"{what} handshake"] = {
            "handshakes_per_s": med(many, "per_s"), "server_cpu_ms_each": med(many, "server_cpu_ms_each"),
            "client_cpu_ms_each": med(many, "client_cpu_ms_each"),
            "latency_ms_alone": med(pick(what, "handshake", "mTLS", conns=1), "p50_ms")}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10, help="seconds per target (default %(default)s)")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--swarms", type=int, default=1000)
    ap.add_argument("--hot", type=int, default=50, help="%% of announces to the one hot swarm")
    ap.add_argument("--redis-workers", type=lambda v: [int(x) for x in v.split(",")], default=[2],
                    help="gunicorn workers of the Redis target, a list makes one target each (default 2)")
    ap.add_argument("--mix", choices=("burst", "steady"), default="burst", help="the announce mix (see above)")
    ap.add_argument("--population", type=int, default=100_000, help="peers of the steady mix")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the targets, order reversed every other round")
    ap.add_argument("--threads", type=int, default=16, help="gunicorn threads of the hello-world baseline")
    ap.add_argument("--targets", default="hello,memory,redis,opentracker",
                    help="wrk targets: hello, floor (a bare WSGI app under the tracker's gunicorn setup), memory, "
                    "redis, opentracker (\"\": none)")
    ap.add_argument("--tls", action="store_true", help="also plain vs mTLS with the Python client, and handshakes")
    ap.add_argument("--tls-duration", type=float, default=5, help="seconds per mTLS measurement")
    ap.add_argument("--tls-connections", type=int, default=32)
    ap.add_argument("--tls-procs", type=int, default=2, help="client processes (default 2)")
    ap.add_argument("--tls-rounds", type=int, default=1, help="plain/mTLS rounds, order alternating")
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-tracker-"))
    lua = tmp / "announce.lua"
    # fixed info-hashes, shared by wrk threads and opentracker's whitelist (Debian builds it whitelist-only)
    rnd = random.Random(42)
    hashes = [bytes(rnd.getrandbits(8) for _ in range(20)) for _ in range(args.swarms)]
    lua.write_text(WRK_LUA % {"hot": args.hot, "swarms": args.swarms, "mix": args.mix, "population": args.population,
                              "ihs": ",".join('"%s"' % "".join("%%%02X" % b for b in h) for h in hashes)})
    (tmp / "whitelist").write_text("".join(h.hex() + "\n" for h in hashes))
    (tmp / "hello.py").write_text(HELLO)
    (tmp / "floor.py").write_text(FLOOR)
    targets = []
    for t in [t.strip() for t in args.targets.split(",") if t.strip()]:
        targets += [f"redis x{n}" for n in args.redis_workers] if t == "redis" else [t]
    print(f"mix {args.mix}, {args.swarms} swarms, {args.connections} connections, {args.duration:.0f} s per target, "
          f"load average at start {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)", flush=True)
    rounds = []
    for rnd_no in range(args.rounds):
        results = {}
        for target in (targets if rnd_no % 2 == 0 else targets[::-1]):
            results[target] = wrk_target(target, args, tmp, lua, hashes)
        rounds.append(results)
        base = results.get("hello", {}).get("rps")
        if base:
            print("ratio to hello-world Flask:", ", ".join(f"{k} {r['rps'] / base:.2f}" for k, r in results.items()),
                  flush=True)
    results = {"rounds": rounds, "mix": args.mix}
    if args.rounds > 1 and all("hello" in r for r in rounds):
        results["median_ratio_to_hello"] = {
            t: statistics.median(r[t]["rps"] / r["hello"]["rps"] for r in rounds) for t in targets}
        print("median ratio to hello-world Flask over", args.rounds, "rounds:",
              ", ".join(f"{k} {v:.2f}" for k, v in results["median_ratio_to_hello"].items()))
    if args.tls:
        results["mtls"] = tls_bench(args, tmp, hashes)
        for k, v in results["mtls"]["summary"].items():
            print(f"{k:>26}: " + ", ".join(f"{n} {x:.3g}" for n, x in v.items() if x is not None))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
