"""A serial worker thread: a download's slow steps run here, in order, off the libtorrent alert thread."""
from __future__ import annotations

import logging
import queue
import threading

from layerswarm.bridge.format.threadnames import name_this_thread

log = logging.getLogger(__name__)


class Worker:
    """Runs steps in submission order on one thread, started at the first step."""

    def __init__(self, name: str):
        self.name = name
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread = None

    def submit(self, fn, *args) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
        self._q.put((fn, args))

    def stop(self) -> None:
        """Ends the thread once the steps queued so far ran; steps submitted later never run."""
        self._q.put(None)

    def _run(self) -> None:
        name_this_thread("dl-worker")
        while (item := self._q.get()) is not None:
            fn, args = item
            try:
                fn(*args)
            except Exception:
                log.exception("%s: %s failed", self.name, getattr(fn, "__name__", fn))
