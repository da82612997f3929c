"""Start and stop the real daemons of a local stack on loopback.

Used by ``layerswarm demo`` and reused by the integration tests: a
distribution registry (Debian's ``docker-registry``) as the origin, a Docker
daemon (``dockerd``) with ``registry-mirrors``, a standalone ``containerd``
for ``ctr images pull --hosts-dir``, ``skopeo`` with a ``registries.conf``
mirror, and our own ``layerswarm tracker`` / ``layerswarm bridge``
processes.

Every process runs in its own process group with its own directories and a
log file; it is killed with its whole group on ``stop()``.  When a process
does not come up, ``DaemonError`` carries the tail of its log.  Nothing here
touches the host's own Docker/containerd (no default sockets, no
``/var/lib/docker``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from layerswarm.bridge.format.errors import DaemonError

START_TIMEOUT = float(os.environ.get("LAYERSWARM_START_TIMEOUT", "60"))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def require_binaries(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise DaemonError(f"missing programs: {', '.join(missing)} (run scripts/setup.sh as root "
                          "to install docker.io, containerd, docker-registry, skopeo)")


# Keep every client on loopback: registry hosts that are not loopback (Docker
# Hub, a test's made-up registry name) go to a dead proxy on 127.0.0.1 and fail
# at once, with no DNS lookup and no packet leaving the host.  Go never proxies
# localhost/loopback addresses, so mirrors on 127.0.0.1 are reached directly.
DEAD_PROXY = "http://127.0.0.1:9"
LOOPBACK_ONLY_ENV = {"HTTP_PROXY": DEAD_PROXY, "HTTPS_PROXY": DEAD_PROXY, "http_proxy": DEAD_PROXY,
                     "https_proxy": DEAD_PROXY, "NO_PROXY": "127.0.0.1,localhost,::1",
                     "no_proxy": "127.0.0.1,localhost,::1"}


def short_dir(prefix: str) -> Path:
    """A short private directory in /tmp: unix socket paths are limited to ~108 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


class Daemon:
    """A child process in its own process group, logging to ``log``."""

    def __init__(self, argv, log: Path, name: str | None = None, env=None, cwd=None):
        self.argv = [str(a) for a in argv]
        self.name = name or Path(self.argv[0]).name
        self.log = Path(log)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._logf = open(self.log, "ab")
        full_env = dict(os.environ)
        full_env.update(env or {})
        try:
            self.popen = subprocess.Popen(self.argv, stdout=self._logf, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=full_env, cwd=cwd,
                                          start_new_session=True)
        except OSError as exc:
            self._logf.close()
            raise DaemonError(f"cannot start {self.name}: {exc}") from exc
        self.url = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self, tail: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def wait_until(self, check, timeout: float = START_TIMEOUT, what: str = "ready"):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if not self.alive():
                raise DaemonError(f"{self.name} exited ({self.popen.returncode}) before {what}; "
                                  f"log {self.log}:\n{self.log_text()}")
            try:
                result = check()
                if result:
                    return result
            except Exception as exc:  # not up yet
                last = exc
            time.sleep(0.1)
        self.stop()
        raise DaemonError(f"{self.name} not {what} after {timeout:.0f}s (last: {last!r}); "
                          f"log {self.log}:\n{self.log_text()}")

    def wait_http(self, url: str, timeout: float = START_TIMEOUT, ok=(200, 401)) -> None:
        self.wait_until(lambda: requests.get(url, timeout=2).status_code in ok, timeout, f"serving {url}")

    def signal(self, sig) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, timeout: float = 10) -> None:
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        self.signal(signal.SIGKILL)  # the whole group, leftovers included
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            pass
        if not self._logf.closed:
            self._logf.close()


def run(argv, timeout: float = 300, what: str | None = None, env=None) -> subprocess.CompletedProcess:
    """Run a client command; DaemonError with its output when it fails."""
    argv = [str(a) for a in argv]
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=full_env,
                            stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise DaemonError(f"{what or argv[0]} timed out after {timeout:.0f}s: {' '.join(argv)}\n"
                          f"{(exc.stdout or b'')[-2000:]!r}{(exc.stderr or b'')[-2000:]!r}") from exc
    except OSError as exc:
        raise DaemonError(f"cannot run {argv[0]}: {exc}") from exc
    if cp.returncode != 0:
        raise DaemonError(f"{what or argv[0]} failed ({cp.returncode}): {' '.join(argv)}\n"
                          f"{(cp.stdout or '')[-2000:]}{(cp.stderr or '')[-3000:]}")
    return cp


# --------------------------------------------------------------------------- origin registry

def start_redis(workdir: Path, port: int | None = None) -> Daemon:
    """A throwaway ``redis-server`` on loopback (no persistence); ``.url`` is its redis:// URL."""
    require_binaries("redis-server")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    p = Daemon(["redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--dir", workdir], workdir / "redis.log", name="redis-server")

    def ping():
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    p.wait_until(ping, what="answering PING")
    p.url = f"redis://127.0.0.1:{port}/0"
    return p


def start_registry(workdir: Path, port: int | None = None, extra_config: str = "") -> Daemon:
    """A distribution registry on loopback with request logging; ``.url``, ``.access_log``."""
    require_binaries("docker-registry")
    workdir = Path(workdir)
    port = port or free_port()
    root = workdir / "data"
    root.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "registry.yml"
    cfg.write_text(
        "version: 0.1\n"
        "log:\n  level: info\n  accesslog:\n    disabled: false\n"
        "storage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\n"
        "http:\n  addr: 127.0.0.1:%d\n%s" % (root, port, extra_config))
    p = Daemon(["docker-registry", "serve", cfg], workdir / "registry.log", name="docker-registry")
    p.url = f"http://127.0.0.1:{port}"
    p.wait_http(p.url + "/v2/")
    return p


_ACCESS = re.compile(r'"(GET|HEAD|PUT|POST|PATCH|DELETE) (/v2/\S*) HTTP/[\d.]+" (\d{3}) (\d+|-)')


def access_log(log_path: Path) -> list:
    """(method, path, status, bytes) of every request a docker-registry logged."""
    try:
        text = Path(log_path).read_text(errors="replace")
    except OSError:
        return []
    out = []
    for m in _ACCESS.finditer(text):
        out.append((m.group(1), m.group(2), int(m.group(3)), 0 if m.group(4) == "-" else int(m.group(4))))
    return out


def blob_gets(log_path: Path, repo: str | None = None) -> list:
    """Blob GET requests (path, status, bytes) in a registry's access log."""
    out = []
    for method, path, status, nbytes in access_log(log_path):
        if method != "GET" or "/blobs/sha256:" not in path:
            continue
        if repo is not None and not path.startswith(f"/v2/{repo}/blobs/"):
            continue
        out.append((path, status, nbytes))
    return out


# --------------------------------------------------------------------------- our own processes

def layerswarm_argv(*args) -> list:
    """Our CLI with the running interpreter (no PATH lookup)."""
    return [sys.executable, "-m", "layerswarm.bridge.cli", *map(str, args)]


def start_tracker(workdir: Path, port: int | None = None, extra=(), env=None) -> Daemon:
    """``layerswarm tracker`` on loopback; ``.url``."""
    port = port or free_port()
    p = Daemon(layerswarm_argv("tracker", "--host", "127.0.0.1", "--port", port, *extra),
               Path(workdir) / "tracker.log", name="layerswarm tracker", env=env)
    p.url = f"http://127.0.0.1:{port}"
    p.wait_http(p.url + "/healthz")
    return p


def bridge_stats(url: str) -> dict:
    """A bridge's JSON counters (``GET /_layerswarm/stats``, format in http/metrics.py)."""
    return requests.get(url.rstrip("/") + "/_layerswarm/stats", timeout=10).json()


def start_bridge(workdir: Path, upstream: str | None = None, aliases: dict | None = None,
                 tracker: str | None = None, port: int | None = None, extra=(), store: Path | None = None,
                 env=None, name: str = "layerswarm bridge") -> Daemon:
    """``layerswarm bridge`` on loopback; ``.url``, ``.port``, ``.store``, ``.stats()``.

    ``store`` defaults to ``workdir/store``; a restarted bridge passes its old one.
    """
    workdir = Path(workdir)
    port = port or free_port()
    store = Path(store) if store else workdir / "store"
    store.mkdir(parents=True, exist_ok=True)
    argv = ["bridge", "--listen", f"127.0.0.1:{port}", "--store-dir", store]
    if upstream:
        argv += ["--upstream", upstream]
    for alias, url in (aliases or {}).items():
        argv += ["--alias", f"{alias}={url}"]
    if tracker:
        # BitTorrent on loopback, on a port of its own
        argv += ["--tracker", tracker, "--peer-listen", f"127.0.0.1:{free_port()}"]
    argv += list(extra)
    log_name = "bridge" if name == "layerswarm bridge" else name.replace(" ", "-")
    p = Daemon(layerswarm_argv(*argv), workdir / f"{log_name}.log", name=name, env=env)
    p.url = f"http://127.0.0.1:{port}"
    p.port = port
    p.store = store
    p.stats = lambda: bridge_stats(p.url)
    p.wait_http(p.url + "/v2/")
    return p


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

    def pull(self, ref: str, hosts_dir: Path, platform: str = "linux/amd64", timeout: float = 300) -> str:
        return self.ctr("images", "pull", "--hosts-dir", hosts_dir, "--platform", platform,
                        "--snapshotter", "native", ref, timeout=timeout)

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
    """``hosts_dir/<registry_host>/hosts.toml`` sending pulls to ``mirror_url`` (plain HTTP).

    With ``fallback=False`` the registry itself is replaced by a dead loopback
    address, so a pull can only succeed through the mirror.
    """
    d = Path(hosts_dir) / registry_host
    d.mkdir(parents=True, exist_ok=True)
    f = d / "hosts.toml"
    server = f"http://{registry_host}" if fallback else DEAD_PROXY
    f.write_text(
        f'server = "{server}"\n\n'
        f'[host."{mirror_url.rstrip("/")}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
        '  skip_verify = true\n')
    return f


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


def skopeo_copy(registries_conf: Path, src: str, dest: str, workdir: Path, timeout: float = 300) -> str:
    """``skopeo copy`` with our registries.conf and an accept-anything signature policy."""
    require_binaries("skopeo")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    policy = workdir / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    return run(["skopeo", "--registries-conf", registries_conf, "--policy", policy, "--tmpdir", workdir,
                "--override-os", "linux",
                "--override-arch", "amd64", "copy", "--src-tls-verify=false", src, dest],
               timeout=timeout, what="skopeo copy",
               env={**LOOPBACK_ONLY_ENV, "TMPDIR": str(workdir),
                    "REGISTRY_AUTH_FILE": str(workdir / "auth.json")}).stdout
