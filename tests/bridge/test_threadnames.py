"""OS thread names: what /proc, top -H and perf show for a daemon's threads."""
from __future__ import annotations

import threading
from pathlib import Path

from layerswarm.bridge.format.threadnames import name_this_thread, native_threads_named, this_thread_name
from tests.fixtures import wait_for


def _os_name(native_id: int) -> str:
    return Path(f"/proc/self/task/{native_id}/comm").read_text().strip()


def test_a_thread_takes_its_python_name_cut_to_what_linux_keeps():
    seen = {}

    def run():
        name_this_thread()
        seen["name"] = _os_name(threading.get_native_id())
    t = threading.Thread(target=run, name="client-app_12345678")
    t.start()
    t.join()
    assert seen["name"] == "client-app_1234"   # 15 bytes


def test_threads_started_inside_the_block_inherit_its_name_and_the_caller_gets_its_own_back():
    before = this_thread_name()
    seen = {}
    with native_threads_named("libtorrent"):
        t = threading.Thread(target=lambda: seen.setdefault("name", _os_name(threading.get_native_id())))
        t.start()   # the OS thread is made here, with the creating thread's name
        t.join()
    assert seen["name"] == "libtorrent" and this_thread_name() == before


def test_a_torrent_session_names_libtorrent_s_threads_and_its_alert_thread():
    from layerswarm.bridge.config import SessionSection
    from layerswarm.bridge.node.torrent.session import TorrentSession
    ses = TorrentSession(SessionSection(peer_listen="127.0.0.1:0"))
    try:
        def named():   # the alert thread names itself once it runs
            return {"libtorrent", "lt-alerts"} <= {p.read_text().strip() for p in Path("/proc/self/task").glob("*/comm")}
        assert wait_for(named, 5, "libtorrent's and the alert thread's OS names")
    finally:
        ses.close()
