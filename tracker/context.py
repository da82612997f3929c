"""The long-lived objects of one tracker app, created once in the factory."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from flask import current_app, request

from layerswarm.bridge.format.layertorrent import FORMAT_VERSION, SECURE_FORMAT_VERSION, root_cert, torrent_kind
from layerswarm.tracker.config import Config
from layerswarm.tracker.fleet import ENVIRON_KEY, Fleet, FleetHost
from layerswarm.tracker.metrics import Metrics
from layerswarm.tracker.storage.base import Store


@dataclass
class Tracker:
    config: Config
    store: Store
    metrics: Metrics
    # Name lookups for relay URLs: a few at a time, so a slow resolver cannot tie up every request.
    # Built with the app, so in a gevent worker its threads are greenlets.
    resolver: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(4, "relay-url-resolve"))
    fleet: Fleet | None = None   # secure fleet mode

    def publisher_authenticated(self) -> bool:
        """True when writes need the publish token (access.py checked it before the view ran); in
        secure mode every fleet host may write, so none is trusted more than another."""
        return bool(self.config.admin.publish_token) and self.fleet is None

    @property
    def own_format(self) -> int:
        """The torrent format version of this tracker's mode."""
        return FORMAT_VERSION if self.fleet is None else SECURE_FORMAT_VERSION

    def accepted_kinds(self) -> frozenset:
        """Kinds of torrent (layertorrent.torrent_kind) taken and served: this mode's (a secure fleet's:
        SSL torrents of the current fleet CA), and open ones too while a fleet moves to secure mode."""
        if self.fleet is None:
            return frozenset({torrent_kind(None)})
        own = torrent_kind(root_cert(self.fleet.ca_pem()))
        return frozenset({own, torrent_kind(None)}) if self.config.server.accept_open_torrents else frozenset({own})

    def kind_for(self, fmt: int) -> str | None:
        """The kind served to a client working with format version ``fmt``; None when none is."""
        fleet_cert = root_cert(self.fleet.ca_pem()) if fmt == SECURE_FORMAT_VERSION and self.fleet else None
        if fmt == SECURE_FORMAT_VERSION and fleet_cert is None:
            return None
        kind = torrent_kind(fleet_cert)
        return kind if kind in self.accepted_kinds() else None

    def published(self) -> list:
        """[(digest, info_hash, size)] of the torrents served.  Torrents of kinds no longer accepted
        (open ones after the transition, another CA's after a rotation) are never served, and dropped here."""
        keep = self.accepted_kinds()
        out = []
        for digest, kind, ih, size in self.store.list_metainfo():
            if kind in keep:
                out.append((digest, ih, size))
            else:
                self.store.drop_metainfo(digest, kind)
        return out


def tracker() -> Tracker:
    return current_app.extensions["layerswarm"]


def fleet_host() -> FleetHost | None:
    """The calling fleet host of this request (secure mode; set before the view ran), else None."""
    return request.environ.get(ENVIRON_KEY)

