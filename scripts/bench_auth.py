#!/usr/bin/env python3
"""What chained authorization costs: upstream requests per pull, and latency per request, in one run.

A real docker-registry with token auth (alice pulls everything, anonymous only ``public/``), a
tracker and one bridge (``--auth-ttl`` from the command line; no service credentials: the bridge
fetches with the client's own).  Two images of ``--layers`` layers: ``public/app`` (pulled
anonymously) and ``private/app`` (pulled by alice).  A pull is what dockerd does: ``GET /v2/``
(401), a token from the bridge's realm for the repository, the manifest by tag, every blob.

1. Upstream HTTP requests per pull, from the registry's access log and the token server's record:
   a cold pull, a warm one within the TTL, and one after the TTL ran out.  ``probe`` (``tags/list``:
   may this client pull R; a 401 challenge then the retry with a token count as two), blob HEADs
   outside a blob fetch (a digest confirmed in R) and the token requests the probes cause are
   what authorization adds; manifests and blob GETs are what any mirror sends (in open mode a
   private repository's blobs come from the registry at every pull: they are never stored).
2. Latency on loopback, each request on a fresh connection, ``--requests`` each, interleaved:
   ``/healthz`` (no authorization at all), then HEAD of a stored public blob with no credentials
   (the anonymous decision, cached), with alice's token, and with her Basic credentials (a cached
   decision under a keyed hash); and HEAD of a private blob with her token (open mode: the
   registry answers it every time).  p50/p90 in ms; "added" is p50 minus ``/healthz``'s p50 in
   the same run.  Also the gate alone in this process (no HTTP), per call.

    .venv/bin/python scripts/bench_auth.py [--layers 10] [--auth-ttl 5] [--requests 300] [--json out.json]
"""
from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import requests

from bench_rollout import ACCEPT, machine_cpu, pct   # scripts/ beside this one
from layerswarm.bridge.devstack import daemons, imagegen
from layerswarm.bridge.devstack.tokenserver import TEST_PASSWORDS, start_token_registry


def pull(bridge_url: str, name: str, user: str | None) -> None:
    """One pull as dockerd makes it; raises on any unexpected answer."""
    s = requests.Session()
    assert s.get(f"{bridge_url}/v2/", timeout=30).status_code == 401
    auth = (user, TEST_PASSWORDS[user]) if user else None
    r = s.get(f"{bridge_url}/_layerswarm/token", auth=auth, timeout=30,
              params={"service": "layerswarm", "scope": f"repository:{name}:pull"})
    r.raise_for_status()
    s.headers["Authorization"] = "Bearer " + r.json()["token"]
    r = s.get(f"{bridge_url}/v2/{name}/manifests/v1", headers={"Accept": ACCEPT}, timeout=30)
    r.raise_for_status()
    m = r.json()
    for d in [m["config"]["digest"]] + [l["digest"] for l in m["layers"]]:
        r = s.get(f"{bridge_url}/v2/{name}/blobs/{d}", timeout=60)
        r.raise_for_status()


def registry_requests(origin) -> list:
    return [(m, p, status) for m, p, status, _ in origin.access_log()]


def counted_pull(bridge_url: str, origin, name: str, user: str | None) -> dict:
    before, tokens = len(registry_requests(origin)), len(origin.token_server.requests)
    pull(bridge_url, name, user)
    got = Counter()
    for method, path, status in registry_requests(origin)[before:]:
        kind = "probe" if "/tags/list" in path else "manifest" if "/manifests/" in path else "blob"
        got[f"{kind} {method}" + (" 401" if status == 401 else "")] += 1
    got["token-server"] = len(origin.token_server.requests) - tokens
    return dict(got)


def latency(url: str, headers: dict, n: int) -> list:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = requests.head(url, headers=headers, timeout=30)   # a new connection each time
        out.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200:
            raise SystemExit(f"HEAD {url} answered {r.status_code}")
    return out


def gate_alone(n: int) -> float:
    """µs per authorization of a request with a token, decision cached, no HTTP (the gate itself)."""
    from layerswarm.bridge.authz.credentials import parse_authorization
    from layerswarm.bridge.authz.gate import ALLOW, Gate
    from layerswarm.bridge.config import ClientAuthSection, UpstreamConfig
    from layerswarm.bridge.sources.upstream import UpstreamClient

    up = UpstreamClient(UpstreamConfig("default", "http://127.0.0.1:9"), 1, 1)
    gate = Gate(ClientAuthSection(), up, secure=False)
    gate._decisions[("", "default", "public/app")] = (ALLOW, time.time() + 600)   # as after one pull
    gate.record(up, "public/app", "sha256:" + "a" * 64)
    header = "Bearer " + gate.tokens.issue("", [("default", "public/app")], time.time() + 600)
    t0 = time.perf_counter()
    for _ in range(n):
        client = gate.client(parse_authorization(header, "c"), "c")
        grant = gate.authorize(client, up, "public/app", "c")
        gate.require(grant, "blobs", "sha256:" + "a" * 64)
    return (time.perf_counter() - t0) / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--layer-bytes", type=int, default=1 << 20)
    ap.add_argument("--auth-ttl", type=float, default=5.0)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    made = []
    with tempfile.TemporaryDirectory(prefix="bench-auth-") as tmp:
        tmp = Path(tmp)
        try:
            origin = start_token_registry(tmp / "origin")
            made.append(origin)
            imgs = {}
            for repo in ("public/app", "private/app"):
                imgs[repo] = imagegen.make_image([a.layer_bytes] * a.layers, seed=repo.encode())
                origin.push(repo, "v1", imgs[repo])
            tracker = daemons.start_tracker(tmp / "tracker")
            made.append(tracker)
            bridge = daemons.start_bridge(tmp, upstream=origin.url, tracker=tracker.url, store=tmp / "store",
                                          extra=("--auth-ttl", str(a.auth_ttl), "--tiny-blob-bytes", "65536"))
            made.append(bridge)
            result = {"layers": a.layers, "auth_ttl_s": a.auth_ttl, "pulls": {}}
            print(f"upstream requests per pull ({a.layers} layers + config; --auth-ttl {a.auth_ttl:g} s)")
            for name, user in (("public/app", None), ("private/app", "alice")):
                rows = {"cold": counted_pull(bridge.url, origin, name, user),
                        "warm": counted_pull(bridge.url, origin, name, user)}
                time.sleep(a.auth_ttl + 0.5)
                rows["after TTL"] = counted_pull(bridge.url, origin, name, user)
                result["pulls"][name] = rows
                for label, got in rows.items():
                    # Here every token request comes from a probe: fetches reuse the token it got.
                    added = sum(n for k, n in got.items() if k.startswith(("probe", "blob HEAD", "token-server")))
                    print(f"  {name:12} {label:9} added by authorization {added:3}   "
                          + "  ".join(f"{k} {n}" for k, n in sorted(got.items()) if n))

            layer = str(imgs["private/app"].layers[0].digest)
            public_layer = str(imgs["public/app"].layers[0].digest)
            scopes = {"scope": ["repository:private/app:pull", "repository:public/app:pull"]}
            tok = requests.get(f"{bridge.url}/_layerswarm/token", auth=("alice", "alice-pw"), timeout=30,
                               params=scopes).json()["token"]
            basic = "Basic " + base64.b64encode(b"alice:alice-pw").decode()
            public = f"{bridge.url}/v2/public/app/blobs/{public_layer}"
            targets = {"healthz": (f"{bridge.url}/healthz", {}),
                       "public blob HEAD, anonymous": (public, {}),
                       "public blob HEAD, token": (public, {"Authorization": f"Bearer {tok}"}),
                       "public blob HEAD, Basic": (public, {"Authorization": basic}),
                       "private blob HEAD, token": (f"{bridge.url}/v2/private/app/blobs/{layer}",
                                                    {"Authorization": f"Bearer {tok}"})}
            # The token lives at most --auth-ttl: measure in rounds shorter than that, fresh token each.
            times = {k: [] for k in targets}
            cpu0 = machine_cpu()
            rounds = max(1, a.requests // 25)
            for _ in range(rounds):
                tok = requests.get(f"{bridge.url}/_layerswarm/token", auth=("alice", "alice-pw"), timeout=30,
                                   params=scopes).json()["token"]
                for k in ("public blob HEAD, token", "private blob HEAD, token"):
                    targets[k][1]["Authorization"] = f"Bearer {tok}"
                for k, (url, headers) in targets.items():
                    times[k] += latency(url, headers, 25)
            cpu1 = machine_cpu()
            busy = 100 * (cpu1[0] - cpu0[0]) / max(1e-9, cpu1[1] - cpu0[1])
            base = pct(times["healthz"], 50)
            print(f"\nlatency on loopback, {rounds * 25} requests each, a new connection each "
                  f"(machine {busy:.0f}% busy{' - machine-bound' if busy > 85 else ''})")
            result["latency_ms"] = {}
            for k, ts in times.items():
                p50, p90 = pct(ts, 50), pct(ts, 90)
                result["latency_ms"][k] = {"p50": p50, "p90": p90, "added_p50": p50 - base}
                print(f"  {k:28} p50 {p50:6.2f}  p90 {p90:6.2f}  added p50 {p50 - base:+6.2f}")
            us = gate_alone(20_000)
            result["gate_us_per_request"] = us
            result["cpu_busy"] = busy
            print(f"  the gate alone (token verify + grant + holding), in process: {us:.0f} µs per request")
            if a.json:
                a.json.write_text(json.dumps(result, indent=1))
        finally:
            for p in reversed(made):
                p.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
