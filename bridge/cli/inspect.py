"""``layerswarm inspect [DIGEST...] --tracker URL...``: a table of layer swarms from the tracker (/swarms + scrape)."""
from __future__ import annotations

import time

from layerswarm.bridge.cli import fleetopts
from layerswarm.bridge.cli.tables import format_table
from layerswarm.bridge.format.digest import Digest
from layerswarm.bridge.format.errors import InvalidDigest, TrackerUnavailable, UserError
from layerswarm.bridge.node.trackerclient import TrackerClient

DEFAULT_TRACKER = "http://127.0.0.1:6969"


def add_arguments(p) -> None:
    p.add_argument("digests", nargs="*", metavar="DIGEST", help="layer digests (sha256:<hex>); default all swarms")
    fleetopts.add_tracker_argument(p, DEFAULT_TRACKER)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the tracker")
    fleetopts.add_arguments(p)


def fetch_rows(tracker: TrackerClient, digests: list) -> list:
    rows = tracker.swarms()
    if not digests:
        return rows
    by_digest = {r["digest"]: r for r in rows if r.get("digest")}
    out = []
    for d in digests:
        row = by_digest.get(str(d))
        if row is None:
            row = {"digest": str(d), "info_hash": None, "size": None, "seeders": 0, "leechers": 0,
                   "completed": 0, "last_announce": None}
        else:  # fresh counts for exactly this swarm
            f = tracker.scrape([row["info_hash"]]).get(row["info_hash"])
            if f:
                row.update(seeders=f["complete"], leechers=f["incomplete"], completed=f["downloaded"])
        out.append(row)
    return out


def render(rows: list, now: float | None = None) -> str:
    now = now or time.time()
    lines = [("DIGEST", "INFO-HASH", "SIZE", "SEEDERS", "LEECHERS", "COMPLETED", "LAST ANNOUNCE")]
    for r in rows:
        last = r.get("last_announce")
        lines.append((r.get("digest") or "(unpublished)", (r.get("info_hash") or "-")[:16],
                      "-" if r.get("size") is None else r["size"], r["seeders"], r["leechers"], r["completed"],
                      f"{max(0, now - last):.0f}s ago" if last else "never"))
    return format_table(lines)


def run(args) -> int:
    digests = []
    for text in args.digests:
        try:
            digests.append(Digest.parse(text))
        except InvalidDigest as exc:
            raise UserError(str(exc)) from None
    try:
        rows = fetch_rows(TrackerClient(fleetopts.trackers(args, DEFAULT_TRACKER), timeout=args.timeout, tls=fleetopts.tls(args)), digests)
    except TrackerUnavailable as exc:
        raise UserError(str(exc)) from None
    print(render(rows) if rows else "no swarms")
    return 0
