"""The long-lived objects of one tracker app, created once in the factory."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from flask import current_app, request

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


def tracker() -> Tracker:
    return current_app.extensions["layerswarm"]


def fleet_host() -> FleetHost | None:
    """The calling fleet host of this request (secure mode; set before the view ran), else None."""
    return request.environ.get(ENVIRON_KEY)

