"""A raw libtorrent seeder for fault tests: ``python -m tests.swarm.ltseed TORRENT DIR PORT [RATE]``.

Seeds ``DIR/<torrent name>`` in seed_mode (no recheck: whatever bytes are in
the file go out, which is the point for corrupt and poisoned seeders) and
announces to the torrent's tracker.  ``RATE`` (bytes/s, 0 = none) caps the
upload, loopback peers included (they are moved into the global peer class:
libtorrent exempts local peers from rate limits otherwise), so a test can kill
the seeder mid-transfer.  Prints ``seeding`` once the torrent is added; runs
until killed.
"""
from __future__ import annotations

import sys
import time

import libtorrent as lt


def main(torrent: str, save_dir: str, port: int, rate: int = 0) -> None:
    ses = lt.session({
        "listen_interfaces": f"127.0.0.1:{port}", "enable_dht": False, "enable_lsd": False,
        "enable_upnp": False, "enable_natpmp": False, "webtorrent_stun_server": "",
        "allow_multiple_connections_per_ip": True, "enable_outgoing_utp": False, "enable_incoming_utp": False,
        "upload_rate_limit": rate, "stop_tracker_timeout": 1, "min_announce_interval": 2,
    })
    if rate:
        f = lt.ip_filter()
        f.add_rule("0.0.0.0", "255.255.255.255", 1 << lt.session.global_peer_class_id)
        ses.set_peer_class_filter(f)
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(torrent)
    atp.save_path = save_dir
    atp.flags = (atp.flags | lt.torrent_flags.seed_mode) & ~lt.torrent_flags.auto_managed & ~lt.torrent_flags.paused
    h = ses.add_torrent(atp)
    print("seeding", flush=True)
    last = -1
    while True:
        time.sleep(1)
        ses.pop_alerts()
        st = h.status()
        if st.all_time_upload != last:
            last = st.all_time_upload
            print(f"uploaded {last} peers {st.num_peers}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 0)
