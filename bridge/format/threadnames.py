"""OS names for a daemon's threads: what ``top -H``, ``perf`` and ``/proc/<pid>/task/*/comm`` show.

Python 3.11 keeps a thread's name to itself, so to the OS every thread of a bridge is "python",
libtorrent's included.  Named, the CPU each kind of thread costs can be read off /proc while the
daemon runs (scripts/bench_rollout.py does, per rollout).  Linux keeps 15 bytes of a name; where
``prctl`` is missing (not Linux) naming does nothing.
"""
from __future__ import annotations

import contextlib
import ctypes
import threading

_PR_SET_NAME, _PR_GET_NAME = 15, 16

try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def name_this_thread(name: str | None = None) -> None:
    """Give the calling thread the OS name ``name`` (by default its Python name)."""
    if _prctl is not None:
        _prctl(_PR_SET_NAME, ctypes.c_char_p((name or threading.current_thread().name).encode()[:15]), 0, 0, 0)


def this_thread_name() -> str:
    """The calling thread's OS name ("" where it cannot be read)."""
    if _prctl is None:
        return ""
    buf = ctypes.create_string_buffer(16)
    _prctl(_PR_GET_NAME, buf, 0, 0, 0)
    return buf.value.decode(errors="replace")


@contextlib.contextmanager
def native_threads_named(name: str):
    """Threads that native code starts inside this block get the OS name ``name``: a new thread starts
    with the name of the thread that made it (libtorrent's, made when its session is)."""
    before = this_thread_name()
    name_this_thread(name)
    try:
        yield
    finally:
        if before:
            name_this_thread(before)
