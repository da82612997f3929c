"""Prebuilt images as layers to seed: docker save tarballs, OCI layouts, raw blobs, registry references.

Each source becomes a list of :class:`Layer` (label, size, digest when
known, an opener); :func:`layer_chunks` reads one with its checks (size, and
the uncompressed ``diff_id`` of a docker save layer).  ``docker://`` references
are read through the one registry client (sources/upstream.py).
"""
from __future__ import annotations

import hashlib
import json
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import requests

from layerswarm.bridge.config import UpstreamConfig
from layerswarm.bridge.format.digest import Digest
from layerswarm.bridge.format.errors import DigestMismatch, InvalidDigest, RegistryError, UserError
from layerswarm.bridge.format.mediatypes import MANIFEST_TYPES
from layerswarm.bridge.sources.upstream import UpstreamClient

CHUNK = 1 << 20

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


# -- docker:// references ---------------------------------------------------------
_REF = re.compile(r"^docker://(?P<host>[^/]+)/(?P<repo>[a-z0-9._/-]+?)(?::(?P<tag>[\w][\w.-]{0,127}))?"
                  r"(?:@(?P<digest>sha256:[a-f0-9]{64}))?$")


class RegistryImage:
    """``docker://host[:port]/repo[:tag|@digest]``: its layers, read with the upstream client."""

    def __init__(self, ref: str, plain_http: bool, token: str | None):
        m = _REF.fullmatch(ref)
        if not m:
            raise UserError(f"{ref}: not an image reference (docker://host[:port]/repo[:tag|@digest])")
        host = m.group("host")
        loopback = host.split(":")[0] in ("localhost", "127.0.0.1", "[::1]") or host.startswith("127.")
        self.repo = m.group("repo")
        self.ref = m.group("digest") or m.group("tag") or "latest"
        self.label = ref
        self.client = UpstreamClient(UpstreamConfig(host, f"{'http' if plain_http or loopback else 'https'}://{host}",
                                                    token=token), connect_timeout=10, read_timeout=30)

    def served_anonymously(self) -> bool:
        """Whether the registry lets anyone at all pull this repository (no token, no credentials)."""
        try:
            status = self.client.pull_probe(self.repo, self.client.anonymous, kind="seed")
        except RegistryError as exc:
            raise UserError(f"{self.label}: registry unreachable ({exc.message})") from None
        return status not in (401, 403)   # a 404 is for layers() to report

    def _get(self, suffix: str, headers=None, stream=False):
        try:
            r = self.client.request("GET", self.repo, suffix, headers or {}, stream=stream)
            self.client.raise_for_status(r, RegistryError("NOT_FOUND", "unknown", 404))
        except RegistryError as exc:
            if exc.status in (401, 403):
                raise UserError(f"{self.label}: access denied by the registry ({exc.status})") from None
            if exc.status == 404:
                raise UserError(f"{self.label}: unknown image reference or blob ({suffix})") from None
            raise UserError(f"{self.label}: registry answered {exc.status}: {exc.message}") from None
        return r

    def manifest(self, ref: str) -> dict:
        r = self._get(f"manifests/{ref}", {"Accept": ", ".join(MANIFEST_TYPES)})
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
        # The client follows a redirect to object storage without our Authorization.
        return _RawReader(self._get(f"blobs/{d}", {"Accept-Encoding": "identity"}, stream=True))


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


def layer_chunks(layer: Layer, progress=None):
    """The layer's bytes in chunks, checked: size, and the uncompressed diff_id when known."""
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
            if progress is not None:
                progress.update(len(b))
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
