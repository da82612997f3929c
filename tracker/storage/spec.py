"""What ``--store`` names, parsed without connecting: memory, one Redis server, or a Sentinel-watched primary.

redis-py parses ``redis://``, ``rediss://`` and ``unix://`` URLs itself but
has no URL form for Sentinel, so we take the convention other Python
projects use (Redis-Sentinel-Url, Prefect)::

    redis+sentinel://host[:port][,host[:port]...]/service_name[/db]
    rediss+sentinel://...     (TLS to the Sentinels and to the data nodes)

Sentinels default to port 26379.  The store then asks the Sentinels for the
current primary of ``service_name`` on every new connection, so it follows a
failover.  A Redis Cluster is named by some of its nodes (the client learns
the others), in the same form without a service: ``redis+cluster://host[:port][,...]``
(``rediss+cluster://`` for TLS; port 6379 by default).  No URL may carry a password (``user:password@`` or
``?password=``): a command line shows in ``ps`` and in logs; passwords come
from a file or the environment (tracker/config.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

REDIS_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_PORT, CLUSTER_PORT = 26379, 6379
_MEMBER = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s:/\[\]]+))(?::(?P<port>\d{1,5}))?")
PASSWORD_REFUSED = ("the --store URL must not carry a password (a command line shows in ps and logs): "
                    "give it in a file (--store-password-file) or the environment (LAYERSWARM_STORE_PASSWORD)")


@dataclass(frozen=True)
class StoreSpec:
    kind: str                        # "memory", "redis" (redis-py's own URL), "sentinel" or "cluster"
    url: str = ""
    username: str | None = None      # an ACL user name is no secret: it may be in the URL
    nodes: tuple = ()                # ((host, port), ...): the Sentinels, or some Cluster nodes
    service: str = ""
    db: int = 0
    tls: bool = False

    @property
    def shared(self) -> bool:
        """State several processes share (every store but memory)."""
        return self.kind != "memory"


@dataclass(frozen=True)
class StoreOptions:
    """Credentials (never in the URL) and how patient and how sure a Redis store is."""

    password: str | None = None
    sentinel_password: str | None = None
    retry_for: float = 8.0        # seconds a call retries a lost connection (a failover) before failing
    wait_replicas: int = 0        # replicas that must acknowledge a quarantine (WAIT) before it counts
    wait_timeout: float = 2.0


def parse_store(spec: str | None) -> StoreSpec:
    """ValueError with a message for the operator when ``spec`` is not a store we can open."""
    if spec in (None, "", "memory"):
        return StoreSpec("memory")
    scheme = spec.partition("://")[0].lower() if "://" in spec else ""
    if scheme in REDIS_SCHEMES:
        u = urlsplit(spec)
        if u.password is not None or "password" in parse_qs(u.query):
            raise ValueError(PASSWORD_REFUSED)
        from redis.connection import parse_url   # redis-py's own reading of it, which connects nowhere
        parse_url(spec)
        return StoreSpec("redis", url=spec, username=u.username)
    if scheme in SENTINEL_SCHEMES + CLUSTER_SCHEMES:
        return _members(spec, scheme)
    shown = f"a {scheme}:// URL" if scheme else repr(spec)   # not the whole URL: it may hold credentials
    raise ValueError(f"must be 'memory', a redis://, rediss://, unix://, redis+sentinel:// or redis+cluster:// URL, "
                     f"not {shown}")


def _members(spec: str, scheme: str) -> StoreSpec:
    """``redis+sentinel://`` and ``redis+cluster://``: a list of nodes, then (Sentinel) the service and db."""
    cluster = scheme in CLUSTER_SCHEMES
    rest = spec[len(scheme) + 3:]
    if "?" in rest or "#" in rest:
        raise ValueError(f"{spec!r}: a {scheme}:// store URL takes no query or fragment")
    netloc, _, path = rest.partition("/")
    username = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        if ":" in userinfo:
            raise ValueError(PASSWORD_REFUSED)
        username = userinfo or None
    nodes = []
    for member in netloc.split(","):
        m = _MEMBER.fullmatch(member)
        if m is None or (m["port"] and not 1 <= int(m["port"]) <= 65535):
            raise ValueError(f"{spec!r}: nodes are host[:port] separated by commas, not {member!r}")
        nodes.append((m["v6"] or m["host"], int(m["port"] or (CLUSTER_PORT if cluster else SENTINEL_PORT))))
    tls = scheme.startswith("rediss")
    if cluster:
        if path:
            raise ValueError(f"{spec!r}: a Redis Cluster has one database: {scheme}://host:port[,host:port]")
        return StoreSpec("cluster", url=spec, username=username, nodes=tuple(nodes), tls=tls)
    parts = path.split("/") if path else []
    if not 1 <= len(parts) <= 2 or not parts[0]:
        raise ValueError(f"{spec!r}: give the Sentinel service (the monitored primary's name): "
                         f"{scheme}://host:port[,host:port]/service_name[/db]")
    db = parts[1] if len(parts) == 2 else "0"
    if not db.isdigit():
        raise ValueError(f"{spec!r}: the database is a number, not {db!r}")
    return StoreSpec("sentinel", url=spec, username=username, nodes=tuple(nodes), service=parts[0], db=int(db),
                     tls=tls)
