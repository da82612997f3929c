"""Host budgets: the upload controller's split (a fake session), then real libtorrent peers on loopback
(LAN peers are limited too) with a relay reader sharing one budget."""
from __future__ import annotations

import threading
import time

import requests

from layerswarm.bridge.config import BudgetSection
from layerswarm.bridge.node.budget import OWED_FOR, PROMPT_KEY, SLICE, STEP, UploadBudget
from layerswarm.bridge.node.torrent.session import UploadCounters
from tests.fixtures import add_blob, blob_bytes

MIB = 1 << 20


class FakeSession:
    """libtorrent's counters as the test sets them; the limits the controller gives."""

    def __init__(self):
        self.at, self.sent, self.wanting, self.queued, self.asked = 0.0, 0, 0, 0, 0
        self.limits = []
        self.prompt_log = []

    def prompt(self, name, on):
        self.prompt_log.append((name, on))

    def upload_counters(self, wait):
        return UploadCounters(self.at, self.sent, self.sent, self.wanting, self.queued, self.asked)

    def set_upload_limit(self, rate):
        self.limits.append(rate)

    def advance(self, sent: int, wanting: int = 0, queued: int = 0, asked: int | None = None) -> None:
        """One step: ``sent`` bytes went out; ``queued`` peers wait for quota, asking ``asked`` bytes
        (by default more than a step grants)."""
        self.at += STEP
        self.sent += sent
        self.wanting, self.queued = wanting, queued
        self.asked = (1 << 30 if queued else 0) if asked is None else asked


def test_the_alert_thread_does_not_pause_while_a_budget_reads_the_counters_every_step():
    """Each step reads libtorrent's counters from a session_stats alert: an alert_batch pause (50 ms by
    default, as long as a step) would leave most steps without a fresh reading."""
    ses = FakeSession()
    b = UploadBudget(ses, 10 * MIB)
    assert ses.prompt_log == []
    b.start()
    assert ses.prompt_log == [(PROMPT_KEY, True)]
    b.close()
    assert ses.prompt_log == [(PROMPT_KEY, True), (PROMPT_KEY, False)] and not b._thread.is_alive()


def test_the_budget_holds_over_a_sliding_second():
    B = 10 * MIB
    ses = FakeSession()
    b = UploadBudget(ses, B)
    b.step()                                            # idle: libtorrent may send at the budget's rate
    assert ses.limits[-1] == B and b._tokens == 0       # no relay stream: no tokens
    ses.advance(B)                                      # a whole second's budget in one step
    b.step()
    assert ses.limits[-1] == B // 100                   # a trickle until it leaves the window (0 is no limit)
    for _ in range(18):
        ses.advance(0)
        b.step()
        assert ses.limits[-1] == B // 100, ses.at
    ses.advance(0)                                      # 1 s after the burst
    b.step()
    assert ses.limits[-1] == B


def test_a_waiting_relay_and_peers_with_requests_share_by_head_count():
    B = 10 * MIB
    ses = FakeSession()
    b = UploadBudget(ses, B)
    b.step()
    got = []
    t = threading.Thread(target=lambda: got.extend(b.paced([b"x" * SLICE] * 20)))
    t.start()
    deadline = time.monotonic() + 10
    while not b._waited and time.monotonic() < deadline:
        time.sleep(0.01)
    assert b._waited and b._streams == 1 and not got  # no tokens yet: it waits
    ses.advance(0, wanting=3)
    b.step()                                            # one relay stream, three peers: a quarter each
    share = B * STEP / 4
    assert abs(b._tokens - share) <= 1 and abs(ses.limits[-1] - 3 * share / STEP) <= 1 / STEP
    b.close()                                           # closing lets a waiting relay go on
    t.join(10)
    assert len(b"".join(got)) == 20 * SLICE and b._streams == 0


def test_a_relay_that_did_not_want_its_tokens_gets_at_most_twice_its_use():
    B = 10 * MIB
    ses = FakeSession()
    b = UploadBudget(ses, B)
    b._streams = 1                                      # a stream open but slow (its client reads little)
    b._relay_step = 1000
    b.step()
    assert b._tokens == 2 * 1000 + SLICE
    assert ses.limits[-1] == int((B * STEP - b._tokens) / STEP)


def test_quota_libtorrent_was_granted_and_did_not_send_counts_as_sent():
    """Peers waiting for quota send less than granted: libtorrent sends the rest later, at once."""
    B = 10 * MIB
    ses = FakeSession()
    b = UploadBudget(ses, B)
    b.step()
    ses.advance(int(0.9 * B))                           # a burst: 0.1 of the window left
    b.step()
    assert ses.limits[-1] == B
    for _ in range(2):                                  # granted 0.05 B a step, 0.01 B sent
        ses.advance(int(0.01 * B), queued=2)
        b.step()
    assert abs(b._owed - 0.08 * B) < 10
    assert ses.limits[-1] == B // 100                   # without the owed bytes: B


def test_a_debt_is_paid_off_by_what_peers_send_and_not_wiped_by_a_trickle():
    """A leecher that reads slowly: its quota comes out later.  A full window (the trickle) does not
    forget it; what peers send, waiting for quota or not, pays it off; a debt never paid is forgotten
    after OWED_FOR."""
    B = 10 * MIB
    ses = FakeSession()
    b = UploadBudget(ses, B)
    b.step()
    for _ in range(60):                                 # granted up to 0.05 B a step, 0.04 B sent
        ses.advance(int(0.04 * B), queued=1)
        b.step()
        if ses.limits[-1] == B // 100:
            break
    assert ses.limits[-1] == B // 100 and b._owed > 0.1 * B, (b._owed / B, ses.limits[-3:])
    owed = b._owed
    ses.advance(int(0.01 * B), queued=1)                # a step at the trickle: the debt stays
    b.step()
    assert b._owed > owed - 0.01 * B, b._owed / B      # (3 x the trickle would have been 0.03 B)
    owed = b._owed
    ses.advance(int(0.1 * B), queued=0)                 # peers send from the quota they hold
    b.step()
    assert abs(b._owed - (owed - 0.1 * B)) < 10
    for _ in range(int(OWED_FOR / STEP) + 1):           # nothing more comes out: forgotten
        ses.advance(0)
        b.step()
    assert b._owed == 0 and ses.limits[-1] == B


def test_peers_that_ask_for_little_owe_no_more_than_they_asked():
    """Fast receivers ask the limiter for a block or two at a time: libtorrent grants what they ask, not
    the whole step's rate (counting that as owed held a warm seeder to 0.4x its budget)."""
    B = 10 * MIB
    ses = FakeSession()
    b = UploadBudget(ses, B)
    b.step()
    for _ in range(20):
        ses.advance(int(0.005 * B), wanting=3, queued=2, asked=int(0.005 * B))
        b.step()
    assert b._owed == 0 and ses.limits[-1] == B


def _windows(samples: list) -> list:
    """Rates (bytes/s) of every window of at least 1 s between two samples (time, bytes)."""
    out, j = [], 0
    for i in range(len(samples)):
        while j < len(samples) and samples[j][0] - samples[i][0] < 1.0:
            j += 1
        if j == len(samples):
            break
        out.append((samples[j][1] - samples[i][1]) / (samples[j][0] - samples[i][0]))
    return out


def test_one_budget_for_a_loopback_peer_and_a_relay(local_tracker, local_bridge, make_peer):
    """4 MiB/s for a bridge seeding 8 MiB to a libtorrent leecher (loopback: a "local" peer libtorrent
    would not limit) while another bridge relays the same blob from it: every 1 s window after the
    first second stays within 1.1x the budget, and both receivers get bytes all along."""
    B = 4 * MIB
    b = local_bridge("--tracker", local_tracker.url, "--upload-budget", "4M", "--upstream", "http://127.0.0.1:9")
    data = blob_bytes(8 * MIB, b"budget")
    digest = add_blob(b.peer, data).digest
    samples, relay_got, done = [], [0], threading.Event()

    def sample():
        while not done.is_set():
            t = b.peer.uploads.totals()
            if not samples or t["at"] > samples[-1][0]:
                samples.append((t["at"], t["peer"] + t["relay"], t["relay"]))
            time.sleep(0.05)

    relay_end = []

    def relay():
        with requests.get(f"{b.fleet_url}/_layerswarm/relay/{digest}", stream=True, timeout=60) as r:
            for chunk in r.iter_content(1 << 16):
                relay_got[0] += len(chunk)
        relay_end.append(time.monotonic())
    threads = [threading.Thread(target=sample), threading.Thread(target=relay)]
    for t in threads:
        t.start()
    leecher = make_peer("leecher", local_tracker.url)
    t0 = time.monotonic()
    assert b"".join(leecher.stream(digest)) == data
    took = time.monotonic() - t0
    threads[1].join(60)
    done.set()
    threads[0].join(10)
    assert relay_got[0] == len(data)
    assert took > len(data) / B * 0.8, f"the leecher got 8 MiB in {took:.1f}s: the budget did not bind it"
    busy = [s for s in samples if s[0] >= samples[0][0] + 1.0]
    rates = _windows(busy)
    assert rates and max(rates) <= 1.1 * B, [round(r / B, 2) for r in rates]
    # The relay was not starved by the peer: bytes in every window while it ran (it may end first:
    # it gets the whole budget until the leecher's requests arrive).
    relay_rates = _windows([(t, r) for t, _, r in busy if t <= relay_end[0]])
    assert relay_rates and min(relay_rates) > 0, [round(r / B, 2) for r in relay_rates]


def test_a_download_budget_binds_loopback_peers(local_tracker, make_peer):
    seeder = make_peer("seeder", local_tracker.url)
    data = blob_bytes(6 * MIB, b"download-budget")
    digest = add_blob(seeder, data).digest
    leecher = make_peer("leecher", local_tracker.url, budgets=BudgetSection(download_budget=2 * MIB))
    t0 = time.monotonic()
    assert b"".join(leecher.stream(digest)) == data
    took = time.monotonic() - t0
    assert took >= 6 / 2 * 0.8, f"6 MiB in {took:.1f}s under a 2 MiB/s download budget"
