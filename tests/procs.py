"""Start and stop the real processes tests run against.

Every process gets free loopback ports, its own temp dirs and a log file
(shown when it fails to start), and is killed with its whole process group
at teardown.
"""
from __future__ import annotations

import sys
from pathlib import Path

from layerswarm.bridge.devstack import daemons as devstack

# One implementation of "a child process with a log" lives in bridge.localstack
# (the demo needs it too); tests use it under the names they always had.
free_port = devstack.free_port


class Proc(devstack.Daemon):
    """A child process in its own process group, logging to ``log``."""

    def __init__(self, argv, log: Path, env=None, cwd=None, name=None):
        super().__init__(argv, log, name=name, env=env, cwd=cwd)


def layerswarm_argv(*args) -> list:
    """Run our CLI with the interpreter running the tests (no PATH lookup)."""
    return [sys.executable, "-m", "layerswarm.bridge.cli", *map(str, args)]


def start_redis(tmp: Path) -> tuple:
    p = devstack.start_redis(tmp)
    return p, p.url


def start_registry(tmp: Path, extra_config: str = "", port: int | None = None) -> tuple:
    """A real distribution registry (Debian's docker-registry) on loopback: (process, URL)."""
    p = devstack.start_registry(tmp, port, extra_config)
    return p, p.url
