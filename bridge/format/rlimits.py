"""The open-file limit both daemons lift at start: every client connection is a file descriptor."""
from __future__ import annotations

import resource


def raise_open_file_limit(wanted: int) -> None:
    """Lift the soft limit toward ``wanted`` (never above the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
