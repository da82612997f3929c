"""The registry clients of a local stack: dockerd with ``registry-mirrors``, containerd, skopeo.

A Docker daemon (``dockerd``, vfs driver, no networking, its own root and
socket), a standalone ``containerd`` for ``ctr images pull --hosts-dir``, and
``skopeo`` with a ``registries.conf`` mirror, each behind a dead loopback
proxy so a fallback to a public registry fails at once.  Nothing here touches
the host's own Docker/containerd (no default sockets, no ``/var/lib/docker``).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

from layerswarm.bridge.devstack.daemons import Daemon, require_binaries, run, short_dir
from layerswarm.bridge.format import hoststoml

# Keep every client on loopback: registry hosts that are not loopback (Docker
# Hub, a test's made-up registry name) go to a dead proxy on 127.0.0.1 and fail
# at once, with no DNS lookup and no packet leaving the host.  Go never proxies
# localhost/loopback addresses, so mirrors on 127.0.0.1 are reached directly.
DEAD_PROXY = "http://127.0.0.1:9"
LOOPBACK_ONLY_ENV = {"HTTP_PROXY": DEAD_PROXY, "HTTPS_PROXY": DEAD_PROXY, "http_proxy": DEAD_PROXY,
                     "https_proxy": DEAD_PROXY, "NO_PROXY": "127.0.0.1,localhost,::1",
                     "no_proxy": "127.0.0.1,localhost,::1"}



# --------------------------------------------------------------------------- cgroups (dockerd)

def ensure_cgroups() -> None:
    """dockerd needs a cgroup hierarchy; mount cgroup2 when a sandbox has none."""
    base = Path("/sys/fs/cgroup")
    try:
        if base.is_dir() and any(base.iterdir()):
            return
    except OSError:
        pass
    if os.geteuid() != 0:
        return
    base.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "cgroup2", "none", str(base)], capture_output=True)


# --------------------------------------------------------------------------- dockerd

class DockerDaemon(Daemon):
    """dockerd with the vfs driver, no networking, its own root and socket."""

    def __init__(self, workdir: Path, mirrors=(), insecure=(), extra_config: dict | None = None):
        require_binaries("dockerd", "docker", "containerd", "runc")
        ensure_cgroups()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rundir = short_dir("lsd-")  # exec-root, socket, pidfile: short paths
        self.sock = self.rundir / "docker.sock"
        self.host = f"unix://{self.sock}"
        self.config_file = self.workdir / "daemon.json"
        self._extra_config = dict(extra_config or {})
        self._write_config(list(mirrors), list(insecure))
        argv = ["dockerd", "--storage-driver=vfs", "--iptables=false", "--ip6tables=false",
                "--bridge=none", "--ip-forward=false", "--ip-masq=false", "--userland-proxy=false",
                "--exec-opt", "native.cgroupdriver=cgroupfs",
                "--data-root", self.workdir / "data", "--exec-root", self.rundir / "exec",
                "-H", self.host, "--pidfile", self.rundir / "docker.pid",
                "--config-file", self.config_file]
        super().__init__(argv, self.workdir / "dockerd.log", name="dockerd", env=LOOPBACK_ONLY_ENV)
        try:
            self.wait_until(lambda: self._ping(), what=f"answering on {self.sock}")
        except BaseException:
            self.stop()
            raise

    def _write_config(self, mirrors, insecure):
        cfg = {"registry-mirrors": list(mirrors), "insecure-registries": list(insecure),
               "max-concurrent-downloads": 3, "debug": False}
        cfg.update(self._extra_config)
        self.mirrors = list(mirrors)
        self.config_file.write_text(json.dumps(cfg, indent=2))

    def _ping(self) -> bool:
        cp = subprocess.run(["docker", "-H", self.host, "version", "--format", "{{.Server.Version}}"],
                            capture_output=True, text=True, timeout=20)
        return cp.returncode == 0 and cp.stdout.strip() != ""

    def docker(self, *args, timeout: float = 300) -> str:
        return run(["docker", "-H", self.host, *args], timeout=timeout, what=f"docker {args[0]}").stdout

    def set_mirrors(self, mirrors, insecure=()) -> None:
        """Rewrite registry-mirrors and reload the daemon (SIGHUP), then wait until it took."""
        self._write_config(list(mirrors), list(insecure))
        self.popen.send_signal(signal.SIGHUP)
        want = [m.rstrip("/") + "/" for m in mirrors]

        def applied():
            info = json.loads(self.docker("info", "--format", "{{json .RegistryConfig.Mirrors}}") or "null")
            return sorted(info or []) == sorted(want)
        self.wait_until(applied, timeout=30, what="reloading registry-mirrors")

    def pull(self, ref: str, timeout: float = 300) -> str:
        return self.docker("pull", ref, timeout=timeout)

    def image_inspect(self, ref: str) -> dict:
        return json.loads(self.docker("image", "inspect", ref))[0]

    def image_ids(self) -> list:
        return [line for line in self.docker("images", "-aq", "--no-trunc").split() if line]

    def remove_all_images(self) -> None:
        ids = self.image_ids()
        if ids:
            self.docker("rmi", "-f", *sorted(set(ids)))

    def stop(self, timeout: float = 20) -> None:
        super().stop(timeout)
        shutil.rmtree(self.rundir, ignore_errors=True)


def start_dockerd(workdir: Path, mirrors=(), insecure=()) -> DockerDaemon:
    return DockerDaemon(workdir, mirrors, insecure)


# --------------------------------------------------------------------------- containerd

class Containerd(Daemon):
    """A standalone containerd (own root, state and socket; CRI off) for ``ctr``."""

    NAMESPACE = "layerswarm"

    def __init__(self, workdir: Path):
        require_binaries("containerd", "ctr")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rundir = short_dir("lsc-")
        self.sock = self.rundir / "containerd.sock"
        cfg = self.workdir / "containerd.toml"
        cfg.write_text(
            "version = 2\n"
            f'root = "{self.workdir / "root"}"\n'
            f'state = "{self.rundir / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",'
            ' "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",'
            ' "io.containerd.snapshotter.v1.devmapper"]\n'
            "[grpc]\n"
            f'  address = "{self.sock}"\n'
            "[ttrpc]\n"
            f'  address = "{self.rundir / "containerd.sock.ttrpc"}"\n'
            "[debug]\n"
            '  address = ""\n'
            "[metrics]\n"
            '  address = ""\n')
        super().__init__(["containerd", "--config", cfg, "--log-level", "info"],
                         self.workdir / "containerd.log", name="containerd")
        try:
            self.wait_until(lambda: self._ping(), what=f"answering on {self.sock}")
        except BaseException:
            self.stop()
            raise

    def _ping(self) -> bool:
        if not self.sock.exists():
            return False
        cp = subprocess.run(["ctr", "--address", self.sock, "version"], capture_output=True, timeout=20)
        return cp.returncode == 0

    def ctr(self, *args, timeout: float = 300) -> str:
        return run(["ctr", "--address", self.sock, "--namespace", self.NAMESPACE, *args],
                   timeout=timeout, what=f"ctr {' '.join(map(str, args[:2]))}", env=LOOPBACK_ONLY_ENV).stdout

    def pull(self, ref: str, hosts_dir: Path, platform: str = "linux/amd64", timeout: float = 300,
             user: str | None = None) -> str:
        """``ctr images pull``; ``user``: "name:password" sent to the registry (and its mirrors)."""
        creds = ("--user", user) if user else ()
        return self.ctr("images", "pull", "--hosts-dir", hosts_dir, "--platform", platform,
                        "--snapshotter", "native", *creds, ref, timeout=timeout)

    def remove_all_images(self) -> None:
        names = [n for n in self.ctr("images", "ls", "-q").split() if n]
        if names:
            self.ctr("images", "rm", "--sync", *names)
        # content that is no longer referenced goes with the garbage collector
        for d in [x for x in self.ctr("content", "ls", "-q").split() if x]:
            subprocess.run(["ctr", "--address", self.sock, "--namespace", self.NAMESPACE,
                            "content", "rm", d], capture_output=True, timeout=30)

    def stop(self, timeout: float = 10) -> None:
        super().stop(timeout)
        shutil.rmtree(self.rundir, ignore_errors=True)


def write_hosts_toml(hosts_dir: Path, registry_host: str, mirror_url: str, fallback: bool = True) -> Path:
    """``hosts_dir/<registry_host>/hosts.toml`` sending pulls to ``mirror_url``, the product's file
    (format/hoststoml.py) with a plain-HTTP registry behind it.

    With ``fallback=False`` the registry itself is replaced by a dead loopback
    address, so a pull can only succeed through the mirror.
    """
    return hoststoml.write(hosts_dir, registry_host, mirror_url,
                           server=f"http://{registry_host}" if fallback else DEAD_PROXY)


# --------------------------------------------------------------------------- skopeo

def write_registries_conf(path: Path, registry: str, mirror_location: str) -> Path:
    """A ``registries.conf`` whose ``registry`` is mirrored by ``mirror_location`` (host:port/prefix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        'unqualified-search-registries = []\n\n'
        '[[registry]]\n'
        f'location = "{registry}"\n'
        'insecure = true\n\n'
        '[[registry.mirror]]\n'
        f'location = "{mirror_location}"\n'
        'insecure = true\n')
    return path


def skopeo_copy(registries_conf: Path, src: str, dest: str, workdir: Path, timeout: float = 300,
                args=()) -> str:
    """``skopeo copy`` with our registries.conf and an accept-anything signature policy; ``args``: more
    ``copy`` flags (``--src-creds``); credentials may also go in ``workdir/auth.json``."""
    require_binaries("skopeo")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    policy = workdir / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    return run(["skopeo", "--registries-conf", registries_conf, "--policy", policy, "--tmpdir", workdir,
                "--override-os", "linux",
                "--override-arch", "amd64", "copy", "--src-tls-verify=false", *args, src, dest],
               timeout=timeout, what="skopeo copy",
               env={**LOOPBACK_ONLY_ENV, "TMPDIR": str(workdir),
                    "REGISTRY_AUTH_FILE": str(workdir / "auth.json")}).stdout
