"""Everything that touches libtorrent: the session, its alerts as plain events, its settings."""
