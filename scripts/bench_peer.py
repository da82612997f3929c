#!/usr/bin/env python3
"""Peer benchmark: our streaming peers vs raw libtorrent sessions with the same settings.

One seeder + N peers (default N = 4 and 8) fetch one layer (default 256 MiB)
through a real tracker on loopback, in the same run:

* throughput ratio = raw makespan / our makespan (goal >= 0.8)
* p99 time to first byte of our stream readers (goal <= 1 s)
* peak anonymous RSS (RssAnon) of one peer streaming a 1 GiB layer (goal <= 150 MiB)
* CPU per MB of each peer process, ours (streamed to an in-process reader, with the bridge's
  garbage-collector settings) vs raw (whole, flushed)

Every peer is its own process; all start on one "go".  ``--utp`` runs the
same with uTP instead of TCP (the transport choice in the [session] configuration).

``--ssl`` measures instead what secure fleet mode's SSL torrents cost: one
seeder and one peer trade the layer, plain and over TLS (certificates from a
fleet CA made for the run), alternating ``--repeat`` times; it prints the
median wall time and CPU time (user + system, all threads) of each side and
the SSL / plain ratios.  The torrents are handed to the peers (the open-mode
tracker refuses SSL torrents on publish; it still matches peers on announce).

    .venv/bin/python scripts/bench_peer.py [--peers 4 8] [--size-mib 256] [--rss-mib 1024] [--json out.json]
    .venv/bin/python scripts/bench_peer.py --ssl [--size-mib 256] [--repeat 5]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from layerswarm.bridge.devstack import daemons


def rss_anon_kib(pid="self") -> int:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# -- child roles -------------------------------------------------------------
def _wait_go():
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()
    return time.monotonic()


def role_seeder(a):
    from layerswarm.bridge.config import SessionSection
    from layerswarm.bridge.node.peer import Peer
    peer = Peer.open(a.workdir, a.tracker, host_id="seeder", session=SessionSection(peer_listen="127.0.0.1:0", utp=a.utp))
    size = os.path.getsize(a.file)
    with open(a.file, "rb") as f:
        info = peer.add_blob(iter(lambda: f.read(1 << 20), b""), size)
    print(json.dumps({"ready": True, "digest": str(info.digest)}), flush=True)
    sys.stdin.readline()
    peer.close()


def role_ours(a):
    from layerswarm.bridge.format.digest import Digest
    from layerswarm.bridge.http.server import settle_garbage_collector
    from layerswarm.bridge.config import SessionSection, StreamSection
    from layerswarm.bridge.node.peer import Peer
    peer = Peer.open(a.workdir, a.tracker, session=SessionSection(peer_listen="127.0.0.1:0", utp=a.utp),
                     host_id=os.path.basename(a.workdir),
                     stream=StreamSection(stall_timeout=60, window_bytes=int(a.window_mib * (1 << 20))))
    settle_garbage_collector()   # as the bridge does before its first request
    peak = [rss_anon_kib()]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.1):
            peak[0] = max(peak[0], rss_anon_kib())
    threading.Thread(target=sample, daemon=True).start()
    try:
        t0 = _wait_go()
        cpu0 = time.process_time()
        s = peer.stream(Digest.parse(a.digest))
        first = None
        try:
            for chunk in s:
                if first is None:
                    first = time.monotonic() - t0
        except Exception as exc:
            print(json.dumps({"error": f"{exc.__class__.__name__}: {exc}"}), flush=True)
            return
        total = time.monotonic() - t0
        stop.set()
        print(json.dumps({"ttfb": first, "time": total, "bytes": s.yielded, "rss_anon_kib": peak[0],
                          "cpu": time.process_time() - cpu0}), flush=True)
        sys.stdin.readline()  # keep seeding until the parent says the run is over
    finally:
        peer.close()


def _pair_peer(a, name):
    """A peer of the SSL cost run: secure (a certificate from the run's fleet CA) when --fleet is given."""
    from layerswarm.bridge.config import SessionSection, StreamSection
    from layerswarm.bridge.format.pki import FleetTLS
    from layerswarm.bridge.node.peer import Peer
    tls = FleetTLS(f"{a.fleet}/ca.pem", f"{a.fleet}/{name}.pem", f"{a.fleet}/{name}-key.pem") if a.fleet else None
    return Peer.open(a.workdir, a.tracker, host_id=name, tls=tls, stream=StreamSection(stall_timeout=60),
                     session=SessionSection(peer_listen="127.0.0.1:0", peer_ssl_listen="127.0.0.1:0", utp=a.utp))


def role_pair_seeder(a):
    """Seed the layer in this peer's mode without publishing; answer each stdin line with our CPU time."""
    from layerswarm.bridge.format import layertorrent as tf
    peer = _pair_peer(a, "seeder")
    size = os.path.getsize(a.file)
    w = peer.store.writer(None, size)
    with open(a.file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            w.write(chunk)
    torrent = tf.for_fleet(w.finish(peer.tracker.announce_urls), peer.ssl_cert)
    w.commit(torrent.metainfo)
    peer.seed_torrent(torrent, "own")
    path = os.path.join(a.workdir, "layer.torrent")
    with open(path, "wb") as f:
        f.write(torrent.metainfo)
    print(json.dumps({"ready": True, "torrent": path}), flush=True)
    for _ in sys.stdin:
        print(json.dumps({"cpu": time.process_time()}), flush=True)
    peer.close()


def role_pair_leech(a):
    from layerswarm.bridge.format import layertorrent as tf
    peer = _pair_peer(a, "leech")
    with open(a.torrent, "rb") as f:
        torrent = tf.parse_metainfo(f.read())
    try:
        _wait_go()
        cpu0, t0 = time.process_time(), time.monotonic()
        n = sum(len(c) for c in peer.stream(torrent.digest, metainfo=torrent))
        print(json.dumps({"time": time.monotonic() - t0, "cpu": time.process_time() - cpu0, "bytes": n}),
              flush=True)
    finally:
        peer.close()


def role_raw(a):
    import libtorrent as lt
    import requests
    from layerswarm.bridge.config import SessionSection
    from layerswarm.bridge.node.torrent.session import new_session
    from layerswarm.bridge.node.torrent.settings import disk_io_constructor, settings_pack
    cfg = SessionSection(peer_listen="127.0.0.1:0", utp=a.utp)
    cat = lt.alert.category_t
    pack = {**settings_pack(cfg), "alert_mask": int(cat.status_notification | cat.piece_progress_notification
                                                    | cat.storage_notification)}
    ses = new_session(pack, disk_io_constructor(cfg))   # the bridges' disk back-end too
    meta = requests.get(f"{a.tracker}/metainfo/{a.digest}", timeout=10).content
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(lt.bdecode(meta))
    atp.save_path = a.workdir
    atp.trackers = [a.tracker + "/announce"]
    atp.flags = atp.flags & ~lt.torrent_flags.auto_managed & ~lt.torrent_flags.paused
    t0 = _wait_go()
    cpu0 = time.process_time()
    ses.add_torrent(atp)
    first = None
    done = None
    h = None
    while done is None:
        if time.monotonic() - t0 > a.timeout:
            st = ses.get_torrents()[0].status()
            print(json.dumps({"error": f"raw peer timed out at {st.progress:.2f}, {st.num_peers} peers, {st.state}"}),
                  flush=True)
            return
        ses.wait_for_alert(100)
        for al in ses.pop_alerts():
            if isinstance(al, lt.piece_finished_alert) and first is None:
                first = time.monotonic() - t0
            if isinstance(al, lt.torrent_finished_alert):
                # on disk, as our peer's layer is once it is in the store (libtorrent keeps written blocks)
                al.handle.flush_cache()
            if al.what() == "cache_flushed":
                done = time.monotonic() - t0
    print(json.dumps({"ttfb": first, "time": done, "cpu": time.process_time() - cpu0}), flush=True)
    sys.stdin.readline()
    del ses


# -- parent ------------------------------------------------------------------
class Child:
    def __init__(self, role, a, workdir, **extra):
        argv = [sys.executable, __file__, "--role", role, "--tracker", a.tracker, "--workdir", workdir,
                "--timeout", str(a.timeout), "--window-mib", str(a.window_mib)]
        for k, v in extra.items():
            argv += [f"--{k}", str(v)]
        if a.utp:
            argv.append("--utp")
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def line(self) -> dict:
        out = self.p.stdout.readline()
        if not out:
            raise RuntimeError(f"child {self.p.args[3]} died (rc={self.p.poll()})")
        return json.loads(out)

    def send(self):
        self.p.stdin.write("go\n")
        self.p.stdin.flush()

    def end(self):
        try:
            self.p.stdin.close()
        except OSError:
            pass
        try:
            self.p.wait(20)
        except subprocess.TimeoutExpired:
            self.p.kill()


def write_layer(path: Path, mib: int) -> None:
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))


def swarm_run(a, tmp: Path, role: str, n: int, digest: str, tag: str) -> list:
    kids = [Child(role, a, str(tmp / f"{tag}-{role}-{n}-{i}"), digest=digest) for i in range(n)]
    try:
        for k in kids:
            k.line()
        for k in kids:
            k.send()
        out = [k.line() for k in kids]
        bad = [r["error"] for r in out if "error" in r]
        if bad:
            raise SystemExit(f"{role} run with {n} peers failed: {bad[0]}")
        return out
    finally:
        for k in kids:
            k.end()


def make_fleet(d: Path) -> None:
    """A fleet CA and certificates for the SSL cost run's two peers."""
    from layerswarm.bridge.format import pki
    d.mkdir()
    ca = pki.create_ca()
    (d / "ca.pem").write_bytes(ca[0])
    for name in ("seeder", "leech"):
        cert, key = pki.issue(*ca, name)
        (d / f"{name}.pem").write_bytes(cert)
        (d / f"{name}-key.pem").write_bytes(key)


def ssl_cost(a, tmp: Path, layer: Path) -> dict:
    """The same layer between two peers, plain and SSL, alternating; medians and SSL / plain ratios."""
    fleet = tmp / "fleet"
    make_fleet(fleet)
    modes = {"plain": {}, "ssl": {"fleet": fleet}}
    seeders, runs = {}, {m: [] for m in modes}
    try:
        for mode, extra in modes.items():
            seeders[mode] = Child("pair-seeder", a, str(tmp / f"seeder-{mode}"), file=layer, **extra)
            modes[mode]["torrent"] = seeders[mode].line()["torrent"]
        for i in range(a.repeat):
            for mode in (("plain", "ssl") if i % 2 == 0 else ("ssl", "plain")):
                seeder, workdir = seeders[mode], tmp / f"leech-{mode}-{i}"
                seeder.send()
                cpu0 = seeder.line()["cpu"]
                leech = Child("pair-leech", a, str(workdir), **modes[mode])
                try:
                    leech.line()
                    leech.send()
                    r = leech.line()
                finally:
                    leech.end()
                if "error" in r:
                    raise SystemExit(f"{mode} run failed: {r['error']}")
                seeder.send()
                r["seeder_cpu"] = seeder.line()["cpu"] - cpu0
                runs[mode].append(r)
                shutil.rmtree(workdir, ignore_errors=True)
    finally:
        for seeder in seeders.values():
            seeder.end()
    med = {m: {k: statistics.median(r[k] for r in rs) for k in ("time", "cpu", "seeder_cpu")} for m, rs in runs.items()}
    out = {"size_mib": a.size_mib, "repeat": a.repeat, "median": med,
           "ratio": {k: round(med["ssl"][k] / med["plain"][k], 2) for k in ("time", "cpu", "seeder_cpu")}}
    out["ratio"]["cpu_both"] = round((med["ssl"]["cpu"] + med["ssl"]["seeder_cpu"])
                                     / (med["plain"]["cpu"] + med["plain"]["seeder_cpu"]), 2)
    for m in modes:
        print(f"{m:5}: {med[m]['time']:.2f}s wall, CPU leech {med[m]['cpu']:.2f}s + seeder {med[m]['seeder_cpu']:.2f}s "
              f"(median of {a.repeat}, {a.size_mib} MiB)", flush=True)
    r = out["ratio"]
    print(f"SSL / plain: wall {r['time']:.2f}x, CPU leech {r['cpu']:.2f}x, seeder {r['seeder_cpu']:.2f}x, "
          f"both {r['cpu_both']:.2f}x", flush=True)
    return out


def p99(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]


def swarm_and_rss(a, tmp: Path, layer: Path, results: dict) -> None:
    """Our peers vs raw sessions for each N, then the memory run (the default benchmark)."""
    seeder = Child("seeder", a, str(tmp / "seeder"), file=layer)
    digest = seeder.line()["digest"]
    try:
        mb = a.size_mib * (1 << 20) / 1e6
        for n in a.peers:
            raw = swarm_run(a, tmp, "raw", n, digest, "r")
            ours = swarm_run(a, tmp, "ours", n, digest, "o")
            raw_t = max(r["time"] for r in raw)
            our_t = max(r["time"] for r in ours)
            run = {"peers": n, "raw_makespan_s": round(raw_t, 2), "our_makespan_s": round(our_t, 2),
                   "throughput_ratio": round(raw_t / our_t, 3),
                   "our_ttfb_p99_s": round(p99([r["ttfb"] for r in ours]), 3),
                   "raw_first_piece_p99_s": round(p99([r["ttfb"] for r in raw]), 3),
                   "our_mib_s_per_peer": round(a.size_mib / (sum(r["time"] for r in ours) / n), 1),
                   # CPU of each peer process from the go to its layer on disk, per MB of the layer
                   "raw_cpu_ms_per_MB": round(statistics.median(1000 * r["cpu"] for r in raw) / mb, 2),
                   "our_cpu_ms_per_MB": round(statistics.median(1000 * r["cpu"] for r in ours) / mb, 2)}
            run["cpu_ratio"] = round(run["our_cpu_ms_per_MB"] / run["raw_cpu_ms_per_MB"], 2)
            results["runs"].append(run)
            print(f"N={n}: raw {raw_t:.2f}s  ours {our_t:.2f}s  throughput ratio {run['throughput_ratio']:.2f} "
                  f"(goal >= 0.8)  p99 TTFB {run['our_ttfb_p99_s']:.3f}s (goal <= 1s)  CPU per MB raw "
                  f"{run['raw_cpu_ms_per_MB']:.2f} ms, ours {run['our_cpu_ms_per_MB']:.2f} ms ({run['cpu_ratio']:.2f}x)",
                  flush=True)
    finally:
        seeder.end()
    if a.rss_mib:
        big = tmp / "big.bin"
        write_layer(big, a.rss_mib)
        layer.unlink()
        seeder = Child("seeder", a, str(tmp / "seeder-big"), file=big)
        try:
            d = seeder.line()["digest"]
            big.unlink()
            r = swarm_run(a, tmp, "ours", 1, d, "rss")[0]
        finally:
            seeder.end()
        mib = r["rss_anon_kib"] / 1024
        results["rss"] = {"layer_mib": a.rss_mib, "peak_rss_anon_mib": round(mib, 1), "time_s": round(r["time"], 2)}
        print(f"RSS: peak RssAnon {mib:.1f} MiB streaming {a.rss_mib} MiB (goal <= 150 MiB)", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--role", help=argparse.SUPPRESS)
    ap.add_argument("--tracker", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--digest", help=argparse.SUPPRESS)
    ap.add_argument("--file", help=argparse.SUPPRESS)
    ap.add_argument("--fleet", help=argparse.SUPPRESS)
    ap.add_argument("--torrent", help=argparse.SUPPRESS)
    ap.add_argument("--window-mib", type=float, default=8, help="deadline window ahead of each reader")
    ap.add_argument("--timeout", type=float, default=120, help="per peer")
    ap.add_argument("--peers", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--rss-mib", type=int, default=1024, help="layer size for the memory run (0 = skip)")
    ap.add_argument("--utp", action="store_true", help="uTP instead of TCP for every session")
    ap.add_argument("--ssl", action="store_true", help="measure SSL torrents vs plain between two peers instead")
    ap.add_argument("--repeat", type=int, default=5, help="runs of each mode with --ssl")
    ap.add_argument("--json", help="write results here")
    a = ap.parse_args()
    if a.role:
        {"seeder": role_seeder, "ours": role_ours, "raw": role_raw, "pair-seeder": role_pair_seeder,
         "pair-leech": role_pair_leech}[a.role](a)
        return

    results = {"size_mib": a.size_mib, "transport": "utp" if a.utp else "tcp", "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as td:
        tmp = Path(td)
        port = daemons.free_port()
        tracker = daemons.Daemon(daemons.layerswarm_argv("tracker", "--host", "127.0.0.1", "--port", port, "--interval", "5"),
                             tmp / "tracker.log", name="tracker")
        try:
            a.tracker = f"http://127.0.0.1:{port}"
            tracker.wait_http(a.tracker + "/healthz")
            layer = tmp / "layer.bin"
            write_layer(layer, a.size_mib)
            if a.ssl:
                results = ssl_cost(a, tmp, layer)
            else:
                swarm_and_rss(a, tmp, layer, results)
        finally:
            tracker.stop()
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
