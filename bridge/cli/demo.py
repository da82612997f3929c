"""``layerswarm demo``: the embedded local stack, end to end, on loopback.

Starts, in a work directory that is removed on exit (or Ctrl-C):

1. a tracker (when this build has one),
2. unless ``--upstream`` is given, a local ``docker-registry`` origin holding
   a generated demo image (a few incompressible layers),
3. a bridge whose default upstream is that origin,
4. a real ``dockerd`` with ``registry-mirrors`` pointing at the bridge,

then pulls the image through the bridge and prints, one line per step, what
happened, and a summary taken from the bridge's counters and the origin's
access log.  When the bridge can join a swarm (``--tracker``), a second
bridge — a second host with an empty store — serves a second pull and the
demo shows the bytes it got from peers.  ``--keep-running`` leaves the stack
up until Ctrl-C.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import requests

from layerswarm.bridge.devstack import imagegen
from layerswarm.bridge.devstack import clients
from layerswarm.bridge.devstack import daemons as devstack
from layerswarm.bridge.format.errors import DaemonError, UserError

DEMO_IMAGE = "layerswarm-demo:latest"
TINY_BLOB_BYTES = 1 << 20  # the bridge's default --tiny-blob-bytes: smaller blobs get no torrent
MANIFEST_ACCEPT = ", ".join([imagegen.MT_DOCKER_MANIFEST, imagegen.MT_DOCKER_LIST,
                             imagegen.MT_OCI_MANIFEST, imagegen.MT_OCI_INDEX])


def add_arguments(parser) -> None:
    parser.add_argument("--workdir", metavar="DIR",
                        help="keep state, logs and sockets here (default: a temp dir removed on exit)")
    parser.add_argument("--upstream", metavar="URL",
                        help="use this registry as the origin instead of a local demo registry")
    parser.add_argument("--image", metavar="NAME:TAG", default=None,
                        help=f"image to pull (default {DEMO_IMAGE}; with --upstream, e.g. library/alpine:3.19)")
    parser.add_argument("--layers", type=int, default=3, metavar="N", help="layers in the demo image (default 3)")
    parser.add_argument("--layer-mib", type=float, default=4, metavar="MIB",
                        help="size of each demo layer in MiB (default 4)")
    parser.add_argument("--bridge-port", type=int, default=0, metavar="PORT",
                        help="bridge port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--no-peer", action="store_true",
                        help="skip the peer-to-peer step (a second bridge fetching from the first)")
    parser.add_argument("--keep-running", action="store_true",
                        help="leave the stack up after the pull (until Ctrl-C) and print how to use it")


class _Stack:
    """Everything the demo started, stopped in reverse order."""

    def __init__(self):
        self.procs = []

    def add(self, proc):
        self.procs.append(proc)
        return proc

    def stop(self):
        for p in reversed(self.procs):
            try:
                p.stop()
            except Exception:  # best effort: keep stopping the others
                pass
        self.procs.clear()


def _say(step: str, msg: str) -> None:
    print(f"[{step}] {msg}", flush=True)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.2f} MiB"


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


def run(args) -> int:
    if os.geteuid() != 0:
        raise UserError("the demo starts a Docker daemon: run it as root (scripts/demo.sh)")
    if args.layers < 1 or args.layers > 64:
        raise UserError("--layers must be between 1 and 64")
    if not 0 < args.layer_mib <= 1024:
        raise UserError("--layer-mib must be > 0 and <= 1024")
    try:
        devstack.require_binaries("dockerd", "docker", "containerd", "runc",
                                    *([] if args.upstream else ["docker-registry"]))
    except DaemonError as exc:
        raise UserError(str(exc)) from None

    own_workdir = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="layerswarm-demo-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    # Ctrl-C, kill and a closed terminal all stop the stack (SIGINT explicitly:
    # a shell's background job starts with it ignored).
    old_handlers = {sig: signal.signal(sig, _on_sigterm) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    stack = _Stack()
    failed = True
    try:
        rc = _run(args, workdir, stack)
        failed = False
        return rc
    except DaemonError as exc:
        raise UserError(f"demo failed: {exc}") from None
    except KeyboardInterrupt:
        failed = False
        print("\ninterrupted: stopping the stack", flush=True)
        return 130
    finally:
        stack.stop()
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        if own_workdir and not failed:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs and state kept in {workdir}", flush=True)


def _run(args, workdir: Path, stack: _Stack) -> int:
    _say("workdir", str(workdir))

    # 1. tracker
    tracker = stack.add(devstack.start_tracker(workdir / "tracker"))
    _say("tracker", f"layerswarm tracker on {tracker.url} (log {tracker.log})")

    # 2. origin
    origin = None
    image_ref = args.image or DEMO_IMAGE
    repo, tag = _split_ref(image_ref)
    expected = None
    if args.upstream:
        upstream = args.upstream
        _say("origin", f"external registry {upstream} (its own logs are not visible here)")
    else:
        origin = stack.add(devstack.start_registry(workdir / "origin"))
        upstream = origin.url
        _say("origin", f"docker-registry on {origin.url} (log {origin.log})")
        size = int(args.layer_mib * (1 << 20))
        t0 = time.monotonic()
        expected = imagegen.make_image([size] * args.layers, seed=b"layerswarm-demo")
        imagegen.push(origin.url, repo, tag, expected)
        _say("image", f"generated {repo}:{tag}: {args.layers} layers of {_mib(size)}, "
                      f"pushed to the origin in {time.monotonic() - t0:.1f}s")

    # 3. bridge
    port = args.bridge_port or None
    tracker_url = tracker.url
    bridge = stack.add(devstack.start_bridge(workdir / "bridge", upstream=upstream, tracker=tracker_url,
                                               port=port))
    _say("bridge", f"layerswarm bridge on {bridge.url}, default upstream {upstream}"
                   + (f", tracker {tracker_url}" if tracker_url else "") + f" (log {bridge.log})")

    # 4. dockerd
    docker = stack.add(clients.start_dockerd(workdir / "dockerd", mirrors=[bridge.url]))
    _say("dockerd", f"dockerd on {docker.host} with registry-mirrors [{bridge.url}] (log {docker.log})")

    # 5. pull
    pull_ref = _docker_ref(repo, tag)
    t0 = time.monotonic()
    _pull(docker, pull_ref, bridge)
    took = time.monotonic() - t0
    info = docker.image_inspect(pull_ref)
    _say("pull", f"docker pull {pull_ref}: done in {took:.1f}s, image id {info['Id'][:19]}")
    if expected is not None and info["Id"] != str(expected.config.digest):
        raise UserError(f"pulled image id {info['Id']} is not the pushed config {expected.config.digest}")

    served = _served(bridge)
    if served == 0:
        raise UserError(f"the bridge served no blobs: dockerd did not use the mirror (see {docker.log})")
    _say("pull", f"the bridge answered {served} blob GETs")

    # 6. peer to peer: a second host's bridge fetches the layers from the first
    bridges = [("bridge 1", bridge)]
    if not args.no_peer:
        bridge2 = _peer_step(workdir, stack, tracker, upstream, docker, pull_ref, origin)
        if bridge2 is not None:
            bridges.append(("bridge 2", bridge2))

    # 7. summary
    _summary(pull_ref, repo, tag, bridges, origin, tracker, took)

    if args.keep_running:
        _keep_running(bridge, docker, tracker, origin, pull_ref)
    return 0


def _peer_step(workdir, stack, tracker, upstream, docker, pull_ref, origin) -> None:
    """Pull again through a second bridge (a second host) that shares only the tracker."""
    gets_before = len(devstack.blob_gets(origin.log)) if origin is not None else None
    bridge2 = stack.add(devstack.start_bridge(workdir / "bridge2", upstream=upstream, tracker=tracker.url))
    _say("peer", f"second bridge (another host) on {bridge2.url}, same tracker, empty store")
    docker.remove_all_images()
    docker.set_mirrors([bridge2.url])
    t0 = time.monotonic()
    _pull(docker, pull_ref, bridge2)
    took = time.monotonic() - t0
    src = bridge2.stats().get("blob_bytes", {})
    from_peers = src.get("peer", 0) + src.get("relay", 0)
    line = (f"docker pull {pull_ref} via the second bridge: {took:.1f}s, {from_peers:,} bytes from peers, "
            f"{src.get('origin', 0):,} from the origin")
    if gets_before is not None:
        line += f", origin blob GETs +{len(devstack.blob_gets(origin.log)) - gets_before}"
    _say("peer", line)
    if from_peers == 0 and max((sz for _, sz in _layers_via_bridge(bridge2, *_split_ref(pull_ref))),
                               default=0) < TINY_BLOB_BYTES:
        _say("peer", f"every layer is under {TINY_BLOB_BYTES:,} bytes: the bridge fetches such tiny blobs "
                     "from the origin instead of making torrents (try --layer-mib 4)")
    elif from_peers == 0:
        raise UserError("the second bridge got no bytes from peers (see its log "
                        f"{bridge2.log} and the tracker's {tracker.log})")
    return bridge2


def _pull(docker, ref: str, bridge) -> None:
    """docker pull through ``bridge``; on failure say what the bridge answered, not only dockerd's
    last error (which is about its fallback to Docker Hub, blocked here)."""
    try:
        docker.pull(ref, timeout=900)
    except DaemonError as exc:
        try:
            reqs = bridge.stats().get("requests", {})
            bad = ", ".join(f"{k} x{n}" for k, n in sorted(reqs.items()) if not k.split()[-1].startswith("2"))
        except (requests.RequestException, ValueError):
            bad = "(bridge stats unavailable)"
        last = [ln for ln in str(exc).splitlines() if ln.startswith("Error")][-1:] or [str(exc).splitlines()[0]]
        raise UserError(f"docker pull {ref} through the bridge failed.\n"
                        f"  bridge answered: {bad or 'nothing but 2xx'} (log {bridge.log})\n"
                        f"  dockerd said: {last[0]}") from None


def _split_ref(ref: str) -> tuple:
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        name, tag = ref, "latest"
    if "/" not in name:
        name = f"library/{name}"
    return name, tag


def _docker_ref(repo: str, tag: str) -> str:
    # registry-mirrors applies to Docker Hub names: library/x is pulled as x
    return f"{repo[len('library/'):] if repo.startswith('library/') else repo}:{tag}"


def _layers_via_bridge(bridge, repo: str, tag: str) -> list:
    """(digest, size) of the linux/amd64 layers, read back through the bridge."""
    s = requests.Session()
    r = s.get(f"{bridge.url}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT}, timeout=30)
    r.raise_for_status()
    m = r.json()
    if "manifests" in m:
        pick = next((d for d in m["manifests"] if d.get("platform", {}).get("architecture") == "amd64"
                     and d.get("platform", {}).get("os") == "linux"), m["manifests"][0])
        r = s.get(f"{bridge.url}/v2/{repo}/manifests/{pick['digest']}", headers={"Accept": MANIFEST_ACCEPT},
                  timeout=30)
        r.raise_for_status()
        m = r.json()
    return [(d["digest"], int(d["size"])) for d in m.get("layers", [])]


def _served(bridge) -> int:
    try:
        st = bridge.stats()
    except (requests.RequestException, ValueError) as exc:
        raise UserError(f"bridge stats unavailable at {bridge.url}: {exc}") from None
    return sum(n for k, n in st.get("requests", {}).items() if k.startswith("blob GET 2"))


def _summary(pull_ref, repo, tag, bridges, origin, tracker, took) -> None:
    print("--- summary ---", flush=True)
    print(f"image pulled : {pull_ref} (first pull {took:.1f}s)", flush=True)
    try:
        for i, (digest, size) in enumerate(_layers_via_bridge(bridges[0][1], repo, tag)):
            print(f"layer {i}      : {digest[:19]}  {size:>12,} bytes ({_mib(size)})", flush=True)
    except (requests.RequestException, ValueError, KeyError) as exc:
        print(f"layers       : (manifest not readable back: {exc})", flush=True)
    for label, bridge in bridges:
        try:
            st = bridge.stats()
        except (requests.RequestException, ValueError) as exc:
            print(f"{label:<13}: stats unavailable ({exc})", flush=True)
            continue
        served = sum(n for k, n in st.get("requests", {}).items() if k.startswith("blob GET 2"))
        src = st.get("blob_bytes", {})
        print(f"{label:<13}: {served} blob responses, {st.get('bytes_served', {}).get('blob', 0):,} blob bytes "
              f"served; from origin {src.get('origin', 0):,} | store {src.get('store', 0):,} | "
              f"peers {src.get('peer', 0) + src.get('relay', 0):,}", flush=True)
    if origin is not None:
        gets = [g for g in devstack.blob_gets(origin.log) if g[1] in (200, 206)]
        print(f"origin       : {len(gets)} blob GETs, {sum(g[2] for g in gets):,} bytes sent", flush=True)
    else:
        print("origin       : external (blob GETs not visible here)", flush=True)
    if tracker is not None:
        try:
            swarms = requests.get(f"{tracker.url}/swarms", timeout=10).json()
            print(f"tracker      : {len(swarms)} layer swarms, "
                  f"{sum(int(x.get('seeders', 0)) for x in swarms)} seeders in all", flush=True)
        except (requests.RequestException, ValueError, AttributeError, TypeError) as exc:
            print(f"tracker      : swarms unavailable ({exc})", flush=True)


def _keep_running(bridge, docker, tracker, origin, pull_ref) -> None:
    print("--- the stack stays up; Ctrl-C stops it ---", flush=True)
    print(f"  docker -H {docker.host} pull {pull_ref}", flush=True)
    print(f"  docker -H {docker.host} images", flush=True)
    print(f"  curl -s {bridge.url}/_layerswarm/stats", flush=True)
    print(f"  your own dockerd: add to /etc/docker/daemon.json  "
          f"{json.dumps({'registry-mirrors': [bridge.url]})}", flush=True)
    if tracker is not None:
        print(f"  tracker swarms: curl -s {tracker.url}/swarms", flush=True)
    if origin is not None:
        print(f"  origin registry: {origin.url}  (e.g. curl -s {origin.url}/v2/_catalog)", flush=True)
    procs = [p for p in (bridge, docker, tracker, origin) if p is not None]
    while True:
        for p in procs:
            if not p.alive():
                raise UserError(f"{p.name} exited; log {p.log}:\n{p.log_text(2000)}")
        time.sleep(1)
