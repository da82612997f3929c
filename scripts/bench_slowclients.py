#!/usr/bin/env python3
"""Request latency with and without a crowd of slow clients, in one run, on a loopback stack.

A real docker-registry origin, a tracker and a bridge with its fleet listener; a small image
pushed to the origin and a 3 MiB blob seeded into the bridge's store.  Five targets, every
request on a new connection (as a cold client's):

  announce   GET /announce on the tracker
  healthz    GET /healthz on the bridge's client port
  manifest   GET of the image's manifest by tag on the client port
  blob       GET of the stored 3 MiB blob on the client port (a store hit: sendfile)
  relay      GET /_layerswarm/relay/<digest> of the same blob on the fleet port

Phases: baseline (no slow clients); ``--slow`` connections (a request head, then a byte every
``--every`` seconds; measured once each has dripped) on the tracker's port, on the bridge's client
port, on its fleet port, then ``--slow`` on each of the three at once; and baseline again (how far
a shared machine drifted during the run).  The bridge closes a connection without a whole request
after its idle timeout (30 s), the tracker after 5 s (gunicorn's keepalive bounds reading a request);
the crowd replaces those within a second, as an attacker would, so it is as many as asked throughout
(it runs in a process of its own: its bursts of reconnects must not take the measuring client's GIL).  In each
phase the targets take turns for ``--requests`` sequential requests each, then ``--threads``
threads send as many again at once; a client pauses ``--gap`` ms after each request (latency is the
point, and a load that filled both cores would measure the machine).

Prints p50/p99/max (ms) per phase and target, p99(phase)/p99(the lower baseline), the slow connections
held, and the machine's CPU busy % during the measurement (from /proc/stat): above 85 % the phase is
marked machine-bound (*), its figures then say more about the machine than about the servers.  Per
phase it also names the requests whose connect took over 0.5 s (a SYN a full listen queue dropped is
retried after 1 s) and counts the host's listen-queue overflows and SYN retransmits (host-wide:
other processes count too); ``--json`` has every target's slowest requests with their connect time
and when they came, in seconds after the crowd connected.

    .venv/bin/python scripts/bench_slowclients.py [--slow 500] [--every 10] [--requests 200] \\
        [--threads 4] [--gap 10] [--json out.json]
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote_from_bytes

import requests

from bench_rollout import ACCEPT, machine_cpu, pct   # scripts/ beside this one
from layerswarm.bridge.devstack import daemons, imagegen
from layerswarm.bridge.devstack.slowclients import SlowClients
from layerswarm.bridge.format.digest import Digest
from layerswarm.bridge.format.rlimits import raise_open_file_limit

ADMIN = "bench-slow-admin"
BLOB_BYTES = 3 << 20
MACHINE_BOUND = 85.0   # % CPU busy
TARGETS = ("announce", "healthz", "manifest", "blob", "relay")
# What a slow client has sent before its drip, per port: the start of a request the port serves.
HEADS = {"tracker": b"GET /announce?info_hash=", "client": b"GET /v2/", "fleet": b"GET /_layerswarm/relay/"}
PHASES = (("baseline", ()), ("tracker", ("tracker",)), ("client", ("client",)), ("fleet", ("fleet",)),
          ("all", ("tracker", "client", "fleet")), ("baseline-after", ()))


def start_stack(tmp: Path):
    """(daemons to stop, ports by name, targets: name -> (port, path, headers, body size or None))."""
    made = []
    try:
        origin = daemons.start_registry(tmp / "origin")
        made.append(origin)
        imagegen.push(origin.url, "bench/slow", "v1", imagegen.make_image((50_000,), seed=b"bench-slow"))
        tracker = daemons.start_tracker(tmp / "tracker")
        made.append(tracker)
        (tmp / "admin").write_text(ADMIN)
        bridge = daemons.start_bridge(tmp / "bridge", upstream=origin.url, tracker=tracker.url,
                                      extra=["--admin-token-file", tmp / "admin"])
        made.append(bridge)
        data = hashlib.shake_256(b"bench-slow").digest(BLOB_BYTES)
        r = requests.post(f"{bridge.url}/_layerswarm/seed", params={"size": len(data)}, data=data, timeout=120,
                          headers={"Authorization": f"Bearer {ADMIN}"})
        r.raise_for_status()
    except BaseException:
        for d in reversed(made):
            d.stop()
        raise
    digest = Digest.of_bytes(data)
    ports = {"tracker": _port(tracker.url), "client": bridge.port, "fleet": _port(bridge.fleet_url)}
    peer = quote_from_bytes(b"-LS0001-benchslowcli", safe="")
    announce = (f"/announce?info_hash={quote_from_bytes(bytes(range(20)), safe='')}&peer_id={peer}&port=7000"
                "&uploaded=0&downloaded=0&left=100&compact=1")
    targets = {   # name -> (port, path, headers, body size or None)
        "announce": (ports["tracker"], announce, {}, None),
        "healthz": (ports["client"], "/healthz", {}, None),
        "manifest": (ports["client"], "/v2/bench/slow/manifests/v1", {"Accept": ACCEPT}, None),
        "blob": (ports["client"], f"/v2/bench/slow/blobs/{digest}", {}, BLOB_BYTES),
        "relay": (ports["fleet"], f"/_layerswarm/relay/{digest}", {}, BLOB_BYTES),
    }
    return made, ports, targets


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def one_request(target) -> tuple | None:
    """(start, seconds, seconds to connect) of one GET on a new connection to loopback; None when it failed."""
    port, path, headers, size = target
    t = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.connect()
        connected = time.monotonic()
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    if resp.status != 200 or (size is not None and len(body) != size):
        return None
    return t, time.monotonic() - t, connected - t


def measure(targets: dict, n: int, threads: int, gap: float) -> dict:
    """mode -> (CPU busy %, target -> [seconds or None]): the targets take turns, so each sees the whole
    phase; a client waits ``gap`` seconds between its requests (a paced load, not one that fills the CPU)."""
    def client(share: int, out: dict, lock: threading.Lock) -> None:
        for _ in range(share):
            for name, target in targets.items():
                s = one_request(target)
                with lock:
                    out.setdefault(name, []).append(s)
                time.sleep(gap)

    modes = {"seq": [n]} | ({"conc": [n // threads + (i < n % threads) for i in range(threads)]} if threads else {})
    result = {}
    for mode, shares in modes.items():
        out, lock = {}, threading.Lock()
        busy0, total0 = machine_cpu()
        with ThreadPoolExecutor(len(shares)) as pool:
            list(pool.map(lambda share: client(share, out, lock), shares))
        busy1, total1 = machine_cpu()
        result[mode] = (round(100.0 * (busy1 - busy0) / max(total1 - total0, 1e-9), 1), out)
    return result


def summary(samples: list, since: float) -> dict:
    """Percentiles of one target in one mode, and its slowest requests (``at_s``: seconds after ``since``)."""
    ok = [x for x in samples if x is not None]
    seconds = [x[1] for x in ok]
    ms = (lambda v: None if v is None else round(v * 1000, 2))
    slowest = [{"at_s": round(t - since, 1), "ms": ms(total), "connect_ms": ms(connect)}
               for t, total, connect in sorted(ok, key=lambda x: -x[1])[:3]]
    return {"n": len(samples), "errors": len(samples) - len(ok), "p50_ms": ms(pct(seconds, 50)),
            "p99_ms": ms(pct(seconds, 99)), "max_ms": ms(max(seconds, default=None)), "slowest": slowest}


def tcp_counters() -> dict:
    """The host's TCP counters that say a listen queue overflowed (a SYN dropped: the client retries after 1 s)."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            counters = dict(zip(names.split()[1:], map(int, values.split()[1:])))
            return {k: counters.get(k, 0) for k in ("ListenOverflows", "TCPSynRetrans")}
    return {}


class Crowd:
    """The slow clients of a phase, in a process of their own: replacing hundreds of connections at
    once must not hold the measuring client's GIL."""

    def __init__(self, addresses: list, n: int, every: float):
        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_crowd, args=(child, addresses, n, every), name="slow-crowd", daemon=True)
        self.proc.start()
        ready = self.conn.recv()
        if ready != "up":
            self.close()
            raise RuntimeError(f"slow clients: {ready}")

    def held(self) -> tuple:
        """(connections held, connections replaced so far)."""
        self.conn.send("held")
        return self.conn.recv()

    def close(self) -> None:
        if self.proc.is_alive():
            self.conn.send("stop")
            self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()


def _crowd(conn, addresses: list, n: int, every: float) -> None:
    try:
        with contextlib.ExitStack() as stack:
            crowds = [stack.enter_context(SlowClients("127.0.0.1", port, n, every, head, reconnect=True))
                      for port, head in addresses]
            conn.send("up")
            while conn.recv() == "held":
                conn.send((sum(c.held() for c in crowds), sum(c.reconnects for c in crowds)))
    except Exception as exc:  # noqa: BLE001 - told to the parent
        conn.send(repr(exc))


def run_phase(name: str, crowded: tuple, ports: dict, targets: dict, a) -> dict:
    crowd = Crowd([(ports[p], HEADS[p]) for p in crowded], a.slow, a.every) if crowded else None
    since = time.monotonic()   # the crowd is connected
    try:
        if crowd:
            time.sleep(a.every + 1)   # every slow client has dripped once
        held, _ = crowd.held() if crowd else (0, 0)
        t0, tcp0 = time.monotonic(), tcp_counters()
        measured = measure(targets, a.requests, a.threads, a.gap / 1000)
        seconds, tcp1 = time.monotonic() - t0, tcp_counters()
        held_after, reconnects = crowd.held() if crowd else (0, 0)
    finally:
        if crowd:
            crowd.close()
    busy = {mode: b for mode, (b, _) in measured.items()}
    return {"phase": name, "crowded": list(crowded), "slow_per_port": a.slow if crowded else 0,
            "slow_held": [held, held_after], "slow_reconnects": reconnects, "seconds": round(seconds, 1),
            "cpu_busy_pct": busy, "machine_bound": {mode: b > MACHINE_BOUND for mode, b in busy.items()},
            "loadavg": [round(x, 2) for x in os.getloadavg()], "tcp": {k: tcp1[k] - tcp0[k] for k in tcp0},
            "targets": {t: {mode: summary(out[t], since) for mode, (_, out) in measured.items()} for t in targets}}


def ratio(phase: dict, bases: list, target: str, mode: str) -> float | None:
    """p99 in ``phase`` over the lower baseline p99: the quieter baseline, so load never hides in a noisy one."""
    p = phase["targets"][target][mode]["p99_ms"]
    b = min((x for x in (base["targets"][target][mode]["p99_ms"] for base in bases) if x), default=None)
    return None if p is None or b is None else round(p / b, 2)


def report(phases: list, a) -> None:
    cell = 27
    modes = [("seq", "sequential")] + ([("conc", f"{a.threads} threads at once")] if a.threads else [])
    for mode, title in modes:
        print(f"\n{title}: p50/p99/max ms (p99 / the lower baseline p99)")
        print(f"{'phase':<15}{'busy':>6}{'held':>6} " + "".join(f"{t:>{cell}}" for t in TARGETS))
        for ph in phases:
            cells = []
            for t in TARGETS:
                s = ph["targets"][t][mode]
                err = f" E{s['errors']}" if s["errors"] else ""
                cells.append(f"{s['p50_ms']}/{s['p99_ms']}/{s['max_ms']} ({ph['p99_ratio'][t][mode]}x){err}")
            flag = "*" if ph["machine_bound"][mode] else " "
            print(f"{ph['phase']:<15}{ph['cpu_busy_pct'][mode]:>5.0f}%{flag}{ph['slow_held'][0]:>5} "
                  + "".join(f"{c:>{cell}}" for c in cells))
    print(f"\nbusy: the machine's CPU during the measurement (* above {MACHINE_BOUND:g} %: machine-bound); "
          f"held: slow connections open at its start ({a.slow} per crowded port, a byte every {a.every:g} s)")
    for ph in phases:
        # A connect that waited for the SYN's retransmit (1 s): a listen queue was full.
        dropped = [f"{t} at {x['at_s']} s: {x['ms']:.0f} ms" for t in TARGETS for v in ph["targets"][t].values()
                   for x in v["slowest"] if x["connect_ms"] > 500]
        note = "; connect over 0.5 s: " + ", ".join(dropped) if dropped else ""
        print(f"  {ph['phase']:<15} {ph['seconds']:>5} s, load {ph['loadavg']}, held {ph['slow_held'][0]} -> "
              f"{ph['slow_held'][1]}, replaced {ph['slow_reconnects']}, host TCP {ph['tcp']}{note}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slow", type=int, default=500, help="slow connections per crowded port")
    ap.add_argument("--every", type=float, default=10.0, help="seconds between a slow client's bytes")
    ap.add_argument("--requests", type=int, default=200, help="sequential requests per target and phase")
    ap.add_argument("--threads", type=int, default=4, help="then as many requests from this many threads (0: none)")
    ap.add_argument("--gap", type=float, default=10.0, help="ms a client waits between two requests")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args()
    raise_open_file_limit(3 * a.slow + 1024)   # the "all" phase holds a crowd on three ports
    with tempfile.TemporaryDirectory(prefix="bench-slow-") as td:
        made, ports, targets = start_stack(Path(td))
        try:
            for target in targets.values():   # warm: tag cache, imports, page cache
                for _ in range(5):
                    if one_request(target) is None:
                        raise SystemExit(f"port {target[0]} {target[1]} does not answer 200 before any load")
            phases = []
            for name, crowded in PHASES:
                print(f"phase {name} ...", file=sys.stderr, flush=True)
                phases.append(run_phase(name, crowded, ports, targets, a))
        finally:
            for d in reversed(made):
                d.stop()
    bases = [ph for ph in phases if not ph["crowded"]]
    for ph in phases:
        ph["p99_ratio"] = {t: {mode: ratio(ph, bases, t, mode) for mode in ph["targets"][t]} for t in TARGETS}
    report(phases, a)
    if a.json:
        run = {"slow": a.slow, "every": a.every, "requests": a.requests, "threads": a.threads, "gap_ms": a.gap,
               "cpus": os.cpu_count(), "phases": phases}
        Path(a.json).write_text(json.dumps(run, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
