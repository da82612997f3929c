#!/usr/bin/env python3
"""Announce load, side by side in one run: our tracker (memory store, one
process; Redis store, several workers), opentracker, and a hello-world Flask
app served by the same gunicorn setup (the ceiling for any Flask view).

The driver is wrk with a Lua script that sends a fleet-like mix: every
request a new TCP connection (``Connection: close``, as BitTorrent clients
do), a fresh random peer_id and port, ~half the announces to one hot swarm
(which grows past 10k peers within seconds) and the rest spread over 1000
swarms, mostly ``event=started`` with a mix of seeders and leechers — the
burst a freshly (re)started tracker sees when a fleet re-announces.

Prints announces/s and p99 latency per target, the hot swarm's size after
the run (scrape) and the ratio to hello-world.  wrk counts a "read error"
on every opentracker connection (opentracker closes it itself after
replying; curl sees complete, valid replies), and still counts the reply.
``--json`` writes the same figures.  Only loopback is used.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from layerswarm.bridge.devstack.daemons import Daemon as Proc, free_port, layerswarm_argv, start_redis

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
function request()
  local ih
  if math.random() < hot / 100 then ih = ihs[1] else ih = ihs[math.random(2, nswarms)] end
  local left = (math.random() < 0.3) and 0 or math.random(1, 100000000)
  local ev = (math.random() < 0.9) and "&event=started" or ""
  local path = "/announce?info_hash=" .. ih .. "&peer_id=" .. pid() .. "&port=" .. math.random(1024, 65535)
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


def wait_port(proc: Proc, port: int):
    import socket

    def up():
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    proc.wait_until(up, what=f"listening on {port}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10, help="seconds per target (default %(default)s)")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--swarms", type=int, default=1000)
    ap.add_argument("--hot", type=int, default=50, help="%% of announces to the one hot swarm")
    ap.add_argument("--redis-workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=16, help="gunicorn threads of the hello-world baseline")
    ap.add_argument("--targets", default="hello,memory,redis,opentracker")
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-tracker-"))
    lua = tmp / "announce.lua"
    # fixed info-hashes, shared by wrk threads and opentracker's whitelist (Debian builds it whitelist-only)
    rnd = random.Random(42)
    hashes = [bytes(rnd.getrandbits(8) for _ in range(20)) for _ in range(args.swarms)]
    lua.write_text(WRK_LUA % {"hot": args.hot, "swarms": args.swarms,
                              "ihs": ",".join('"%s"' % "".join("%%%02X" % b for b in h) for h in hashes)})
    (tmp / "whitelist").write_text("".join(h.hex() + "\n" for h in hashes))
    (tmp / "hello.py").write_text(HELLO)
    results = {}
    for target in [t.strip() for t in args.targets.split(",") if t.strip()]:
        port = free_port()
        procs = []
        try:
            if target == "hello":
                p = Proc([sys.executable, "-m", "gunicorn", "-k", "gthread", "-w", "1", "--threads", str(args.threads),
                          "--backlog", "2048", "--no-control-socket", "-b", f"127.0.0.1:{port}", "--chdir", tmp,
                          "hello:app"], tmp / "hello.log")
            elif target == "memory":
                p = Proc(layerswarm_argv("tracker", "--port", port), tmp / "memory.log")
            elif target == "redis":
                rp = start_redis(tmp / "redis")
                url = rp.url
                procs.append(rp)
                p = Proc(layerswarm_argv("tracker", "--port", port, "--store", url, "--workers", args.redis_workers),
                         tmp / "redis-tracker.log")
            elif target == "opentracker":
                conf = tmp / "opentracker.conf"
                conf.write_text(f"listen.tcp 127.0.0.1:{port}\nlisten.udp 127.0.0.1:{port}\n"
                                "access.whitelist /whitelist\n")  # a path inside the -d chroot
                p = Proc(["opentracker", "-f", conf, "-d", tmp], tmp / "opentracker.log")
            else:
                raise SystemExit(f"unknown target {target}")
            procs.append(p)
            wait_port(p, port)
            time.sleep(0.5)
            label = f"redis x{args.redis_workers} workers" if target == "redis" else target
            r = run_wrk(f"http://127.0.0.1:{port}", lua, args.duration, args.connections, args.wrk_threads, tmp)
            if target != "hello":  # how big the hot swarm got: per-announce cost must not grow with it
                r["hot_swarm_peers"] = hot_swarm_size(port, hashes[0])
            results[label] = r
            print(f"{label:>22}: {r['rps']:8.0f} announces/s  p50 {r['p50_us'] / 1000:6.1f} ms  "
                  f"p99 {r['p99_us'] / 1000:6.1f} ms  non-2xx {r['errors_status']}  read errors {r['errors_read']}  "
                  f"hot swarm {r.get('hot_swarm_peers', '-')} peers", flush=True)
        finally:
            for pr in reversed(procs):
                pr.stop()
    base = next((r["rps"] for k, r in results.items() if k == "hello"), None)
    if base:
        print("ratio to hello-world Flask:", ", ".join(f"{k} {r['rps'] / base:.2f}" for k, r in results.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
