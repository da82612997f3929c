"""Which upstream registry answers a request: ``?ns=``, a path prefix (alias or allowed host), or the default."""
from __future__ import annotations

import re

from layerswarm.bridge.config import UpstreamsSection
from layerswarm.bridge.format import errors

_NS = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?$")


class Router:
    """Picks the upstream for a request (the rules are in the upstreams section, bridge/config.py).

    ``?ns=<host>`` (containerd) decides alone when present; otherwise the
    first path component selects an alias or an allowed host; otherwise the
    default upstream.  Plain one-component names on Docker Hub get
    ``library/``.
    """

    def __init__(self, upstreams: UpstreamsSection, clients: dict):
        self.clients = clients
        self.default = clients[upstreams.default_name]
        self.hosts = {h: clients[n] for h, n in upstreams.hosts().items()}
        self.prefixes = {p: clients[n] for p, n in upstreams.prefixes().items()}

    def resolve(self, name: str, ns: str | None):
        if ns is not None:
            ns = ns.lower()
            up = self.hosts.get(ns) if _NS.fullmatch(ns) else None
            if up is None:
                raise errors.RegistryError("DENIED", "upstream registry not allowed on this mirror", 403,
                                           {"ns": ns[:255]})
            repo = name
        else:
            first, _, rest = name.partition("/")
            up = self.prefixes.get(first) if rest else None
            if up is not None:
                repo = rest
            else:
                up, repo = self.default, name
        if up.cfg.is_docker_hub and "/" not in repo:
            repo = "library/" + repo
        return up, repo
