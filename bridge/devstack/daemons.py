"""Start and stop the real daemons of a local stack on loopback: origin registry, redis, tracker, bridge.

Used by ``layerswarm demo`` and reused by the tests and benchmarks: a
distribution registry (Debian's ``docker-registry``) as the origin,
``redis-server`` (also as a replica) and ``redis-sentinel`` for failovers,
and our own ``layerswarm tracker`` / ``layerswarm bridge`` processes.  The
registry clients (dockerd, containerd, skopeo) are in clients.py.

Every process runs in its own process group with its own directories and a
log file; it is killed with its whole group on ``stop()``.  When a process
does not come up, ``DaemonError`` carries the tail of its log.  Nothing here
touches the host's own Docker/containerd (no default sockets, no
``/var/lib/docker``).
"""
from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from layerswarm.bridge.format.errors import DaemonError

START_TIMEOUT = float(os.environ.get("LAYERSWARM_START_TIMEOUT", "60"))


def _ephemeral_low() -> int:
    """The first port the kernel hands out as an outgoing connection's source port."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_port_lock = threading.Lock()
_next_port: int | None = None


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now and not handed out before by this process.

    Picked below the kernel's ephemeral range when there is room: a port the kernel chose (bind to 0)
    can become some outgoing connection's source port before the daemon binds it.  The ports are
    walked in turn from a random start rather than drawn at random: a test that starts a dozen
    daemons drew the same port twice (a bridge exited with "Address already in use")."""
    global _next_port
    low = _ephemeral_low()
    if low > 11024:
        first, span = low - 10000, 10000
        with _port_lock:
            if _next_port is None:
                _next_port = random.randrange(span)
            for _ in range(span):
                port = first + _next_port % span
                _next_port += 1
                with socket.socket() as s:
                    try:
                        s.bind((host, port))
                    except OSError:
                        continue
                return port
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def require_binaries(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise DaemonError(f"missing programs: {', '.join(missing)} (run scripts/setup.sh as root "
                          "to install docker.io, containerd, docker-registry, skopeo)")


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

    def wait_http(self, url: str, timeout: float = START_TIMEOUT, ok=(200, 401), verify=True) -> None:
        """``verify``: as for requests (a CA file for a server with a certificate from a private CA)."""
        self.wait_until(lambda: requests.get(url, timeout=2, verify=verify).status_code in ok, timeout,
                        f"serving {url}")

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


# --------------------------------------------------------------------------- redis

def start_redis(workdir: Path, port: int | None = None, password: str | None = None,
                replica_of: int | None = None, cluster: bool = False) -> Daemon:
    """A throwaway ``redis-server`` on loopback (no persistence); ``.url`` is its redis:// URL (never with the
    password), ``.port``.  ``password``: requirepass (and masterauth, for a replica); ``replica_of``: the
    port of the primary it replicates (a proxy in front of it, say); ``cluster``: a node for
    :func:`start_redis_cluster`."""
    require_binaries("redis-server")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    argv = ["redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--dir", workdir]
    if password:
        argv += ["--requirepass", password, "--masterauth", password]
    if replica_of:
        argv += ["--replicaof", "127.0.0.1", replica_of]
    if cluster:
        # the bus port of its own: port + 10000 (the default) may be past 65535
        argv += ["--cluster-enabled", "yes", "--cluster-config-file", workdir / "nodes.conf",
                 "--cluster-node-timeout", "2000", "--cluster-port", free_port()]
    p = Daemon(argv, workdir / "redis.log", name="redis-server")
    p.wait_until(lambda: _redis_ping(port, password), what="answering PING")
    p.url = f"redis://127.0.0.1:{port}/0"
    p.port = port
    return p


class RedisCluster:
    """A Redis Cluster of ``n`` primaries on loopback (no replicas); ``.url`` is its redis+cluster:// URL."""

    def __init__(self, workdir: Path, n: int = 3):
        require_binaries("redis-server", "redis-cli")
        self.nodes = []
        try:
            for i in range(n):
                self.nodes.append(start_redis(Path(workdir) / f"node{i}", cluster=True))
            run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{d.port}" for d in self.nodes),
                 "--cluster-replicas", "0", "--cluster-yes"], timeout=60, what="redis-cli --cluster create")
            for d in self.nodes:
                d.wait_until(lambda d=d: _cluster_state(d.port) == "ok",
                             what="in a cluster whose every slot is served")
        except Exception:
            self.stop()
            raise
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{d.port}" for d in self.nodes)

    def flush(self) -> None:
        """Empty every node (a fresh store for the next test)."""
        for d in self.nodes:
            with _redis(d.port) as r:
                r.flushall()

    def stop(self) -> None:
        for d in self.nodes:
            d.stop()


def start_sentinel(workdir: Path, primary_port: int, service: str, quorum: int, port: int | None = None,
                   password: str | None = None, sentinel_password: str | None = None,
                   down_after_ms: int = 2000) -> Daemon:
    """A ``redis-sentinel`` on loopback watching the primary at ``primary_port`` as ``service``; ``.port``.

    ``password``: the data nodes' (auth-pass); ``sentinel_password``: the Sentinel's own (requirepass,
    and what it shows other Sentinels).  The failover timeout is long, so that a replica reached
    through a proxy is not "fixed" to the primary's own address while a test runs.
    """
    require_binaries("redis-sentinel")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    lines = [f"port {port}", "bind 127.0.0.1", f"dir {workdir}",
             f"sentinel monitor {service} 127.0.0.1 {primary_port} {quorum}",
             f"sentinel down-after-milliseconds {service} {down_after_ms}",
             f"sentinel failover-timeout {service} 600000", f"sentinel parallel-syncs {service} 1"]
    if password:
        lines.append(f"sentinel auth-pass {service} {password}")
    if sentinel_password:
        lines += [f"requirepass {sentinel_password}", f"sentinel sentinel-pass {sentinel_password}"]
    conf = workdir / "sentinel.conf"   # Sentinel rewrites it: what it learns survives its restart
    conf.write_text("\n".join(lines) + "\n")
    p = Daemon(["redis-sentinel", conf], workdir / "sentinel.log", name="redis-sentinel")
    p.wait_until(lambda: _redis_ping(port, sentinel_password), what="answering PING")
    p.port = port
    return p


def _redis(port: int, password: str | None = None):
    import redis
    return redis.Redis(port=port, password=password, socket_timeout=2, socket_connect_timeout=1)


def _cluster_state(port: int) -> str:
    with _redis(port) as r:
        return r.execute_command("CLUSTER INFO")["cluster_state"]   # redis-py parses the reply


def _redis_ping(port: int, password: str | None) -> bool:
    with _redis(port, password) as r:
        return r.ping()


# --------------------------------------------------------------------------- origin registry

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
    p.access_log = lambda: access_log(p.log)
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


def start_tracker(workdir: Path, port: int | None = None, extra=(), env=None, tls=None) -> Daemon:
    """``layerswarm tracker`` on loopback; ``.url``.

    ``tls``: (certificate, key, fleet CA) files: a secure fleet tracker, ``.url`` https://.
    """
    port = port or free_port()
    tls_args = ["--tls-cert", tls[0], "--tls-key", tls[1], "--fleet-ca", tls[2]] if tls else []
    p = Daemon(layerswarm_argv("tracker", "--host", "127.0.0.1", "--port", port, *tls_args, *extra),
               Path(workdir) / "tracker.log", name="layerswarm tracker", env=env)
    p.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    p.wait_http(p.url + "/healthz", verify=str(tls[2]) if tls else True)
    return p


def bridge_stats(url: str) -> dict:
    """A bridge's JSON counters (``GET /_layerswarm/stats``, format in http/metrics.py)."""
    return requests.get(url.rstrip("/") + "/_layerswarm/stats", timeout=10).json()


def start_bridge(workdir: Path, upstream: str | None = None, aliases: dict | None = None,
                 tracker=None, port: int | None = None, extra=(), store: Path | None = None,
                 env=None, name: str = "layerswarm bridge", fleet=None) -> Daemon:
    """``layerswarm bridge`` on loopback; ``.url``, ``.port``, ``.store``, ``.stats()``; ``tracker``: a tracker
    URL or several (replicas of one tracker, each given as ``--tracker``); with a tracker also
    ``.fleet_url`` (its fleet listener: the relay other bridges stream from).  ``fleet``: a
    ``certs.FleetPKI`` for secure fleet mode (a certificate is issued for ``name``; ``.fleet_url``
    is https).

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
    fleet_port = None
    if tracker:
        # BitTorrent and the fleet listener on loopback, on ports of their own
        fleet_port = free_port()
        for url in [tracker] if isinstance(tracker, str) else tracker:
            argv += ["--tracker", url]
        argv += ["--peer-listen", f"127.0.0.1:{free_port()}", "--fleet-listen", f"127.0.0.1:{fleet_port}"]
        if fleet is not None:
            argv += fleet.args(fleet.host(name.replace(" ", "-")))
            argv += ["--peer-ssl-listen", f"127.0.0.1:{free_port()}"]
    argv += list(extra)
    log_name = "bridge" if name == "layerswarm bridge" else name.replace(" ", "-")
    p = Daemon(layerswarm_argv(*argv), workdir / f"{log_name}.log", name=name, env=env)
    p.url = f"http://127.0.0.1:{port}"
    p.port = port
    scheme = "https" if fleet is not None else "http"
    p.fleet_url = f"{scheme}://127.0.0.1:{fleet_port}" if fleet_port else None
    p.store = store
    p.stats = lambda: bridge_stats(p.url)
    p.wait_http(p.url + "/healthz")
    return p
