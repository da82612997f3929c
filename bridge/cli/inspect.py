"""``layerswarm inspect [DIGEST...] --tracker URL``: swarm table from /swarms (+ scrape)."""
from __future__ import annotations

import os
import time

import bencodepy
import requests

from layerswarm.bridge.format.digest import Digest, InvalidDigest
from layerswarm.bridge.format.errors import UserError


def add_arguments(p) -> None:
    p.add_argument("digests", nargs="*", metavar="DIGEST", help="layer digests (sha256:<hex>); default all swarms")
    p.add_argument("--tracker", default=os.environ.get("LAYERSWARM_TRACKER", "http://127.0.0.1:6969"),
                   help="tracker base URL (env LAYERSWARM_TRACKER, default %(default)s)")
    p.add_argument("--timeout", type=float, default=10.0)


def _get(url: str, timeout: float, **kw):
    try:
        r = requests.get(url, timeout=timeout, **kw)
    except requests.RequestException as exc:
        raise UserError(f"tracker unreachable at {url}: {exc.__class__.__name__}") from None
    if r.status_code != 200:
        raise UserError(f"tracker answered {r.status_code} for {url}")
    return r


def fetch_rows(base: str, digests: list, timeout: float) -> list:
    try:
        rows = _get(f"{base}/swarms", timeout).json()
    except ValueError:
        raise UserError(f"{base}/swarms did not answer JSON: is that a layerswarm tracker?") from None
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
            scrape = bencodepy.decode(_get(f"{base}/scrape", timeout,
                                           params={"info_hash": bytes.fromhex(row["info_hash"])}).content)
            f = scrape.get(b"files", {}).get(bytes.fromhex(row["info_hash"]))
            if f:
                row.update(seeders=f[b"complete"], leechers=f[b"incomplete"], completed=f[b"downloaded"])
        out.append(row)
    return out


def format_table(rows: list, now: float | None = None) -> str:
    now = now or time.time()
    head = ("DIGEST", "INFO-HASH", "SIZE", "SEEDERS", "LEECHERS", "COMPLETED", "LAST ANNOUNCE")
    lines = [head]
    for r in rows:
        last = r.get("last_announce")
        lines.append((r.get("digest") or "(unpublished)", (r.get("info_hash") or "-")[:16],
                      "-" if r.get("size") is None else str(r["size"]), str(r["seeders"]), str(r["leechers"]),
                      str(r["completed"]), f"{max(0, now - last):.0f}s ago" if last else "never"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def run(args) -> int:
    digests = []
    for text in args.digests:
        try:
            digests.append(Digest.parse(text))
        except InvalidDigest as exc:
            raise UserError(str(exc)) from None
    rows = fetch_rows(args.tracker.rstrip("/"), digests, args.timeout)
    print(format_table(rows) if rows else "no swarms")
    return 0
