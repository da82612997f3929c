"""What this host uploads to other hosts (BitTorrent peers and relays), and the one budget both share.

Two senders leave the host: libtorrent (peers, LAN ones included) and the
relay (other bridges streaming a cold layer over HTTP, http/relay.py).
:class:`Uploads` counts both; :class:`UploadBudget` also holds their sum to
``--upload-budget`` bytes per second.

How the budget is shared.  libtorrent has its own limiter and we cannot take
tokens from it, so the relay gets a token bucket and libtorrent a rate
limit, and a controller re-splits the budget every ``STEP`` (50 ms):

* it reads what both sent (libtorrent's payload counter, the relay's own
  count) and gives the next step what the budget leaves over the last second
  less one step: ``allowance = budget - sent(last 0.95 s)`` — a sliding second,
  so no 1 s window gets more than the budget plus what arrives in one step;
* the allowance is split by who wants bytes: each relay stream and each peer
  with requests to us counts for one (a relay that did not use its tokens
  last step gets at most twice what it used);
* the relay's share goes into its bucket for this step only (unused tokens
  do not pile up); libtorrent's becomes its ``upload_rate_limit`` for the step,
  never above the budget itself;
* quota libtorrent was granted and has not sent yet counts as sent: it leaves
  later, in one burst (a debt paid off by what peers send, forgotten after
  ``OWED_FOR``).

Why not the simpler splits.  libtorrent's limiter alone hands out quota per
tick and keeps what peers did not use (up to three seconds of it): with a fixed
limit on loopback, 1 s windows reached 1.4–1.9x it, each time right after a
dip; a limit of "budget minus what the relay used last second" inherits that
and lets a relay ramping up add a second budget for one second.  Fed back from
what was really sent, the windows stayed within 1.0x on the fleet benchmark
(scripts/bench_rollout.py ``--upload-budget``; README "Host budgets"), at the
price of using about 0.8 of the budget when libtorrent alone wants more.
Bytes are payload; TCP/IP and BitTorrent message headers come on top (about 5 %).
"""
from __future__ import annotations

import collections
import logging
import threading
import time

from layerswarm.bridge.format.threadnames import name_this_thread

log = logging.getLogger(__name__)

STEP = 0.05          # seconds between two splits
WINDOW = 1.0         # the budget holds over every window this long
SLICE = 64 << 10     # the relay asks for tokens per this many bytes at most
OWED_FOR = 1.0       # seconds a grant libtorrent's peers have not sent is counted as sent
PROMPT_KEY = "upload-budget"   # its name among the session's prompt waiters (a torrent's is its digest)


class Uploads:
    """Counts what the host sends other hosts; a relay body goes through :meth:`paced` (no limit here)."""

    budget = None        # bytes per second (UploadBudget)
    peer_limit = None    # libtorrent's upload limit now (UploadBudget)

    def __init__(self, session):
        """``session``: the TorrentSession (its ``upload_counters``)."""
        self.session = session
        self._lock = threading.Lock()
        self.relay_sent = 0

    def sent(self, n: int) -> None:
        """``n`` relay bytes handed to the kernel at once (a stored blob sent with sendfile, unpaced)."""
        with self._lock:
            self.relay_sent += n

    def paced(self, chunks):
        """The relay's body: ``chunks`` as they may leave (counted; an UploadBudget also waits for tokens)."""
        for chunk in chunks:
            self.sent(len(chunk))
            yield chunk

    def read_paced(self, f, length: int):
        """``length`` bytes of the open file ``f`` from its offset, paced like :meth:`paced`."""
        def read():
            left = length
            while left > 0:
                data = f.read(min(SLICE, left))
                if not data:
                    raise OSError(f"{left} bytes short reading a stored blob")
                left -= len(data)
                yield data
        try:
            yield from self.paced(read())
        finally:
            f.close()

    def totals(self) -> dict:
        """``peer`` (libtorrent payload) and ``relay`` bytes sent so far, and ``at``: when (monotonic s)."""
        c = self.session.upload_counters(wait=0.5)
        with self._lock:
            return {"peer": c.sent, "relay": self.relay_sent, "at": c.at, "budget": self.budget,
                    "peer_limit": self.peer_limit}

    def close(self) -> None:
        pass


class UploadBudget(Uploads):
    """The host's upload budget: libtorrent's limit and the relay's tokens re-split every STEP."""

    def __init__(self, session, budget: int):
        super().__init__(session)
        self.budget = budget
        self._cond = threading.Condition(self._lock)
        self._tokens = 0             # the relay's bytes for the current step
        self._streams = 0            # relay bodies being sent
        self._waited = False         # a relay body waited for tokens during the step
        self._relay_step = 0         # relay bytes sent during the step
        self._closed = False
        # (time, libtorrent payload, relay bytes) every step: the sliding window's history
        self._samples: collections.deque = collections.deque()
        self.peer_limit = budget     # libtorrent's upload_rate_limit now
        self._owed = 0.0             # granted to libtorrent, not sent yet (_owed_by_peers)
        self._grants: collections.deque = collections.deque()   # (time, libtorrent's grant that step)
        self._wire = 0               # libtorrent's bytes sent with message headers, at the last sample
        self._asked = 0              # bytes peers waited for at the last sample
        session.set_upload_limit(budget)
        self._thread = threading.Thread(target=self._run, name="upload-budget", daemon=True)

    def start(self) -> "UploadBudget":
        """Re-split every STEP from now on, until closed."""
        # each step reads libtorrent's counters from a session_stats alert: no alert_batch pause before it
        self.session.prompt(PROMPT_KEY, True)
        self._thread.start()
        return self

    # -- the relay's side ---------------------------------------------------------------
    def paced(self, chunks):
        with self._lock:
            self._streams += 1
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    n = self._take(len(view))
                    yield bytes(view[:n])
                    view = view[n:]
        finally:
            with self._lock:
                self._streams -= 1

    def _take(self, want: int) -> int:
        """Wait for tokens; take up to ``want`` of them (at least one byte)."""
        want = min(want, SLICE)
        with self._cond:
            while self._tokens <= 0 and not self._closed:
                self._waited = True
                self._cond.wait(STEP * 4)
            n = want if self._closed else min(want, self._tokens)
            self._tokens -= n
            self._relay_step += n
            self.relay_sent += n
            return n

    # -- the controller -----------------------------------------------------------------
    def _run(self) -> None:
        name_this_thread()
        while not self._closed:
            started = time.monotonic()
            try:
                self.step()
            except Exception:   # the session went away under us (shutdown): stop quietly
                if not self._closed:
                    log.exception("upload budget step failed")
            time.sleep(max(0.0, STEP - (time.monotonic() - started)))

    def step(self) -> None:
        """One split: what the last second less one step left of the budget goes to the next step."""
        c = self.session.upload_counters(wait=STEP)
        samples = self._samples
        if samples and c.at <= samples[-1][0]:
            return   # no fresh reading (a loaded machine): keep the split until there is one
        with self._lock:
            relay_sent, relay_used, waited, streams = self.relay_sent, self._relay_step, self._waited, self._streams
            self._relay_step, self._waited = 0, False
        # A sample's time is when libtorrent's counters were read; the relay's are read just after.
        now, peer_sent = c.at, c.sent
        if samples:
            dt = max(STEP, now - samples[-1][0])
            self._owed_by_peers(c, dt)
        else:
            dt = STEP
        self._wire = c.wire
        samples.append((now, peer_sent, relay_sent))
        # The oldest sample at or before the window's start: the window counted is at least WINDOW - STEP.
        while len(samples) > 1 and samples[1][0] <= now - (WINDOW - STEP):
            samples.popleft()
        t0, peer0, relay0 = samples[0]
        sent = (peer_sent - peer0) + (relay_sent - relay0)
        allowance = max(0, self.budget * WINDOW - sent - self._owed)
        peers_wanting = c.wanting
        # Neither side gets more than the budget's rate for the step: no burst of a whole second at once.
        step_bytes = min(allowance, self.budget * dt)
        relay_share = step_bytes * streams / (streams + peers_wanting) if streams else 0
        if streams and not waited:   # the relay did not want all it had: give it at most twice its use
            relay_share = min(relay_share, 2 * relay_used + SLICE)
        peer_rate = min(self.budget, (step_bytes - relay_share) / STEP)
        # 0 is "no limit" to libtorrent: a full window leaves it a trickle of 1 % instead.
        limit = int(max(self.budget / 100, peer_rate))
        if limit != self.peer_limit:
            self.session.set_upload_limit(limit)
            self.peer_limit = limit
        with self._cond:
            self._tokens = int(relay_share)
            self._cond.notify_all()

    def _owed_by_peers(self, c, dt: float) -> None:
        """What libtorrent was granted and has not sent yet: it sends it later, all at once.

        While peers wait for quota (the limit binds) libtorrent grants up to ``limit x dt`` a step,
        and no more than they asked for (``net.limiter_up_bytes``); a peer gets its grant once its
        whole request is met (or after 20 ticks), so a peer whose receiver reads slowly sends little
        for a while, then its grant in one step, up to a second's budget at once.  Counted as already
        sent, the steps before make room for it; what peers then send pays it off, waiting or not.
        It is never more than the grants of the last ``OWED_FOR`` seconds: a debt that never comes
        out is forgotten within that.
        (Capped at 3 x the limit now, it was wiped whenever a full window set the trickle while
        peers still held their grants: a loopback leecher then got 1.2-1.4x the budget in a second.
        Counting the step's whole rate as granted, without what peers asked, held a warm seeder to
        0.4x its budget.)"""
        sent = c.wire - self._wire   # the limit counts message headers too: so does this
        granted = min(self.peer_limit * dt, max(self._asked, c.asked)) if c.queued else 0.0
        self._asked = c.asked
        grants = self._grants
        grants.append((c.at, granted))
        while grants[0][0] <= c.at - OWED_FOR:
            grants.popleft()
        self._owed = min(max(0.0, self._owed + granted - sent), sum(g for _, g in grants))

    def totals(self) -> dict:
        with self._lock:
            if self._samples:
                at, peer, relay = self._samples[-1]
                return {"peer": peer, "relay": relay, "at": at, "budget": self.budget,
                        "peer_limit": self.peer_limit}
        return super().totals()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(1)
        self.session.prompt(PROMPT_KEY, False)
