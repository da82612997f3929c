"""Start and stop the real processes tests run against.

Every process gets free loopback ports, its own temp dirs and a log file
(shown when it fails to start), and is killed with its whole process group
at teardown.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

# Generous by default: a loaded 2-core CI machine is slow to start daemons.
START_TIMEOUT = float(os.environ.get("LAYERSWARM_TEST_START_TIMEOUT", "60"))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Proc:
    """A child process in its own process group, logging to ``log``."""

    def __init__(self, argv, log: Path, env=None, cwd=None, name=None):
        self.argv = [str(a) for a in argv]
        self.name = name or Path(self.argv[0]).name
        self.log = Path(log)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._logf = open(self.log, "ab")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.popen = subprocess.Popen(self.argv, stdout=self._logf, stderr=subprocess.STDOUT,
                                      env=full_env, cwd=cwd, start_new_session=True)

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
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}) before {what}:\n{self.log_text()}")
            try:
                result = check()
                if result:
                    return result
            except Exception as exc:  # not up yet
                last = exc
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} not {what} after {timeout}s (last: {last!r}):\n{self.log_text()}")

    def wait_http(self, url: str, timeout: float = START_TIMEOUT, ok=(200, 401)) -> None:
        self.wait_until(lambda: requests.get(url, timeout=2).status_code in ok, timeout, f"serving {url}")

    def signal(self, sig) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
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
        self.signal(signal.SIGKILL)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            pass
        if not self._logf.closed:
            self._logf.close()


def layerswarm_argv(*args) -> list:
    """Run our CLI with the interpreter running the tests (no PATH lookup)."""
    return [sys.executable, "-m", "bridge.cli", *map(str, args)]


def start_redis(tmp: Path) -> tuple:
    port = free_port()
    p = Proc(["redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
              "--daemonize", "no", "--dir", tmp], tmp / "redis.log", name="redis-server")

    def ping():
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    p.wait_until(ping, what="answering PING")
    return p, f"redis://127.0.0.1:{port}/0"


def start_registry(tmp: Path, extra_config: str = "", port: int | None = None) -> tuple:
    """A real distribution registry (Debian's docker-registry) on loopback."""
    port = port or free_port()
    root = tmp / "registry-data"
    root.mkdir(parents=True, exist_ok=True)
    cfg = tmp / "registry.yml"
    cfg.write_text(
        "version: 0.1\n"
        "log:\n  level: info\n  accesslog:\n    disabled: false\n"
        "storage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\n"
        "http:\n  addr: 127.0.0.1:%d\n"
        "%s" % (root, port, extra_config))
    p = Proc(["docker-registry", "serve", cfg], tmp / "registry.log", name="docker-registry")
    url = f"http://127.0.0.1:{port}"
    p.wait_http(url + "/v2/")
    return p, url
