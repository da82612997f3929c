"""The long-lived objects of one tracker app, created once in the factory."""
from __future__ import annotations

import hmac
from dataclasses import dataclass

from flask import current_app, request

from layerswarm.tracker.config import Config
from layerswarm.tracker.errors import Forbidden, Unauthorized
from layerswarm.tracker.metrics import Metrics
from layerswarm.tracker.storage.base import Store


@dataclass
class Tracker:
    config: Config
    store: Store
    metrics: Metrics

    def bearer(self) -> str | None:
        auth = request.authorization
        return auth.token if auth is not None and auth.type == "bearer" and auth.token else None

    def is_trusted(self) -> bool:
        """True when the request presents the right publish token; a wrong one is refused."""
        token = self.bearer()
        if token is None or not self.config.admin.publish_token:
            return False
        if not hmac.compare_digest(token.encode(), self.config.admin.publish_token.encode()):
            raise Forbidden("wrong publish token")
        return True

    def require_publisher(self) -> None:
        if not self.config.admin.publish_token:
            return  # open registry: no token configured
        if self.bearer() is None:
            raise Unauthorized("publish token required (Authorization: Bearer ...)")
        self.is_trusted()


def tracker() -> Tracker:
    return current_app.extensions["layerswarm"]
