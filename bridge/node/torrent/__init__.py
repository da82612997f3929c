"""Everything that touches libtorrent: session, alert events, settings."""
from layerswarm.bridge.node.torrent.alerts import Dispatcher, Event  # noqa: F401
from layerswarm.bridge.node.torrent.settings import SessionConfig  # noqa: F401
