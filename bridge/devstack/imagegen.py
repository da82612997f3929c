"""Make container images without a Docker engine and push them to a registry.

Used by the demo, the tests and the benchmarks: layers are real gzip'd tar
archives of incompressible files (so byte counts mean what they say), the
config is a valid image config, and the push uses the registry's own HTTP API
(monolithic blob upload + manifest PUT).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field

import requests

from layerswarm.bridge.format import mediatypes
from layerswarm.bridge.format.digest import Digest

MT_DOCKER_MANIFEST = mediatypes.DOCKER_MANIFEST
MT_DOCKER_LIST = mediatypes.DOCKER_LIST
MT_DOCKER_CONFIG = mediatypes.DOCKER_CONFIG
MT_DOCKER_LAYER = mediatypes.DOCKER_LAYER
MT_OCI_MANIFEST = mediatypes.OCI_MANIFEST
MT_OCI_INDEX = mediatypes.OCI_INDEX
MT_OCI_CONFIG = mediatypes.OCI_CONFIG
MT_OCI_LAYER = mediatypes.OCI_LAYER


@dataclass
class Blob:
    data: bytes
    media_type: str
    diff_id: str = ""  # sha256 of the uncompressed tar, for layers

    @property
    def digest(self) -> Digest:
        return Digest(hashlib.sha256(self.data).hexdigest())

    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "size": len(self.data), "digest": str(self.digest)}


@dataclass
class Image:
    config: Blob
    layers: list
    manifest: bytes
    manifest_media_type: str
    extra_manifests: list = field(default_factory=list)  # (bytes, media type) of an index's children

    @property
    def manifest_digest(self) -> Digest:
        return Digest.of_bytes(self.manifest)

    @property
    def blobs(self) -> list:
        return [self.config, *self.layers]


def make_layer(size: int, seed: bytes | None = None, name: str = "data.bin", oci: bool = False) -> Blob:
    """A gzip'd tar holding one file of ``size`` incompressible bytes."""
    payload = _random_bytes(size, seed)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        info.mode = 0o644
        info.mtime = 0
        tar.addfile(info, io.BytesIO(payload))
    tar_bytes = raw.getvalue()
    # mtime=0 and level 1: deterministic and fast; random data does not shrink.
    gz = gzip.compress(tar_bytes, compresslevel=1, mtime=0)
    return Blob(gz, MT_OCI_LAYER if oci else MT_DOCKER_LAYER, "sha256:" + hashlib.sha256(tar_bytes).hexdigest())


def _random_bytes(size: int, seed: bytes | None) -> bytes:
    if seed is None:
        return os.urandom(size)
    # Deterministic incompressible stream: SHAKE-256 of the seed.
    return hashlib.shake_256(seed).digest(size) if size < (1 << 24) else _chunked_shake(seed, size)


def _chunked_shake(seed: bytes, size: int) -> bytes:
    out = bytearray()
    i = 0
    while len(out) < size:
        n = min(1 << 24, size - len(out))
        out += hashlib.shake_256(seed + i.to_bytes(8, "big")).digest(n)
        i += 1
    return bytes(out)


def make_image(layer_sizes=(1 << 20,), seed: bytes | None = None, oci: bool = False,
               arch: str = "amd64") -> Image:
    layers = [make_layer(sz, None if seed is None else seed + b"/%d" % i, f"layer{i}.bin", oci)
              for i, sz in enumerate(layer_sizes)]
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/layer0.bin"], "Env": ["PATH=/"]},
        "rootfs": {"type": "layers", "diff_ids": [l.diff_id for l in layers]},
        "history": [{"created_by": f"layerswarm imagegen layer {i}"} for i in range(len(layers))],
    }
    if seed is not None:
        config["config"]["Labels"] = {"layerswarm.seed": seed.hex()}
    cfg = Blob(json.dumps(config, sort_keys=True).encode(), MT_OCI_CONFIG if oci else MT_DOCKER_CONFIG)
    mt = MT_OCI_MANIFEST if oci else MT_DOCKER_MANIFEST
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt,
        "config": cfg.descriptor(),
        "layers": [l.descriptor() for l in layers],
    }
    return Image(cfg, layers, json.dumps(manifest, indent=3).encode(), mt)


def make_index(images: list, platforms: list, oci: bool = True) -> Image:
    """An OCI index (or Docker manifest list) over ``images``; blobs are the union."""
    mt = MT_OCI_INDEX if oci else MT_DOCKER_LIST
    manifests = []
    for img, (os_, arch) in zip(images, platforms):
        manifests.append({"mediaType": img.manifest_media_type, "size": len(img.manifest),
                          "digest": str(img.manifest_digest), "platform": {"os": os_, "architecture": arch}})
    body = json.dumps({"schemaVersion": 2, "mediaType": mt, "manifests": manifests}, indent=3).encode()
    blobs = [b for img in images for b in img.blobs]
    first = images[0]
    return Image(first.config, [b for b in blobs if b is not first.config], body, mt,
                 extra_manifests=[(img.manifest, img.manifest_media_type) for img in images])


def push(registry_url: str, repo: str, tag: str, image: Image, session: requests.Session | None = None) -> Digest:
    """Push ``image`` as ``repo:tag`` to a registry (no auth); returns the manifest digest."""
    s = session or requests.Session()
    base = registry_url.rstrip("/")
    for blob in image.blobs:
        d = str(blob.digest)
        if s.head(f"{base}/v2/{repo}/blobs/{d}", timeout=30).status_code == 200:
            continue
        r = s.post(f"{base}/v2/{repo}/blobs/uploads/", timeout=30)
        r.raise_for_status()
        loc = r.headers["Location"]
        if loc.startswith("/"):
            loc = base + loc
        sep = "&" if "?" in loc else "?"
        r = s.put(f"{loc}{sep}digest={d}", data=blob.data, timeout=300,
                  headers={"Content-Type": "application/octet-stream"})
        r.raise_for_status()
    for body, mt in image.extra_manifests:
        r = s.put(f"{base}/v2/{repo}/manifests/{Digest.of_bytes(body)}", data=body,
                  headers={"Content-Type": mt}, timeout=30)
        r.raise_for_status()
    r = s.put(f"{base}/v2/{repo}/manifests/{tag}", data=image.manifest,
              headers={"Content-Type": image.manifest_media_type}, timeout=30)
    r.raise_for_status()
    return image.manifest_digest


def write_docker_save(path: str, repo_tag: str, image: Image) -> None:
    """Write a ``docker save`` style tarball (what ``docker load`` and ``layerswarm seed`` read)."""
    with tarfile.open(path, "w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
        cfg_name = f"{image.config.digest.hex}.json"
        add(cfg_name, image.config.data)
        layer_names = []
        for layer in image.layers:
            name = f"{layer.digest.hex}/layer.tar"
            add(name, layer.data)
            layer_names.append(name)
        add("manifest.json", json.dumps([{"Config": cfg_name, "RepoTags": [repo_tag],
                                          "Layers": layer_names}]).encode())
