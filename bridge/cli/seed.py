"""``layerswarm seed``: put prebuilt layers into the store, publish their torrents, seed them.

SOURCE is a ``docker save`` tarball, an OCI layout (directory or tar), a raw
blob file, or ``docker://host[:port]/repo[:tag|@digest]`` (preheat from a
registry).  Everything is read and verified before anything is committed, so
bad input leaves nothing behind.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import requests

from layerswarm.bridge.cli import fleetopts
from layerswarm.bridge.cli.tables import format_table
from layerswarm.bridge.format.options import parse_pairs
from layerswarm.bridge.format.errors import DigestMismatch, LayerswarmError, StoreFull, UserError
from layerswarm.bridge.format.units import human_size, parse_size
from layerswarm.bridge.sources.images import RegistryImage, layer_chunks, sources_from_path


def add_arguments(p) -> None:
    p.add_argument("sources", nargs="*", metavar="SOURCE",
                   help="docker save tarball, OCI layout (dir or tar), raw blob file, or docker://host/repo:tag; "
                        "none: seed what the store already holds")
    fleetopts.add_tracker_argument(p)
    p.add_argument("--token", default=os.environ.get("LAYERSWARM_PUBLISH_TOKEN"), help="publish token (env LAYERSWARM_PUBLISH_TOKEN)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--store-dir", default=None, help="layer store to fill and seed from in the foreground "
                       "(default $LAYERSWARM_STORE or /var/lib/layerswarm/store)")
    where.add_argument("--bridge", default=None, help="hand layers to a running bridge at this URL instead")
    p.add_argument("--bridge-token", default=os.environ.get("LAYERSWARM_ADMIN_TOKEN"), help="admin token of the bridge")
    p.add_argument("--platform", action="append", default=[], metavar="OS/ARCH",
                   help="only these platforms of a multi-platform image (repeatable; default all)")
    p.add_argument("--listen", default="0.0.0.0:6881", help="BitTorrent listen address (foreground mode)")
    p.add_argument("--ssl-listen", default="0.0.0.0:6882",
                   help="BitTorrent SSL listen address (foreground mode, secure fleet mode)")
    p.add_argument("--cap", default=None, help="store size cap, e.g. 50G (foreground mode)")
    p.add_argument("--upload-budget", default=None, metavar="BYTES",
                   help="upload to peers per second, LAN peers included, e.g. 10M (foreground mode; default: no limit)")
    p.add_argument("--lt-setting", action="append", default=[], metavar="KEY=VALUE",
                   help="raw libtorrent setting applied last (tuning; repeatable), as on the bridge")
    p.add_argument("--raw", action="store_true", help="treat every file SOURCE as a raw blob, even a tar")
    p.add_argument("--plain-http", action="store_true", help="use http:// for docker:// references (default only for loopback)")
    p.add_argument("--registry-token", default=None, help="Bearer token for docker:// references")
    p.add_argument("--exit", action="store_true", help="publish and exit instead of seeding in the foreground")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    fleetopts.add_arguments(p)


# -- run ----------------------------------------------------------------------
def _size(flag: str, text):
    try:
        return parse_size(text)
    except ValueError as exc:
        raise UserError(f"{flag}: {exc}") from None


def collect(args, secure: bool = False) -> list:
    layers = []
    for src in args.sources:
        if src.startswith("docker://"):
            img = RegistryImage(src, args.plain_http, args.registry_token)
            if not secure and not img.served_anonymously():
                # An open swarm serves anyone who asks: only what the registry gives anyone goes there.
                raise UserError(f"{src}: the registry does not serve this repository anonymously; its layers "
                                "would be readable by anyone in an open swarm (seed it in a secure fleet: "
                                "--fleet-ca/--fleet-cert/--fleet-key)")
            layers += img.layers(args.platform)
        else:
            layers += sources_from_path(Path(src), args.platform, args.raw)
    seen, out = set(), []
    for l in layers:
        if l.digest is not None and l.digest in seen:
            continue
        seen.add(l.digest)
        out.append(l)
    return out


def _bar(args, total: int):
    if args.quiet or not sys.stderr.isatty() or total == 0:
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, desc="layers")


def run(args) -> int:
    urls = fleetopts.trackers(args)
    if not urls:
        raise UserError("--tracker URL is required (or set LAYERSWARM_TRACKER)")
    from layerswarm.bridge.node.trackerclient import TrackerClient
    tls = fleetopts.tls(args)
    tracker = TrackerClient(urls, args.token, tls=tls)
    if not tracker.healthy():
        raise UserError(f"tracker {', '.join(urls)} unreachable")
    layers = collect(args, secure=tls is not None)
    if args.sources and not layers:
        raise UserError("no layers found in the given sources")
    bar = _bar(args, sum(l.size for l in layers))
    try:
        if args.bridge:
            results = _to_bridge(args, layers, bar)
        else:
            return _foreground(args, layers, bar, tracker, tls)
    finally:
        if bar is not None:
            bar.close()
    _summary(results, tracker)
    return 0


def _to_bridge(args, layers, bar) -> list:
    url = args.bridge.rstrip("/") + "/_layerswarm/seed"
    headers = {"Authorization": f"Bearer {args.bridge_token}"} if args.bridge_token else {}
    out = []
    for l in layers:
        params = {"size": l.size}
        if l.digest:
            params["digest"] = str(l.digest)
        try:
            r = requests.post(url, params=params, data=layer_chunks(l, bar), headers=headers, timeout=600)
        except requests.ConnectionError:
            raise UserError(f"bridge {args.bridge} unreachable") from None
        except requests.RequestException as exc:
            cause = exc.__context__ or exc
            if isinstance(cause, LayerswarmError):
                raise UserError(str(cause)) from None
            raise UserError(f"sending {l.label} to the bridge failed: {exc.__class__.__name__}") from None
        try:
            body = r.json()
        except ValueError:
            body = {}
        if not r.ok:
            raise UserError(f"bridge refused {l.label}: {body.get('error') or r.status_code}")
        out.append(body)
    return out


def _foreground(args, layers, bar, tracker, tls) -> int:
    from layerswarm.bridge.config import BudgetSection, SessionSection
    from layerswarm.bridge.node.peer import Peer
    from layerswarm.bridge.format.errors import TrackerUnavailable
    store_dir = args.store_dir or os.environ.get("LAYERSWARM_STORE", "/var/lib/layerswarm/store")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        session = SessionSection(peer_listen=args.listen, peer_ssl_listen=args.ssl_listen,
                                 lt_settings=parse_pairs("--lt-setting", args.lt_setting))
    except ValueError as exc:   # InvalidOption too
        raise UserError(f"--listen/--ssl-listen/--lt-setting: {exc}") from None
    try:
        peer = Peer.open(store_dir, tracker.urls, publish_token=args.token, cache_max=_size("--cap", args.cap),
                         session=session, tls=tls,
                         budgets=BudgetSection(upload_budget=_size("--upload-budget", args.upload_budget)))
    except OSError as exc:
        raise UserError(f"cannot open store {store_dir}: {exc.strerror or exc}") from None
    try:
        results = peer.seed_stored()
        writers = []
        try:
            # Phase 1: every layer written and verified; nothing is committed yet.
            for l in layers:
                if l.digest is not None and l.digest in peer.store:
                    continue
                w = peer.store.writer(l.digest, l.size)
                writers.append(w)
                for c in layer_chunks(l, bar):
                    w.write(c)
                w.finish(tracker.announce_urls)
            # Phase 2: agree on torrents with the tracker (a conflict still leaves nothing).
            chosen = [peer.resolve_torrent(w.torrent, w.path) for w in writers]
        except (DigestMismatch, StoreFull, TrackerUnavailable) as exc:
            for w in writers:
                w.abort()
            raise UserError(str(exc)) from None
        except BaseException:
            for w in writers:
                w.abort()
            raise
        for w, (t, source) in zip(writers, chosen):
            w.commit(t.metainfo)
            results.append(peer.seed_torrent(t, source))
        for l in layers:
            if l.digest is not None and l.digest not in {r.digest for r in results}:
                results.append(peer.seed(l.digest))
        if bar is not None:
            bar.close()
        _summary([r.as_dict() for r in results], tracker)
        if args.exit:
            return 0
        print(f"seeding {len(results)} layer(s) on port {peer.session.listen_port}; Ctrl-C to stop",
              file=sys.stderr, flush=True)
        while not stop.wait(1):
            pass
        return 0
    finally:
        peer.close()


def _summary(results: list, tracker) -> None:
    seeders = {}
    if results:
        deadline = time.monotonic() + 5  # give the announces a moment to land
        while True:
            try:
                seeders = tracker.scrape([r["info_hash"] for r in results])
            except Exception:
                seeders = {}
                break
            if all(seeders.get(r["info_hash"], {}).get("complete") for r in results) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
    rows = [("DIGEST", "SIZE", "INFO-HASH", "SEEDERS", "TORRENT")]
    for r in results:
        s = seeders.get(r["info_hash"], {}).get("complete")
        rows.append((r["digest"], human_size(r["size"]), r["info_hash"], "?" if s is None else s, r.get("source", "")))
    print(format_table(rows), flush=True)
