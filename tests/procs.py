"""Start and stop the real processes tests run against.

Every process gets free loopback ports, its own temp dirs and a log file
(shown when it fails to start), and is killed with its whole process group
at teardown.
"""
from __future__ import annotations

import socket
import sys
from pathlib import Path

from bridge import localstack

# One implementation of "a child process with a log" lives in bridge.localstack
# (the demo needs it too); tests use it under the names they always had.
free_port = localstack.free_port


class Proc(localstack.Daemon):
    """A child process in its own process group, logging to ``log``."""

    def __init__(self, argv, log: Path, env=None, cwd=None, name=None):
        super().__init__(argv, log, name=name, env=env, cwd=cwd)


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
    """A real distribution registry (Debian's docker-registry) on loopback: (process, URL)."""
    p = localstack.start_registry(tmp, port, extra_config)
    return p, p.url
