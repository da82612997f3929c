"""Small helpers for the swarm fault tests: images, client reads, waiting, store checks."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import requests

from layerswarm.bridge.devstack import imagegen
from layerswarm.bridge.format.digest import Digest
from tests import procs

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


def wait_for(check, timeout: float = 60, what: str = "condition", step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = check()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stats(bridge) -> dict:
    return requests.get(bridge.url + "/_layerswarm/stats", timeout=10).json()


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
    tmp = fleet.tmp
    d = tmp / f"ltseed-{tag}"
    d.mkdir()
    (d / name).write_bytes(data)
    (d / "t.torrent").write_bytes(torrent)
    p = procs.Proc([sys.executable, "-m", "tests.swarm.ltseed", d / "t.torrent", d, procs.free_port(), rate],
                   tmp / f"ltseed-{tag}.log", name=f"ltseed-{tag}")
    fleet.others.append(p)
    p.wait_until(lambda: "seeding" in p.log_text(), what="seeding")
    return p
