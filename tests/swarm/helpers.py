"""Small helpers for the swarm tests: images, client reads, concurrent pulls, store checks, raw seeders."""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import requests

from layerswarm.bridge.devstack import imagegen
from layerswarm.bridge.format.digest import Digest
from tests.fixtures import free_port, stats

REPO = "library/app"


def push_layer(origin_url: str, size: int, seed: bytes, tag: str = "v1"):
    """Push a one-layer image; returns its layer Blob (``.data``, ``.digest``)."""
    img = imagegen.make_image((size,), seed=seed)
    imagegen.push(origin_url, REPO, tag, img)
    return img.layers[0]


def get(url: str, digest, headers=None, timeout: float = 120) -> tuple:
    """(status, body bytes, error or None): a cut connection is an error, with the bytes got so far."""
    body = bytearray()
    try:
        with requests.get(f"{url}/v2/{REPO}/blobs/{digest}", headers=headers or {}, stream=True,
                          timeout=timeout) as r:
            for chunk in r.raw.stream(1 << 16, decode_content=False):
                body += chunk
            want = int(r.headers.get("Content-Length", len(body)))
            if len(body) != want:
                return r.status_code, bytes(body), OSError(f"short body: {len(body)} of {want}")
            return r.status_code, bytes(body), None
    except Exception as exc:  # noqa: BLE001 - the caller asserts on it
        return None, bytes(body), exc


def fetched(bridge, kind: str) -> int:
    try:
        return stats(bridge)["fetched"][kind]
    except (requests.RequestException, ValueError, KeyError):
        return 0


def store_files(store: Path) -> dict:
    """area -> sorted file names, for layers/, incoming/, downloads/."""
    out = {}
    for area in ("layers", "incoming", "downloads"):
        d = Path(store) / area
        out[area] = sorted(os.listdir(d)) if d.is_dir() else []
    return out


def assert_store_clean(store: Path, stored=(), wait: float = 10) -> None:
    """Only verified blobs in layers/ (exactly ``stored``), nothing partial anywhere."""
    want = sorted(str(d) for d in stored)
    deadline = time.monotonic() + wait
    while True:
        files = store_files(store)
        ok = files["layers"] == want and not files["incoming"] and not files["downloads"]
        if ok or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert ok, files
    for d in stored:
        assert Digest.of_bytes((Path(store) / "layers" / str(d)).read_bytes()) == d


def start_ltseed(fleet, tag: str, torrent: bytes, name: str, data: bytes, rate: int = 0):
    """A raw libtorrent seeder (tests/swarm/ltseed.py) for ``data`` under ``torrent``, killed with the fleet."""
    d = fleet.tmp / f"ltseed-{tag}"
    d.mkdir()
    (d / name).write_bytes(data)
    (d / "t.torrent").write_bytes(torrent)
    return fleet.start([sys.executable, "-m", "tests.swarm.ltseed", d / "t.torrent", d, free_port(), rate],
                       f"ltseed-{tag}", ready=lambda log: "seeding" in log)


def pull_blob(url: str, repo: str, digest, timeout: float = 180) -> bytes:
    r = requests.get(f"{url}/v2/{repo}/blobs/{digest}", timeout=timeout)
    r.raise_for_status()
    return r.content


def pull_all(bridges, repo, digests, timeout=180):
    """Every bridge GETs every digest at the same moment; returns {(bridge idx, digest): bytes or exc}."""
    results = {}
    barrier = threading.Barrier(len(bridges) * len(digests))

    def one(i, b, d):
        barrier.wait()
        try:
            results[(i, d)] = pull_blob(b.url, repo, d, timeout)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            results[(i, d)] = exc
    threads = [threading.Thread(target=one, args=(i, b, d)) for i, b in enumerate(bridges) for d in digests]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 30)
    return results
