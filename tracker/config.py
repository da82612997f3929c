"""The tracker's one configuration: sections of options declared once, merged flag > env > file > default.

Environment variables are ``LAYERSWARM_TRACKER_<FIELD>`` (the publish token
also reads ``LAYERSWARM_PUBLISH_TOKEN``, shared with bridges); a TOML file
is given with ``--config``.  ``layerswarm tracker --print-config`` shows the
effective values, secrets redacted.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from layerswarm.bridge.format.errors import InvalidOption
from layerswarm.bridge.format.layertorrent import MAX_METAINFO_BYTES
from layerswarm.bridge.format.options import Schema, option
from layerswarm.tracker.storage.base import Limits
from layerswarm.tracker.storage.spec import StoreOptions, StoreSpec, parse_store


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _at_least_one(section, *names) -> None:
    for n in names:
        if getattr(section, n) < 1:
            raise InvalidOption(n, f"must be at least 1, got {getattr(section, n)}")


@dataclass(frozen=True)
class ServerSection:
    """Where and how the tracker serves (gunicorn gevent), and its TLS in secure fleet mode."""

    host: str = option("127.0.0.1", "address to listen on", metavar="ADDR")
    port: int = option(6969, "port to listen on", metavar="PORT")
    workers: int = option(1, "gunicorn worker processes (more than 1 needs a redis:// store)", metavar="N")
    # gevent workers: a slow client costs a greenlet, not one of a few threads (a trickle of
    # bytes held every thread of a gthread worker; tests/tracker/test_slow_clients.py).
    connections: int = option(4096, "concurrent connections per worker", metavar="N")
    tls_cert: str | None = option(None, "HTTPS certificate (secure fleet mode: a host certificate from the "
                                  "fleet CA)", metavar="PEM")
    tls_key: str | None = option(None, "its private key", metavar="PEM")
    fleet_ca: str | None = option(None, "the fleet CA: secure fleet mode (every caller shows a certificate "
                                  "from it; needs --tls-cert and --tls-key)", metavar="PEM")
    deny_serials: str | None = option(None, "file of certificate serial numbers (hex, one per line) refused "
                                      "even though the fleet CA signed them", metavar="FILE")
    accept_open_torrents: bool = option(False, "secure fleet mode, for one release while a fleet moves to it: "
                                        "also take and serve open-mode torrents (format 1) from fleet hosts")

    def __post_init__(self) -> None:
        _at_least_one(self, "workers", "connections")
        if not 1 <= self.port <= 65535:
            raise InvalidOption("port", f"not a TCP port: {self.port}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise InvalidOption("tls_cert", "--tls-cert and --tls-key go together")
        if self.fleet_ca and not self.tls_cert:
            raise InvalidOption("fleet_ca", "secure fleet mode needs the tracker's own --tls-cert and --tls-key")
        for name in ("deny_serials", "accept_open_torrents"):
            if getattr(self, name) and not self.fleet_ca:
                raise InvalidOption(name, "is a secure fleet mode option (--fleet-ca)")

    @property
    def secure(self) -> bool:
        """Secure fleet mode: callers are fleet hosts with certificates from the fleet CA."""
        return bool(self.fleet_ca)


@dataclass(frozen=True)
class StateSection:
    """Where swarms, torrents, manifests and leases live."""

    store: str = option("memory", "'memory' (one process), redis://host:port/db, "
                        "redis+sentinel://host:port[,host:port]/service[/db] (the primary Sentinel names; failovers "
                        "are followed) or redis+cluster://host:port[,host:port]: shared by workers and replicas; "
                        "never a password in it", metavar="URL")
    store_password: str | None = option(None, "password of the Redis servers", secret=True, flag="file",
                                        env=("LAYERSWARM_STORE_PASSWORD",))
    store_sentinel_password: str | None = option(None, "password of the Sentinels (when they have one)", secret=True,
                                                 flag="file", env=("LAYERSWARM_STORE_SENTINEL_PASSWORD",))
    # Below the bridges' tracker timeout (10 s): they fall back to the origin rather than wait longer.
    store_retry: float = option(8.0, "seconds a request waits for the store to come back (a Sentinel failover, "
                                "a Redis restart) before it fails", metavar="S")
    store_wait_replicas: int | None = option(None, "replicas that must hold a quarantine before the tracker "
                                             "answers (Redis WAIT; default 1 with redis+sentinel://, else 0)",
                                             metavar="N")
    store_wait_timeout: float = option(2.0, "how long a quarantine waits for them (then 503)", metavar="S")

    def __post_init__(self) -> None:
        try:
            spec = parse_store(self.store)
        except ValueError as exc:
            raise InvalidOption("store", str(exc)) from None
        if self.store_wait_replicas is not None and self.store_wait_replicas < 0:
            raise InvalidOption("store_wait_replicas", "must be 0 or more")
        if not spec.shared and self.store_wait_replicas:
            raise InvalidOption("store_wait_replicas", "needs a Redis store")
        if self.store_retry < 0 or self.store_wait_timeout <= 0:
            raise InvalidOption("store_retry", "--store-retry must be 0 or more, --store-wait-timeout more than 0")

    @property
    def spec(self) -> StoreSpec:
        return parse_store(self.store)

    @property
    def options(self) -> StoreOptions:
        """How the store connects and how sure its writes must be (storage/spec.py)."""
        wait = self.store_wait_replicas
        if wait is None:
            wait = 1 if self.spec.kind == "sentinel" else 0
        return StoreOptions(password=self.store_password, sentinel_password=self.store_sentinel_password,
                            retry_for=self.store_retry, wait_replicas=wait, wait_timeout=self.store_wait_timeout)


@dataclass(frozen=True)
class AnnounceSection:
    """The BitTorrent side: announce and scrape."""

    interval: int = option(120, "announce interval handed to peers still downloading", metavar="S")
    # A seeder of a complete layer only has to stay listed: announces/s = hosts x layers / interval
    # is dominated by seeders, so their interval sets the tracker's load (README, capacity plan).
    seed_interval: int = option(1800, "announce interval handed to seeders (left=0)", metavar="S")
    min_interval: int | None = option(None, "minimum announce interval (default interval/2)", metavar="S")
    peer_ttl_intervals: float = option(2.0, "a silent peer stays listed this many of the intervals it was "
                                       "handed (2: one missed announce is tolerated)", metavar="N")
    numwant_default: int = option(50, "peers returned when the client does not say", metavar="N")
    numwant_max: int = option(200, "most peers returned to one announce", metavar="N")
    allow_ip_param: bool = option(False, "trust the announce 'ip' parameter (only behind a NAT you control)")
    max_query: int = option(4096, "bytes of announce/scrape query string", metavar="N")
    max_scrape: int = option(100, "info-hashes per scrape request", metavar="N")
    max_swarms: int = option(Limits.max_swarms, "swarms tracked; beyond, the least recently announced goes",
                             metavar="N")
    idle_swarm_ttl: float = option(Limits.idle_swarm_ttl, "seconds a swarm without peers keeps its counters",
                                   metavar="S")

    def __post_init__(self) -> None:
        _at_least_one(self, "interval", "seed_interval", "numwant_max", "max_query", "max_scrape", "max_swarms")
        if self.peer_ttl_intervals < 1:
            raise InvalidOption("peer_ttl_intervals", "must be at least 1: a peer would expire before it announces")

    @property
    def effective_min_interval(self) -> int:
        return self.min_interval if self.min_interval is not None else max(1, self.interval // 2)

    def interval_for(self, seeder: bool) -> int:
        """The interval handed to a peer: seeders (nothing left) announce rarely, downloads often."""
        return self.seed_interval if seeder else self.interval

    def peer_ttl(self, seeder: bool) -> float:
        """How long a peer stays listed without announcing: a few of the intervals it was handed, so a
        seeder told to come back in 30 minutes is not dropped after 4."""
        return self.peer_ttl_intervals * self.interval_for(seeder)


@dataclass(frozen=True)
class RegistrySection:
    """The layer registry: torrents and manifests by digest, reports, cold-fetch leases."""

    quarantine_reports: int = option(3, "distinct hosts (a secure fleet: certificate names) whose bad-torrent "
                                     "reports quarantine a torrent", metavar="N")
    lease_ttl: int = option(30, "default cold-fetch lease TTL", metavar="S")
    lease_ttl_max: int = option(600, "longest lease TTL a bridge may ask for", metavar="S")
    # Each relay streams a cold layer at the origin's rate to this many children: 2 keeps that
    # within a host's uplink when hosts have ~2x the origin's bandwidth.  Measured (bench_rollout,
    # N=12, 40 MB/s hosts, 20 MB/s origin): cold/bound 1.17 and 1.16 with 2, 1.28 and 1.44 with 3.
    relay_fanout: int = option(2, "children per node in the cold-fetch relay tree", metavar="N")
    max_metainfo: int = option(MAX_METAINFO_BYTES, "largest torrent body accepted (the largest valid layer "
                               "torrent)", metavar="N")
    max_manifest: int = option(4 << 20, "largest manifest accepted", metavar="N")
    max_torrents: int = option(Limits.max_torrents, "published torrents kept (least recently used go first)",
                               metavar="N")
    max_manifests: int = option(Limits.max_manifests, "shared manifests kept (least recently used go first)",
                                metavar="N")
    max_leases: int = option(Limits.max_leases, "live cold-fetch leases; beyond, new leases are refused "
                             "(bridges fetch from the origin)", metavar="N")
    max_relays: int = option(Limits.max_relays, "relays in one lease tree; later askers fetch from the origin",
                             metavar="N")
    max_reports: int = option(Limits.max_reports, "bad-torrent report records and quarantine entries kept",
                              metavar="N")

    def __post_init__(self) -> None:
        _at_least_one(self, "quarantine_reports", "lease_ttl", "lease_ttl_max", "relay_fanout", "max_torrents",
                      "max_manifests", "max_leases", "max_relays", "max_reports")


@dataclass(frozen=True)
class AdminSection:
    """Who may write (publish, report, lease) and who may inspect (tracker/access.py has the table)."""

    publish_token: str | None = option(None, "bearer token required to publish torrents and manifests, report "
                                       "bad torrents and take leases (unset: anonymous writes; a secure fleet "
                                       "takes certificates instead)", secret=True,
                                       env=("LAYERSWARM_PUBLISH_TOKEN",), metavar="T")
    allow_anonymous_writes: bool = option(False, "serve without a publish token on a non-loopback address "
                                          "(anyone on the network can then publish, report and lease)")
    admin_token: str | None = option(None, "bearer token required for the inspection views (/, /swarms, "
                                     "/metrics); unset: open (a secure fleet: fleet certificates only)",
                                     secret=True, metavar="T")


@dataclass(frozen=True)
class Config:
    server: ServerSection = field(default_factory=ServerSection)
    state: StateSection = field(default_factory=StateSection)
    announce: AnnounceSection = field(default_factory=AnnounceSection)
    registry: RegistrySection = field(default_factory=RegistrySection)
    admin: AdminSection = field(default_factory=AdminSection)

    def __post_init__(self) -> None:
        # in a secure fleet a certificate, not the publish token, lets a caller write
        if (not self.server.secure and not self.admin.publish_token and not self.admin.allow_anonymous_writes
                and not _loopback(self.server.host)):
            raise InvalidOption("host", f"{self.server.host} is not a loopback address: set a publish token "
                                "(--publish-token-file) or pass --allow-anonymous-writes")
        if self.server.workers > 1 and not self.state.spec.shared:
            raise InvalidOption("workers", "the memory store lives in one process: use --workers 1 or "
                                "--store redis://...")

    @property
    def limits(self) -> Limits:
        """What the store may hold (storage/base.py)."""
        a, r = self.announce, self.registry
        return Limits(max_swarms=a.max_swarms, idle_swarm_ttl=a.idle_swarm_ttl, max_torrents=r.max_torrents,
                      max_manifests=r.max_manifests, max_leases=r.max_leases, max_relays=r.max_relays,
                      max_reports=r.max_reports)


SCHEMA = Schema(Config, "LAYERSWARM_TRACKER_")


def load(args=None, environ=None, **values) -> Config:
    """Flags > environment > TOML file (``--config``) > defaults; ``values`` by field name (tests)."""
    return SCHEMA.load(args, environ=environ, values=values)
