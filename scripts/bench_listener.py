#!/usr/bin/env python3
"""CPU of the bridge's HTTP listener per MB of a streamed body: the app thread writing the socket
itself (a known length on plain TCP, bridge/http/wsgi.py) against each chunk going through the loop.

The body is made like a swarm stream: fresh chunks of ``--chunk`` bytes (a run of pieces) with
``--gap`` seconds between them, to ``--clients`` concurrent readers in their own processes; the
listener runs in this process, so its CPU (all threads) is this process's.  The two ways alternate
for ``--rounds`` rounds (the machine is shared: compare within a run)::

    .venv/bin/python scripts/bench_listener.py [--chunk 262144] [--gap 0.02] [--count 200] [--clients 3]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

from layerswarm.bridge.http.wsgi import Listener

READER = """
import sys, requests
with requests.get(sys.argv[1], stream=True, timeout=120) as r:
    n = sum(len(b) for b in r.iter_content(1 << 20))
sys.exit(0 if n == int(sys.argv[2]) else 1)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunk", type=int, default=256 << 10, help="bytes per chunk (default 256 KiB: two pieces)")
    ap.add_argument("--gap", type=float, default=0.02, help="seconds between chunks (default 0.02)")
    ap.add_argument("--count", type=int, default=200, help="chunks per body (default 200)")
    ap.add_argument("--clients", type=int, default=3, help="concurrent readers (default 3, as dockerd)")
    ap.add_argument("--rounds", type=int, default=4, help="rounds of each way, alternating (default 4)")
    a = ap.parse_args()
    if a.chunk <= 0 or a.count <= 0 or a.clients <= 0 or a.rounds <= 0 or a.gap < 0:
        ap.error("sizes, counts and rounds must be positive, the gap not negative")
    payload = os.urandom(a.chunk)
    size = a.chunk * a.count

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])

        def body():
            for _ in range(a.count):
                time.sleep(a.gap)
                yield bytes(payload)   # a new object each time, as a piece read out of libtorrent
        return body()

    listener = Listener("client", app, "127.0.0.1:0", max(4, a.clients + 1))
    listener.start()
    direct = Listener._socket_for_body

    async def through_loop(self, request, resp):
        return None

    ways = {"thread writes": direct, "loop writes": through_loop}
    res: dict = {w: [] for w in ways}
    try:
        for _ in range(a.rounds):
            for way, fn in ways.items():
                Listener._socket_for_body = fn
                r0 = resource.getrusage(resource.RUSAGE_SELF)
                readers = [subprocess.Popen([sys.executable, "-c", READER, f"http://127.0.0.1:{listener.port}/b",
                                             str(size)]) for _ in range(a.clients)]
                if any(p.wait() != 0 for p in readers):
                    print(f"{way}: a reader did not get the whole body", file=sys.stderr)
                    return 1
                r1 = resource.getrusage(resource.RUSAGE_SELF)
                cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
                res[way].append(1000 * cpu / (a.clients * size / 1e6))
    finally:
        Listener._socket_for_body = direct
        listener.stop()
    med = {w: statistics.median(v) for w, v in res.items()}
    for w, v in res.items():
        print(f"{w:13s} CPU ms per MB: median {med[w]:.2f} ({', '.join(f'{x:.2f}' for x in v)})")
    print(f"thread writes / loop writes: {med['thread writes'] / med['loop writes']:.2f} "
          f"({a.chunk} B chunks every {a.gap:g} s, {a.clients} readers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
