#!/usr/bin/env python3
"""CPU per MB of the bridge's own streaming work, apart from libtorrent and the network: a
:class:`~layerswarm.bridge.node.stream.Download` fed piece-finished events by hand (pieces in the partial
file, as with the posix disk back-end) and one reader streaming it from byte 0, against the floor of what
a verified stream cannot skip (each piece read once from the file and fed to the whole-blob sha256).

``scripts/bench_peer.py`` measures a streaming peer against a raw libtorrent session end to end, but
on two shared cores its ratio moves by 0.3 between runs; this one has no network and no other process,
so it tells whether a change to the piece path (the hash cursor, the hand-off to readers, the reader's
loop) costs or saves CPU.  Only the torrent and the session are stand-ins (they record what the download
asks of them); the store, the dispatcher, the download and the reader are the bridge's.  Pieces finish
``--gap`` seconds apart (as from a network: each one wakes the reader; 0.2 ms by default, about
640 MB/s at 128 KiB pieces), in order or shuffled within windows of 32 (rarest-first); the event pacing's
own CPU is measured too and taken out of both sides.  Rounds alternate the two sides::

    .venv/bin/python scripts/bench_stream.py [--size-mib 64] [--gap 0.0002] [--rounds 9] [--json out.json] [--default-gc]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from layerswarm.bridge.config import StreamSection
from layerswarm.bridge.format import layertorrent as tf
from layerswarm.bridge.format.digest import Digest
from layerswarm.bridge.http.server import settle_garbage_collector
from layerswarm.bridge.node.store import LayerStore
from layerswarm.bridge.node.stream import Download
from layerswarm.bridge.node.torrent.alerts import MOVED, PIECE_FINISHED, Dispatcher, Event

MB = 1e6


class RecordingTorrent:
    """What a Download asks of its torrent, recorded (no libtorrent: the pieces are in the file already)."""

    def __init__(self):
        self.moved_to = None
        self.read_piece_calls = 0

    def read_piece(self, p):       # only when the file cannot give a piece: counted, never answered
        self.read_piece_calls += 1

    def move_storage(self, path):
        self.moved_to = path

    def prioritize(self, priorities):
        pass

    def leechers_announced(self):
        return None

    def set_piece_deadline(self, p, ms):
        pass

    def status(self):
        return {"done": 0}

    def peers(self):
        return []


class FileSession:
    """The session as a Download sees it with the posix back-end: verified pieces are in the file."""

    verified_pieces_in_file = True

    def __init__(self):
        self.dispatcher = Dispatcher()
        self.torrent = RecordingTorrent()

    def add(self, metainfo, save_path, **kw):
        return self.torrent

    def remove(self, name, delete_files=False):
        pass

    def wait_removed(self, name, timeout=10):
        return True


def piece_order(n: int, shuffled: bool) -> list:
    if not shuffled:
        return list(range(n))
    order = []
    for s in range(0, n, 32):
        window = list(range(s, min(n, s + 32)))
        random.Random(s).shuffle(window)
        order += window
    return order


def pace(order, gap: float, each=None) -> None:
    for p in order:
        if each is not None:
            each(p)
        time.sleep(gap)


def run_ours(blob: Path, lt_: tf.LayerTorrent, order: list, gap: float) -> float:
    """CPU seconds of this process from the first piece event to the reader's last byte."""
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        ses, store = FileSession(), LayerStore(Path(tmp))
        dl = Download(ses, store, lt_, config=StreamSection(first_piece_gate=0)).start()
        os.link(blob, store.download_path(lt_.digest))   # what libtorrent's posix back-end wrote and hashed
        name, got = str(lt_.digest), [0]

        def reader():
            for chunk in dl.stream(0):
                got[0] += len(chunk)
        cpu0 = time.process_time()
        th = threading.Thread(target=reader, name="reader")
        th.start()
        pace(order, gap, lambda p: ses.dispatcher.dispatch_all([Event(PIECE_FINISHED, name, {"piece": p})]))
        give_up = time.monotonic() + 60
        while ses.torrent.moved_to is None:   # the verdict runs on the download's worker
            if time.monotonic() > give_up or dl.error is not None:
                raise SystemExit(f"bench_stream: the download did not verify ({dl.error})")
            time.sleep(0.001)
        store.download_path(lt_.digest).rename(store.layers_dir / name)   # libtorrent's move
        ses.dispatcher.dispatch(Event(MOVED, name, {"path": str(store.layers_dir)}))
        th.join(60)
        cpu = time.process_time() - cpu0
        if got[0] != lt_.size or not dl.verified or ses.torrent.read_piece_calls:
            raise SystemExit(f"bench_stream: streamed {got[0]} of {lt_.size} bytes, verified {dl.verified}, "
                             f"{ses.torrent.read_piece_calls} pieces not in the file")
        return cpu


def run_floor(blob: Path, lt_: tf.LayerTorrent, gap: float) -> float:
    """CPU seconds of reading each piece once, in order, into the sha256 (paced like the events)."""
    fd = os.open(blob, os.O_RDONLY)
    try:
        sha = hashlib.sha256()
        cpu0 = time.process_time()

        def each(p):
            a, b = lt_.piece_range(p)
            sha.update(os.pread(fd, b - a, a))
        pace(range(lt_.num_pieces), gap, each)
        cpu = time.process_time() - cpu0
    finally:
        os.close(fd)
    if sha.hexdigest() != lt_.digest.hex:
        raise SystemExit("bench_stream: the floor's sha256 does not match")
    return cpu


def run_pacing(n: int, gap: float) -> float:
    """CPU seconds the event pacing costs by itself (the sleeps between events)."""
    cpu0 = time.process_time()
    pace(range(n), gap)
    return time.process_time() - cpu0



def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--gap", type=float, default=0.0002, help="seconds between piece events")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--default-gc", action="store_true",
                    help="keep Python's garbage-collector settings (the bridge settles them at start-up)")
    a = ap.parse_args(argv)
    if a.size_mib < 1 or a.rounds < 1 or not 0 <= a.gap <= 0.1:
        ap.error("wants --size-mib >= 1, --rounds >= 1 and --gap from 0 to 0.1")
    if not a.default_gc:
        settle_garbage_collector()   # as the bridge does before its first request
    with tempfile.TemporaryDirectory(prefix="bench-stream-blob-") as tmp:
        blob = Path(tmp) / "blob"
        data = os.urandom(a.size_mib << 20)
        blob.write_bytes(data)
        hasher = tf.PieceHasher(len(data))
        hasher.update(data)
        lt_ = tf.build_metainfo(Digest.of_bytes(data), len(data), hasher.pieces())
        del data
        mb = lt_.size / MB
        out = {"size_mib": a.size_mib, "piece_kib": lt_.piece_length >> 10, "gap_s": a.gap, "rounds": a.rounds}
        for kind in ("in_order", "shuffled"):
            order = piece_order(lt_.num_pieces, kind == "shuffled")
            rows = []
            for _ in range(a.rounds):   # alternating: the machine is shared
                pacing = run_pacing(lt_.num_pieces, a.gap)
                ours = run_ours(blob, lt_, order, a.gap) - pacing
                floor = run_floor(blob, lt_, a.gap) - pacing
                rows.append({"ours_ms_per_MB": 1000 * ours / mb, "floor_ms_per_MB": 1000 * floor / mb,
                             "ratio": ours / floor if floor > 0 else None})
            med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            out[kind] = {"runs": rows, **{f"median_{k}": round(v, 3) for k, v in med.items()}}
            spread = [round(r["ratio"], 2) for r in rows]
            print(f"{kind:9s} ours {med['ours_ms_per_MB']:.2f} ms/MB, floor (pread + sha256) "
                  f"{med['floor_ms_per_MB']:.2f} ms/MB: ours / floor {med['ratio']:.2f} (runs {spread}); "
                  f"ours - floor {med['ours_ms_per_MB'] - med['floor_ms_per_MB']:.2f} ms/MB")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0

if __name__ == "__main__":
    sys.exit(main())
