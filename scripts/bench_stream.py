#!/usr/bin/env python3
"""CPU per MB of the bridge's own streaming work, apart from libtorrent and the network: a
:class:`~layerswarm.bridge.node.stream.Download` fed piece-finished events by hand (pieces in the partial
file, as with the posix disk back-end) and one reader streaming it from byte 0 to a socket, against the
floor of what a verified stream cannot skip (each piece read once from the file, fed to the whole-blob
sha256 and sent).

``scripts/bench_peer.py`` measures a streaming peer against a raw libtorrent session end to end, but
on two shared cores its ratio moves by 0.3 between runs; this one has no network and no other process,
so it tells whether a change to the piece path (the hash cursor, the hand-off to readers, the reader's
loop) costs or saves CPU.  Only the torrent and the session are stand-ins (they record what the download
asks of them); the store, the dispatcher, the download and the reader are the bridge's.  The reader's
bytes go to a socket pair drained by a thread, two ways: the reader's thread writes every chunk
(``reader_writes``: a TLS listener, or no socket offered), or the listener offers the socket after the
first chunk and the hash cursor writes the pieces (``cursor_writes``: format/directsend.py, what a plain
listener does).  Pieces finish ``--gap`` seconds apart (as from a network: each one wakes the reader;
0.2 ms by default, about 640 MB/s at 128 KiB pieces), in order or shuffled within windows of 32
(rarest-first); the event pacing's own CPU is measured too and taken out of every side.  Rounds
alternate the three sides::

    .venv/bin/python scripts/bench_stream.py [--size-mib 64] [--gap 0.0002] [--rounds 9] [--json out.json] [--default-gc]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from layerswarm.bridge.config import StreamSection
from layerswarm.bridge.format import layertorrent as tf
from layerswarm.bridge.format.digest import Digest
from layerswarm.bridge.format.directsend import Sent, SocketSlot
from layerswarm.bridge.http.server import settle_garbage_collector
from layerswarm.bridge.node.readers import LayerStream
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

    def prompt(self, name, on):
        pass

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


class Client:
    """The far end of a socket pair, drained by a thread (what a client reading the answer costs is
    in every side alike); ``server`` is the end the stream writes to, non-blocking as a listener's."""

    def __init__(self):
        self.server, self.client = socket.socketpair()
        self.server.settimeout(60)
        self.received = 0
        self.thread = threading.Thread(target=self._drain, name="client", daemon=True)
        self.thread.start()

    def _drain(self):
        buf = bytearray(1 << 20)
        while n := self.client.recv_into(buf):
            self.received += n

    def close(self) -> int:
        """Bytes the client got, once the stream ended."""
        self.server.shutdown(socket.SHUT_WR)
        self.thread.join(60)
        self.server.close()
        self.client.close()
        return self.received


def run_ours(blob: Path, lt_: tf.LayerTorrent, order: list, gap: float, cursor_writes: bool) -> float:
    """CPU seconds of this process from the first piece event to the client's last byte."""
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        ses, store = FileSession(), LayerStore(Path(tmp))
        dl = Download(ses, store, lt_, config=StreamSection(first_piece_gate=0)).start()
        os.link(blob, store.download_path(lt_.digest))   # what libtorrent's posix back-end wrote and hashed
        name, got = str(lt_.digest), [0]
        cpu0 = time.process_time()
        client = Client()
        slot = SocketSlot() if cursor_writes else None

        def reader():   # what the listener's _pump_socket does with the answer's chunks
            for chunk in LayerStream(dl, 0, slot):
                got[0] += len(chunk)
                if chunk.__class__ is Sent:
                    continue
                client.server.sendall(chunk)
                if slot is not None:
                    slot.fd = client.server.fileno()   # offered after the first chunk, as the listener does
            if slot is not None:
                slot.fd = None
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
        received = client.close()
        cpu = time.process_time() - cpu0
        if got[0] != lt_.size or received != lt_.size or not dl.verified or ses.torrent.read_piece_calls:
            raise SystemExit(f"bench_stream: streamed {got[0]} ({received} received) of {lt_.size} bytes, "
                             f"verified {dl.verified}, {ses.torrent.read_piece_calls} pieces not in the file")
        return cpu


def run_floor(blob: Path, lt_: tf.LayerTorrent, gap: float) -> float:
    """CPU seconds of reading each piece once, in order, into the sha256 and the socket (paced like the
    events)."""
    fd = os.open(blob, os.O_RDONLY)
    try:
        sha = hashlib.sha256()
        cpu0 = time.process_time()
        client = Client()

        def each(p):
            a, b = lt_.piece_range(p)
            buf = os.pread(fd, b - a, a)
            sha.update(buf)
            client.server.sendall(buf)
        pace(range(lt_.num_pieces), gap, each)
        received = client.close()
        cpu = time.process_time() - cpu0
    finally:
        os.close(fd)
    if sha.hexdigest() != lt_.digest.hex or received != lt_.size:
        raise SystemExit("bench_stream: the floor's sha256 does not match, or the client missed bytes")
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
        sides = ("reader_writes", "cursor_writes", "floor")
        for kind in ("in_order", "shuffled"):
            order = piece_order(lt_.num_pieces, kind == "shuffled")
            rows = []
            for _ in range(a.rounds):   # alternating: the machine is shared
                pacing = run_pacing(lt_.num_pieces, a.gap)
                cpu = {"reader_writes": run_ours(blob, lt_, order, a.gap, cursor_writes=False) - pacing,
                       "cursor_writes": run_ours(blob, lt_, order, a.gap, cursor_writes=True) - pacing,
                       "floor": run_floor(blob, lt_, a.gap) - pacing}
                row = {f"{k}_ms_per_MB": 1000 * cpu[k] / mb for k in sides}
                row["cursor_over_reader"] = cpu["cursor_writes"] / cpu["reader_writes"]
                rows.append(row)
            med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            out[kind] = {"runs": rows, **{f"median_{k}": round(v, 3) for k, v in med.items()}}
            spread = [round(r["cursor_over_reader"], 2) for r in rows]
            print(f"{kind:9s} reader writes {med['reader_writes_ms_per_MB']:.2f} ms/MB, cursor writes "
                  f"{med['cursor_writes_ms_per_MB']:.2f} ms/MB, floor (pread + sha256 + send) "
                  f"{med['floor_ms_per_MB']:.2f} ms/MB; cursor / reader {med['cursor_over_reader']:.2f} "
                  f"(runs {spread}); above the floor: reader {med['reader_writes_ms_per_MB'] - med['floor_ms_per_MB']:.2f}, "
                  f"cursor {med['cursor_writes_ms_per_MB'] - med['floor_ms_per_MB']:.2f} ms/MB")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0

if __name__ == "__main__":
    sys.exit(main())
