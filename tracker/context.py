"""The long-lived objects of one tracker app, created once in the factory."""
from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from layerswarm.tracker.config import Config
from layerswarm.tracker.metrics import Metrics
from layerswarm.tracker.storage.base import Store


@dataclass
class Tracker:
    config: Config
    store: Store
    metrics: Metrics

    def publisher_authenticated(self) -> bool:
        """True when writes need the publish token (access.py checked it before the view ran)."""
        return bool(self.config.admin.publish_token)


def tracker() -> Tracker:
    return current_app.extensions["layerswarm"]
