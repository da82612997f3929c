"""``layerswarm seed``: put prebuilt layers into the store, publish their torrents, seed them.

SOURCE is a ``docker save`` tarball, an OCI layout (directory or tar), a raw
blob file, or ``docker://host[:port]/repo[:tag|@digest]`` (preheat from a
registry).  Everything is read and verified before anything is committed, so
bad input leaves nothing behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sys
import tarfile
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import requests

from layerswarm.bridge.format.digest import Digest, InvalidDigest
from layerswarm.bridge.format.errors import DigestMismatch, LayerswarmError, StoreFull, UserError

CHUNK = 1 << 20
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = MANIFEST_TYPES[:2]


def add_arguments(p) -> None:
    p.add_argument("sources", nargs="*", metavar="SOURCE",
                   help="docker save tarball, OCI layout (dir or tar), raw blob file, or docker://host/repo:tag; "
                        "none: seed what the store already holds")
    p.add_argument("--tracker", default=os.environ.get("LAYERSWARM_TRACKER"), help="tracker base URL (env LAYERSWARM_TRACKER)")
    p.add_argument("--token", default=os.environ.get("LAYERSWARM_PUBLISH_TOKEN"), help="publish token (env LAYERSWARM_PUBLISH_TOKEN)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--store-dir", default=None, help="layer store to fill and seed from in the foreground "
                       "(default $LAYERSWARM_STORE or /var/lib/layerswarm/store)")
    where.add_argument("--bridge", default=None, help="hand layers to a running bridge at this URL instead")
    p.add_argument("--bridge-token", default=os.environ.get("LAYERSWARM_ADMIN_TOKEN"), help="admin token of the bridge")
    p.add_argument("--platform", action="append", default=[], metavar="OS/ARCH",
                   help="only these platforms of a multi-platform image (repeatable; default all)")
    p.add_argument("--listen", default="0.0.0.0:6881", help="BitTorrent listen address (foreground mode)")
    p.add_argument("--cap", default=None, help="store size cap, e.g. 50G (foreground mode)")
    p.add_argument("--raw", action="store_true", help="treat every file SOURCE as a raw blob, even a tar")
    p.add_argument("--plain-http", action="store_true", help="use http:// for docker:// references (default only for loopback)")
    p.add_argument("--registry-token", default=None, help="Bearer token for docker:// references")
    p.add_argument("--exit", action="store_true", help="publish and exit instead of seeding in the foreground")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


# -- sources -----------------------------------------------------------------
@dataclass
class Layer:
    label: str
    size: int
    digest: Digest | None
    open: Callable
    diff_id: Digest | None = None   # docker save: sha256 of the uncompressed tar, checked too


def _digest_or_none(text: str) -> Digest | None:
    try:
        return Digest.parse(text)
    except InvalidDigest:
        return None


def _platform_ok(desc: dict, platforms: list) -> bool:
    if not platforms:
        return True
    p = desc.get("platform") or {}
    key = f"{p.get('os')}/{p.get('architecture')}"
    if p.get("variant"):
        return key in platforms or f"{key}/{p['variant']}" in platforms
    return key in platforms


def _layers_of_manifests(read_blob, top: dict, platforms: list, label: str) -> list:
    """Walk an index/manifest (OCI or Docker) down to layer descriptors."""
    out = []
    todo = [top]
    while todo:
        m = todo.pop(0)
        if "manifests" in m:
            kids = [d for d in m["manifests"] if _platform_ok(d, platforms)]
            if not kids and m["manifests"]:
                raise UserError(f"{label}: no manifest for platform {', '.join(platforms)}")
            for d in kids:
                todo.append(_json(read_blob(d["digest"]), label))
        elif "layers" in m:
            out.extend(m["layers"])
        else:
            raise UserError(f"{label}: not an image manifest")
    return out


def _json(data: bytes, label: str):
    try:
        return json.loads(data)
    except ValueError:
        raise UserError(f"{label}: invalid JSON in image metadata") from None


def _is_tar(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(512)
    return len(head) == 512 and head[257:262] == b"ustar"


def sources_from_path(path: Path, platforms: list, raw: bool) -> list:
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    if path.is_dir():
        if not (path / "oci-layout").is_file() or not (path / "index.json").is_file():
            raise UserError(f"{path}: a directory but not an OCI image layout (no oci-layout/index.json)")
        return _oci_layout(lambda rel: (path / rel).read_bytes(),
                           lambda rel: (path / rel).stat().st_size,
                           lambda rel: open(path / rel, "rb"), platforms, str(path))
    if not path.is_file():
        raise UserError(f"{path}: not a regular file")
    if raw or not _is_tar(path):
        d = _digest_or_none(path.name) or _digest_or_none("sha256:" + path.name)
        return [Layer(str(path), path.stat().st_size, d, lambda: open(path, "rb"))]
    return _tar_image(path, platforms)


def _tar_image(path: Path, platforms: list) -> list:
    label = str(path)
    try:
        with tarfile.open(path, "r:") as tar:
            members = {m.name.lstrip("./") if m.name.startswith("./") else m.name: m for m in tar.getmembers()}
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UserError(f"{label}: corrupt tar ({exc})") from None

    def member(rel: str):
        m = members.get(rel)
        if m is None or not m.isfile():
            raise UserError(f"{label}: missing {rel} in the tarball")
        return m

    def read(rel: str) -> bytes:
        with tarfile.open(path, "r:") as tar:
            return tar.extractfile(member(rel)).read()

    def opener(rel: str):
        m = member(rel)

        def op():
            tar = tarfile.open(path, "r:")
            f = tar.extractfile(m)
            f._layerswarm_tar = tar  # keep the archive open with the member
            return f
        return op

    try:
        if "manifest.json" in members:
            return _docker_save(read, member, opener, platforms, label)
        if "oci-layout" in members and "index.json" in members:
            return _oci_layout(read, lambda rel: member(rel).size, lambda rel: opener(rel)(), platforms, label)
    except (tarfile.TarError, EOFError) as exc:
        raise UserError(f"{label}: corrupt tar ({exc})") from None
    raise UserError(f"{label}: a tar but not an image (no manifest.json or oci-layout); use --raw for a layer tar")


def _docker_save(read, member, opener, platforms, label) -> list:
    manifest = _json(read("manifest.json"), label)
    if not isinstance(manifest, list) or not manifest:
        raise UserError(f"{label}: manifest.json lists no images")
    out = []
    for img in manifest:
        try:
            config = _json(read(img["Config"]), label)
            diff_ids = [_digest_or_none(x) for x in config.get("rootfs", {}).get("diff_ids", [])]
            layer_paths = img["Layers"]
        except (KeyError, TypeError, AttributeError):
            raise UserError(f"{label}: manifest.json is not a docker save manifest") from None
        if platforms and f"{config.get('os')}/{config.get('architecture')}" not in platforms:
            continue
        for i, rel in enumerate(layer_paths):
            m = re.fullmatch(r"blobs/sha256/([a-f0-9]{64})", rel)
            out.append(Layer(f"{label}:{rel}", member(rel).size, Digest(m.group(1)) if m else None,
                             opener(rel), diff_ids[i] if i < len(diff_ids) else None))
    return out


def _oci_layout(read, size, open_, platforms, label) -> list:
    index = _json(read("index.json"), label)

    def read_blob(digest: str) -> bytes:
        d = _digest_or_none(digest)
        if d is None:
            raise UserError(f"{label}: bad digest {digest!r}")
        try:
            data = read(f"blobs/sha256/{d.hex}")
        except FileNotFoundError:
            raise UserError(f"{label}: blob {d} missing from the layout") from None
        if Digest.of_bytes(data) != d:
            raise UserError(f"{label}: blob {d} does not match its digest")
        return data

    out = []
    for desc in _layers_of_manifests(read_blob, index, platforms, label):
        d = _digest_or_none(desc.get("digest", ""))
        if d is None:
            raise UserError(f"{label}: layer with a bad digest {desc.get('digest')!r}")
        rel = f"blobs/sha256/{d.hex}"
        try:
            sz = size(rel)
        except (FileNotFoundError, UserError):
            raise UserError(f"{label}: layer {d} missing from the layout") from None
        out.append(Layer(f"{label}:{d.short()}", sz, d, lambda rel=rel: open_(rel)))
    return out


# -- docker:// preheat ---------------------------------------------------------
_REF = re.compile(r"^docker://(?P<host>[^/]+)/(?P<repo>[a-z0-9._/-]+?)(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[a-f0-9]{64}))?$")


class Registry:
    def __init__(self, ref: str, plain_http: bool, token: str | None):
        m = _REF.match(ref)
        if not m:
            raise UserError(f"{ref}: not an image reference (docker://host[:port]/repo[:tag|@digest])")
        host = m.group("host")
        loopback = host.split(":")[0] in ("localhost", "127.0.0.1", "[::1]") or host.startswith("127.")
        self.base = f"{'http' if plain_http or loopback else 'https'}://{host}"
        self.repo = m.group("repo")
        self.ref = m.group("digest") or m.group("tag") or "latest"
        self.label = ref
        self.http = requests.Session()
        self.token = token

    def get(self, path: str, accept=None, stream=False) -> requests.Response:
        url = f"{self.base}/v2/{self.repo}/{path}"
        headers = {"Accept": ", ".join(accept)} if accept else {}
        for attempt in (0, 1):
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            try:
                r = self.http.get(url, headers=headers, stream=stream, timeout=30)
            except requests.RequestException as exc:
                raise UserError(f"{self.label}: registry unreachable ({exc.__class__.__name__})") from None
            if r.status_code == 401 and attempt == 0 and self._login(r.headers.get("WWW-Authenticate", "")):
                continue
            return r
        return r

    def _login(self, challenge: str) -> bool:
        if not challenge.lower().startswith("bearer "):
            return False
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", None)
        if not realm:
            return False
        params.setdefault("scope", f"repository:{self.repo}:pull")
        try:
            r = self.http.get(realm, params=params, timeout=30)
            body = r.json() if r.ok else {}
        except (requests.RequestException, ValueError):
            return False
        self.token = body.get("token") or body.get("access_token")
        return bool(self.token)

    def manifest(self, ref: str) -> dict:
        r = self.get(f"manifests/{ref}", accept=MANIFEST_TYPES)
        if r.status_code in (401, 403):
            raise UserError(f"{self.label}: access denied by the registry ({r.status_code})")
        if r.status_code == 404:
            raise UserError(f"{self.label}: unknown image reference")
        if not r.ok:
            raise UserError(f"{self.label}: registry answered {r.status_code}")
        if ref.startswith("sha256:") and Digest.of_bytes(r.content) != Digest.parse(ref):
            raise UserError(f"{self.label}: manifest {ref} does not match its digest")
        return _json(r.content, self.label)

    def layers(self, platforms: list) -> list:
        descs = _layers_of_manifests(lambda d: json.dumps(self.manifest(d)).encode(), self.manifest(self.ref),
                                     platforms, self.label)
        out = []
        for desc in descs:
            d = _digest_or_none(desc.get("digest", ""))
            if d is None or not isinstance(desc.get("size"), int):
                raise UserError(f"{self.label}: layer descriptor without a sha256 digest/size")
            out.append(Layer(f"{self.label}:{d.short()}", desc["size"], d, lambda d=d: self._open_blob(d)))
        return out

    def _open_blob(self, d: Digest):
        r = self.get(f"blobs/{d}", stream=True)  # requests drops Authorization on a cross-host redirect
        if not r.ok:
            raise UserError(f"{self.label}: blob {d} answered {r.status_code}")
        return _RawReader(r)


class _RawReader:
    def __init__(self, r):
        self.r = r

    def read(self, n: int) -> bytes:
        return self.r.raw.read(n, decode_content=False)

    def close(self):
        self.r.close()


# -- reading with checks ---------------------------------------------------------
class _DiffIdCheck:
    """sha256 of the uncompressed layer (gzip or plain) against the config's diff_id."""

    def __init__(self, expect: Digest):
        self.expect = expect
        self.h = hashlib.sha256()
        self.z = None
        self.first = True

    def update(self, chunk: bytes) -> None:
        if self.first:
            self.first = False
            if chunk[:2] == b"\x1f\x8b":
                self.z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        if self.z is None:
            self.h.update(chunk)
            return
        data = chunk
        while data:
            self.h.update(self.z.decompress(data))
            data = self.z.unused_data
            if data:  # concatenated gzip members
                self.z = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def ok(self) -> bool:
        if self.z is not None:
            self.h.update(self.z.flush())
        return self.h.hexdigest() == self.expect.hex


def _chunks(layer: Layer, bar):
    f = layer.open()
    check = _DiffIdCheck(layer.diff_id) if layer.diff_id else None
    try:
        got = 0
        while True:
            try:
                b = f.read(CHUNK)
            except (OSError, EOFError, tarfile.TarError, requests.RequestException, zlib.error) as exc:
                raise UserError(f"{layer.label}: read failed ({exc})") from None
            if not b:
                break
            got += len(b)
            if check:
                try:
                    check.update(b)
                except zlib.error:
                    raise DigestMismatch(f"{layer.label}: not valid gzip") from None
            if bar is not None:
                bar.update(len(b))
            yield b
        if got != layer.size:
            raise DigestMismatch(f"{layer.label}: {got} bytes, expected {layer.size}")
        if check and not check.ok():
            raise DigestMismatch(f"{layer.label}: uncompressed bytes do not match diff_id {layer.diff_id}")
    finally:
        f.close()
        tar = getattr(f, "_layerswarm_tar", None)
        if tar is not None:
            tar.close()


# -- run ----------------------------------------------------------------------
def _parse_size(text: str | None) -> int | None:
    if not text:
        return None
    m = re.fullmatch(r"(\d+)([KMGT]?)i?B?", text.strip(), re.I)
    if not m:
        raise UserError(f"invalid size {text!r} (e.g. 500M, 50G)")
    return int(m.group(1)) << (10 * " KMGT".index((m.group(2) or " ").upper()))


def collect(args) -> list:
    layers = []
    for src in args.sources:
        if src.startswith("docker://"):
            layers += Registry(src, args.plain_http, args.registry_token).layers(args.platform)
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
    if not args.tracker:
        raise UserError("--tracker URL is required (or set LAYERSWARM_TRACKER)")
    from layerswarm.bridge.node.trackerclient import TrackerClient
    tracker = TrackerClient(args.tracker, args.token)
    if not tracker.healthy():
        raise UserError(f"tracker {args.tracker} unreachable")
    layers = collect(args)
    if args.sources and not layers:
        raise UserError("no layers found in the given sources")
    bar = _bar(args, sum(l.size for l in layers))
    try:
        if args.bridge:
            results = _to_bridge(args, layers, bar)
        else:
            return _foreground(args, layers, bar, tracker)
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
            r = requests.post(url, params=params, data=_chunks(l, bar), headers=headers, timeout=600)
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


def _foreground(args, layers, bar, tracker) -> int:
    from layerswarm.bridge.node.peer import Peer, PeerConfig
    from layerswarm.bridge.node.trackerclient import TrackerUnavailable
    store_dir = args.store_dir or os.environ.get("LAYERSWARM_STORE", "/var/lib/layerswarm/store")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        peer = Peer(PeerConfig(store_dir=store_dir, tracker_url=args.tracker, token=args.token,
                               listen=args.listen, cap_bytes=_parse_size(args.cap)))
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
                for c in _chunks(l, bar):
                    w.write(c)
                w.finish([tracker.announce_url])
            # Phase 2: agree on torrents with the tracker (a conflict still leaves nothing).
            chosen = [peer.resolve_torrent(w.torrent) for w in writers]
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
        rows.append((r["digest"], _human(r["size"]), r["info_hash"], "?" if s is None else str(s), r.get("source", "")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip(), flush=True)


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
