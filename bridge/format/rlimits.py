"""What a daemon sets in its own process at start: the open-file limit (every client connection is a
file descriptor), and how glibc's malloc keeps freed memory."""
from __future__ import annotations

import ctypes
import os
import resource

# mallopt(3) parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def raise_open_file_limit(wanted: int) -> None:
    """Lift the soft limit toward ``wanted`` (never above the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def glibc() -> bool:
    """Whether this process runs on glibc (whose malloc mallopt(3) tunes)."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):
        return False


# An operator who set any of these tuned malloc (or glibc) on purpose: keep_freed_memory leaves it alone.
_OPERATOR_TUNING = ("GLIBC_TUNABLES", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


def keep_freed_memory(limit: int = 8 << 20) -> bool:
    """Let glibc's malloc keep up to ``limit`` bytes freed at the top of each arena, and take blocks up to
    ``limit`` from its arenas, instead of handing memory back to the kernel; whether it was set.

    The swarm path reads each verified piece (128 KiB to 4 MiB) into a new bytes object and drops it a
    moment later.  With glibc's defaults that memory goes back to the kernel (a thread's arena is trimmed
    once a few hundred KiB are free at its top), so the next piece faults in and zeroes every page again:
    a third of the alert thread's piece reads (perf).  Measured on the warm rollout (alternating sets,
    medians): N=2 (3 sets) the alert thread 2.73 -> 2.34 ms per MB, the bridge's Python threads together
    4.42 -> 3.71; N=4 (4 sets) 3.95 -> 3.55, CPU warm / raw 1.37 -> 1.27.  Left alone where an operator
    tuned malloc (_OPERATOR_TUNING) or the C library is not glibc."""
    if not glibc() or any(k in os.environ for k in _OPERATOR_TUNING):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # the mmap threshold first: setting either one turns off glibc's own adjustment of both
    return mallopt(M_MMAP_THRESHOLD, limit) == 1 and mallopt(M_TRIM_THRESHOLD, limit) == 1
