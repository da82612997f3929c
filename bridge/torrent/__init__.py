"""Everything that touches libtorrent: session, alert events, settings."""
from bridge.torrent.alerts import Dispatcher, Event  # noqa: F401
from bridge.torrent.settings import SessionConfig  # noqa: F401
