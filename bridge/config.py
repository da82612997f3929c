"""The bridge's one configuration: seven sections, each option declared once (format/options.py).

Flags, ``LAYERSWARM_*`` environment variables and the TOML file (``--config``)
merge into :class:`BridgeConfig` by field name; ``layerswarm bridge
--print-config`` shows the result with secrets redacted.  Example file::

    [server]
    listen = "127.0.0.1:5000"            # the client API: loopback unless clients live elsewhere
    fleet_listen = "0.0.0.0:5001"        # the relay other bridges stream from
    store_dir = "/var/lib/layerswarm"

    [upstreams]
    default_upstream = "hub"             # an upstream name below, or a URL
    allow_hosts = ["ghcr.io", "quay.io"]

    [upstreams.hub]
    url = "https://registry-1.docker.io"
    username = "me"
    password_env = "HUB_TOKEN"           # or password_file = "/run/secrets/hub"

    [upstreams.corp]
    url = "https://registry.corp:5443"
    ca_bundle = "/etc/ssl/corp-ca.pem"
    hosts = ["registry.corp"]            # extra host names routed here

    [swarm]
    tracker = ["http://tracker-a:6969", "http://tracker-b:6969"]   # replicas on one store; or one URL
    publish_token_file = "/run/secrets/publish-token"

Keys written at the top level (files from before sections) still work.

Upstream routing (which registry a request goes to) is decided by the
upstreams section: the *default* upstream answers plain names (dockerd
``registry-mirrors`` sends ``library/<name>``) and the Docker Hub hosts
(``?ns=docker.io``); named upstreams (``--alias NAME=URL`` or
``[upstreams.NAME]``) answer ``/v2/NAME/<repo>/...`` and ``?ns=<their
host[:port]>``; allowed hosts (``--allow-host``) answer ``/v2/HOST/<repo>/...``
and ``?ns=HOST`` over https.  Nothing else is reachable: the bridge is not
an open proxy.
"""
from __future__ import annotations

import functools
import os
import socket
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from layerswarm.bridge.format.errors import InvalidOption, UserError
from layerswarm.bridge.format.names import COMPONENT_RE
from layerswarm.bridge.format.options import Schema, env_secret, option, read_secret, readable_file, writable_dir
from layerswarm.bridge.format.units import parse_size

DOCKER_HUB_URL = "https://registry-1.docker.io"
DOCKER_HUB_HOSTS = ("docker.io", "index.docker.io", "registry-1.docker.io")
DEFAULT_NAME = "default"
ENV_PREFIX = "LAYERSWARM_"
MAX_STRIPE_LEVELS = 3   # stripe priorities 3..6 stay under piece 0's 7


@dataclass
class UpstreamConfig:
    """One upstream registry, resolved from the upstreams section."""

    name: str
    url: str
    username: str | None = None
    password: str | None = None
    ca_bundle: str | None = None
    insecure: bool = False
    hosts: list = field(default_factory=list)
    token: str | None = None          # a bearer token obtained elsewhere (``layerswarm seed --registry-token``)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise UserError(f"upstream {self.name!r}: not an http(s) base URL: {self.url!r}")
        if parts.username or parts.password:
            raise UserError(f"upstream {self.name!r}: put credentials in the config file or env, not the URL")

    @property
    def netloc(self) -> str:
        return urlsplit(self.url).netloc.lower()

    @property
    def is_docker_hub(self) -> bool:
        return urlsplit(self.url).hostname in DOCKER_HUB_HOSTS

    @property
    def verify(self):
        """The ``verify`` argument for requests."""
        if self.insecure:
            return False
        return self.ca_bundle or True


def _host_port(name: str, value: str, flag: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise InvalidOption(name, f"wants HOST:PORT, got {value!r} ({flag})")


def _local_address_toward(url: str | None) -> str | None:
    """The local address the OS picks to reach ``url``'s host (a UDP connect sends nothing)."""
    host = urlsplit(url).hostname if url else None
    if not host:
        return None
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, 9, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            return s.getsockname()[0]
    except OSError:
        return None


def _base_url(name: str, value: str | None) -> None:
    if value is None:
        return
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
        raise InvalidOption(name, f"wants an http(s) base URL, got {value!r}")


def _positive(section, *names) -> None:
    for n in names:
        if getattr(section, n) <= 0:
            raise InvalidOption(n, f"must be positive, got {getattr(section, n)}")


@dataclass
class ServerSection:
    """The client API: the registry mirror dockerd, containerd and podman point at."""

    listen: str = option("127.0.0.1:5000", "address the registry mirror serves on", metavar="HOST:PORT")
    # Like the BitTorrent port, the relay answers other hosts; it has its own loop and threads,
    # so a crowd there cannot starve the client API.
    fleet_listen: str = option("0.0.0.0:5001", "address other fleet hosts stream relayed layers from "
                               "(served only with --tracker)", metavar="HOST:PORT")
    store_dir: str | None = option(None, "local store (manifest cache, layers); required", metavar="DIR")
    threads: int = option(64, "client API threads (each streamed blob holds one; store hits need none)",
                          metavar="N")
    fleet_threads: int = option(32, "fleet listener threads (each relayed stream holds one)", metavar="N")
    idle_timeout: float = option(30.0, "a connection without a whole request this long is closed", metavar="S")
    write_timeout: float = option(60.0, "a client that takes nothing of a response this long is dropped",
                                  metavar="S")
    graceful_timeout: float = option(5.0, "seconds in-flight requests get after SIGTERM", metavar="S")
    access_log: bool = option(False, "log every request")

    def __post_init__(self) -> None:
        _host_port("listen", self.listen, "--listen")
        _host_port("fleet_listen", self.fleet_listen, "--fleet-listen")
        _positive(self, "threads", "fleet_threads", "idle_timeout", "write_timeout")


@dataclass
class UpstreamsSection:
    """Origin registries: which one answers a request, credentials, timeouts."""

    __tables__ = "definitions"   # [upstreams.NAME] sub-tables

    default_upstream: str = option(DOCKER_HUB_URL, "default upstream for plain names and docker.io: "
                                   "a URL or an upstream name", flags=("--upstream",), metavar="URL|NAME")
    upstream_user: str | None = option(None, "username for the default upstream",
                                       env=("LAYERSWARM_UPSTREAM_USERNAME",), metavar="USER")
    upstream_password: str | None = option(None, "password for the default upstream", secret=True,
                                           metavar="PASSWORD")
    upstream_ca: str | None = option(None, "CA bundle for the default upstream", metavar="PEM")
    upstream_insecure: bool = option(False, "do not verify the default upstream's TLS")
    alias: list = option(default_factory=list, help="named upstream, reached as /v2/NAME/<repo>/... or "
                         "?ns=<its host> (repeatable)", toml=("aliases",), metavar="NAME=URL")
    allow_hosts: list = option(default_factory=list, help="registry host reachable as /v2/HOST/<repo>/... or "
                               "?ns=HOST over https (repeatable)", flags=("--allow-host",), metavar="HOST")
    connect_timeout: float = option(5.0, "upstream connect timeout", metavar="S")
    read_timeout: float = option(30.0, "upstream read timeout", metavar="S")
    tag_ttl: float = option(5.0, "seconds a tag->digest answer is cached", metavar="S")
    max_manifest_bytes: int = option(4 << 20, "largest manifest accepted from an upstream", metavar="N")
    definitions: dict = option(default_factory=dict, help="[upstreams.NAME] tables: url, username, password "
                               "(or password_env/password_file), ca_bundle, insecure, hosts", flag=False)
    by_name: dict = field(init=False, repr=False, compare=False)  # resolved: name -> UpstreamConfig
    default_name: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _positive(self, "connect_timeout", "read_timeout", "max_manifest_bytes")
        try:
            self.by_name = self._resolve()
        except UserError as exc:
            raise InvalidOption("default_upstream", str(exc)) from None

    def _resolve(self) -> dict:
        ups = {name: _upstream_from_table(name, t) for name, t in self.definitions.items()}
        default = self.default_upstream
        if default not in ups:
            if "://" not in default:
                raise UserError(f"default upstream {default!r} is neither a URL nor a configured upstream")
            ups[DEFAULT_NAME] = UpstreamConfig(DEFAULT_NAME, default)
            default = DEFAULT_NAME
        d = ups[default]
        if self.upstream_user:
            d.username = self.upstream_user
        if self.upstream_password:
            d.password = self.upstream_password
        if self.upstream_ca:
            d.ca_bundle = self.upstream_ca
        if self.upstream_insecure:
            d.insecure = True
        for spec in self.alias:
            name, sep, url = spec.partition("=")
            if not sep or not name or not url:
                raise UserError(f"--alias wants NAME=URL, got {spec!r}")
            prev = ups.get(name)
            up = UpstreamConfig(name, url)
            if prev is not None:  # keep credentials / CA from the file
                up.username, up.password, up.ca_bundle, up.insecure, up.hosts = (
                    prev.username, prev.password, prev.ca_bundle, prev.insecure, prev.hosts)
            ups[name] = up
        for name in ups:
            if name != DEFAULT_NAME and not COMPONENT_RE.fullmatch(name):
                raise UserError(f"upstream alias {name!r} must be one lowercase name component "
                                "(letters, digits, '.', '_', '-')")
        self.default_name = default
        hosts = self._hosts(ups, default)
        for host in (h.lower() for h in self.allow_hosts):
            if host not in hosts:
                ups.setdefault(host, UpstreamConfig(host, "https://" + host))
        return ups

    @staticmethod
    def _hosts(ups: dict, default: str) -> dict:
        out = {}
        for name, up in ups.items():
            out.setdefault(up.netloc, name)
            for h in up.hosts:
                out[h.lower()] = name
        for h in DOCKER_HUB_HOSTS:
            if ups[default].is_docker_hub or h not in out:
                out[h] = default
        return out

    @property
    def default(self) -> UpstreamConfig:
        return self.by_name[self.default_name]

    def hosts(self) -> dict:
        """Registry host (``host`` or ``host:port``, lower case) -> upstream name."""
        return self._hosts(self.by_name, self.default_name)

    def prefixes(self) -> dict:
        """First path component -> upstream name (aliases, and hosts without a port)."""
        out = {h: n for h, n in self.hosts().items() if ":" not in h and "." in h and COMPONENT_RE.fullmatch(h)}
        out.update({n: n for n in self.by_name if n != DEFAULT_NAME})
        return out


@dataclass
class SwarmSection:
    """Peer-to-peer layers: the tracker, publishing, cold-fetch leases and relays (off without a tracker)."""

    # Several URLs are replicas sharing one store (Redis): calls and announces fail over between them.
    tracker: list = option(default_factory=list, help="layerswarm tracker base URL, e.g. http://tracker:6969 "
                           "(repeatable: replicas sharing one store; env: comma-separated)", metavar="URL")
    publish_token: str | None = option(None, "publish token for the tracker", secret=True,
                                       flags=("--token",), toml=("token",), metavar="T")
    advertise_url: str | None = option(None, "this bridge's fleet listener as other bridges reach it "
                                       "(default http(s)://<fleet-listen>; on a wildcard address, the address "
                                       "this host reaches the tracker from)", metavar="URL")
    host_id: str | None = option(None, "unique name of this host (default <hostname>-<port>)", metavar="ID")
    cache_max: int | None = option(None, "layer store cap, e.g. 20G (LRU eviction)", parse=parse_size, metavar="SIZE")
    tiny_blob_bytes: int = option(1 << 20, "blobs below this get no torrent", metavar="N")
    relay_timeout: float = option(20.0, "relay source silent this long -> origin", metavar="S")
    relay_min_rate: int = option(256 << 10, "a relay sending less than this per second (over each relay-timeout "
                                 "window) is dropped for the origin, e.g. 256K", parse=parse_size, metavar="BYTES")
    lease_ttl: float = option(30.0, "cold-fetch lease TTL asked of the tracker", metavar="S")
    origin_slots: int = option(4, "concurrent origin fetches when the tracker is down", metavar="N")
    origin_jitter: float = option(2.0, "random delay before such a fetch, so a fleet does not stampede",
                                  metavar="S")
    tracker_backoff: float = option(10.0, "after a tracker failure, go straight to the origin for this long",
                                    metavar="S")
    # dockerd asks for 3 layers at a time: the others can be on their way from the swarm or a
    # lease before it asks (only for a client the upstream authorized, with that request's own
    # authorization or the service credentials; never for a layer that may not be shared).
    prefetch_layers: int = option(0, "when an image manifest is answered, start fetching up to N of its layers "
                                  "before the client asks (0: off)", metavar="N")

    def __post_init__(self) -> None:
        for url in self.tracker:
            _base_url("tracker", url)
        self.tracker = list(dict.fromkeys(url.rstrip("/") for url in self.tracker))
        _base_url("advertise_url", self.advertise_url)
        _positive(self, "relay_timeout", "lease_ttl", "origin_slots")


@dataclass
class StreamSection:
    """Streaming a layer from the swarm to a client in order, as pieces verify."""

    stall_timeout: float = option(30.0, "swarm without progress this long -> origin", metavar="S")
    piece_read_timeout: float = option(5.0, "a verified piece not read back this long is asked again", metavar="S")
    # Deadlines only on the piece a reader is blocked on and the next one (at least 2 pieces;
    # 0 = none).  A wide window made every reader of a fleet ask for the same pieces at once,
    # and time-critical pieces go to the fastest peer, the seeder: rollout N=8 warm 9.1-9.6 s
    # with 8 MiB vs 6.9-7.2 s with 512 KiB (scripts/bench_rollout.py, 3x32 MiB).
    window_bytes: int = option(512 << 10, "bytes ahead of each reader given piece deadlines (0: none)",
                               metavar="N")
    # Clients write the whole blob before they unpack it, so the download order should serve the
    # swarm (rarest-first), not the reader: deadlines are a stall guard, set only when a reader has
    # waited this long for its next piece.  Deadlines at once made all 8 leechers of an N=8 rollout
    # ask the seeder for the same in-order pieces (warm 2.9x raw BitTorrent with short request queues).
    # After 2 s they still cost: a time-critical piece goes to the fastest peer, in a fresh rollout the
    # seeder, for pieces rarest-first had not fetched yet, and the first deadline of a torrent cancels
    # its queued requests.  10 s (N=8 warm, scripts/bench_rollout.py): seeder 1.42 -> 1.35 F, rollout
    # 3% sooner, first byte no later; it stays well under stall_timeout (then the origin takes over).
    deadline_after: float = option(10.0, "a reader that has waited this long for its next piece puts deadlines "
                                   "on it (0: at once)", metavar="S")
    deadline_ms: int = option(300, "deadline of the first piece of the window", metavar="MS")
    deadline_step_ms: int = option(100, "each later piece of the window gets this much more", metavar="MS")
    prefetch: int = option(2, "pieces each reader asks for ahead of the one it sends", metavar="N")
    # The first byte is piece 0, and its time-critical request waits behind the requests already queued
    # at the one peer that has it, the seeder (warm p99 first byte 2.6-4.5 s at N=2 and 8).  A new
    # download wants piece 0 (and the last piece) alone for a moment, so those requests go out first and
    # are served first; held until piece 0 arrived the rest of the swarm idled (N=8 rollout ~7% slower),
    # 0.5 s cost nothing measurable (scripts/bench_rollout.py, README "Performance").
    first_piece_gate: float = option(0.5, "a new swarm download asks for piece 0 (and the last piece) alone until "
                                     "a piece arrives or this long has passed (0: off)", metavar="S")

    # Rarest-first alone lets two leechers fetch the same piece from the seeder at once (a piece is
    # invisible to the others until it is whole): the seeder sent 1.4 F at N=8.  A download's rank is
    # its arrival among the swarm's leechers (the tracker's "incomplete" count in the reply to its
    # first announce, standard BitTorrent); it prefers the pieces p = rank (mod 2), more those p = rank
    # (mod 4), more still p = rank (mod 8): a fleet starting together takes different pieces from the
    # seeder and trades them.  Plain libtorrent at N=8: 1.48 -> 1.31x the bound, seeder 1.41 -> 1.24 F.
    stripe_levels: int = option(3, "prefer the pieces p = rank (mod 2^l), l = 1..N, rank = this host's arrival "
                                "among the swarm's leechers (0: plain rarest-first; at most 3)", metavar="N")

    def __post_init__(self) -> None:
        _positive(self, "stall_timeout", "piece_read_timeout")
        if not 0 <= self.stripe_levels <= MAX_STRIPE_LEVELS:
            raise InvalidOption("stripe_levels", f"must be 0..{MAX_STRIPE_LEVELS}, got {self.stripe_levels}")
        if self.deadline_after < 0:
            raise InvalidOption("deadline_after", f"must not be negative, got {self.deadline_after}")


DISK_IO = ("posix", "pread", "mmap", "default")   # libtorrent 2.1's disk back-ends (SessionSection.disk_io)


@dataclass
class SessionSection:
    """The host's libtorrent session."""

    peer_listen: str = option("0.0.0.0:6881", "BitTorrent listen address", metavar="HOST:PORT")
    peer_ssl_listen: str = option("0.0.0.0:6882", "BitTorrent SSL listen address (secure fleet mode: the SSL "
                                  "torrents' peers connect here)", metavar="HOST:PORT")
    # TCP only by default: measured on loopback (scripts/bench_peer.py --utp), uTP made a
    # 4-leecher 200 MB swarm 5x slower (11.4 s vs 2.4 s).
    utp: bool = option(False, "also use uTP (default TCP only: faster on LANs)")
    # libtorrent's "local" peer class (private, link-local and loopback addresses) ignores unchoke
    # slots; an upload budget moves every peer into the global class (node/torrent/session.py).
    unchoke_slots: int = option(32, "peers served at once (a fresh layer's seeder serves a rollout wave); binds "
                                "peers on private addresses only with an upload budget", metavar="N")
    connections_limit: int = option(400, "peer connections", metavar="N")
    # What a peer may have asked this host for and not yet got (libtorrent's reqq; the peer's own
    # cap gives way to it).  A leecher picks each request rarest-first but cannot see what the
    # others asked for: with libtorrent's 2000 every leecher kept ~1 s of requests queued at the
    # one seeder, so several fetched the same piece from it (N=8 warm: seeder 2.3-2.6 F, the rollout
    # 2.6x the bound).  8 blocks kept the seeder's queue ~0.3 s deep; 4 (~0.15 s) leaves less time for a
    # second leecher to pick a piece in flight (N=8, 2 interleaved sets: seeder 1.35 / 1.40 -> 1.24 / 1.21 F,
    # warm 5.71 / 5.91 -> 5.38 / 5.26 s; 2 did no better, 1.22 / 1.21 F).  4 blocks per round trip is
    # 64 MB/s per connection at 1 ms: raise it for fleets across a WAN.
    peer_request_queue: int = option(4, "16 KiB requests a peer may have outstanding at this host", metavar="N")
    # A fleet connects to a new layer's peers all at once: N=12 warm rollout saw 9 listen
    # overflows (SYNs dropped, retried after 1 s) with libtorrent's default of 5, none with 256.
    listen_queue_size: int = option(256, "accept backlog of the peer socket", metavar="N")
    # The tracker expires peers after ~2 intervals: a floor above its interval makes seeders vanish.
    min_announce_interval: int = option(5, "never re-announce more often than this", metavar="S")
    alert_queue_size: int = option(100_000, "libtorrent alert queue (read_piece alerts carry piece data)",
                                   metavar="N")
    # Without a pause the alert thread pops ~1 alert per wake-up (node/torrent/session.py), and on a busy
    # machine a wake-up costs more than its alert: the pop and the conversion after one took ~30 and
    # ~38 us, the same alerts converted again right after ~4 us.  The pause is skipped while a download
    # waits for its first piece or nears its end (node/stream.py PROMPT_TAIL), and on a host with an
    # upload budget (node/budget.py reads libtorrent's counters every 50 ms): there a client or the
    # budget waits.  50 ms against none, alternating raw+warm runs (4 sets each, 2026-12-06): the alert
    # thread 2.89 -> 2.17 ms/MB at N=2 (60 ms), 2.93 -> 2.41 at N=4 (60 ms), 3.53 -> 2.81 at N=8, with
    # ~40 % of the wake-ups; warm ÷ raw time in the same runs 1.00 / 1.01 / 1.06 -> 1.01 / 1.00 / 1.03.  Before
    # the prompt tail, 5-30 ms made rollouts 1.5-10 % longer (a layer's end waited for the pauses).
    alert_batch: float = option(0.05, "seconds the alert thread lets alerts gather after each batch (0: none)",
                                metavar="S")
    # posix writes each block and hashes each piece from the file on the network thread, so a verified
    # piece is in the file: streams read it from there (node/stream.py).  pread, mmap (and libtorrent's
    # default) keep written blocks in a cache and hash from it: the file right after piece_finished held
    # stale bytes for up to 1 piece in 4, so streams read through libtorrent (read_piece: an alert round
    # trip per piece).  posix blocks the network thread on a page-cache miss; the others do not.
    disk_io: str = option("posix", "libtorrent disk back-end: posix (streams read verified pieces from the "
                          "file), pread or mmap (disk threads, a write cache; pieces read back through "
                          "libtorrent), default (libtorrent's choice)", metavar="NAME")
    stop_tracker_timeout: int = option(1, "teardown waits this long for the tracker's event=stopped", metavar="S")
    user_agent: str = option("layerswarm/0.1", "BitTorrent user agent", metavar="UA")
    lt_settings: dict = option(default_factory=dict, help="raw libtorrent settings applied last "
                               "(tuning; env: a JSON object)", flags=("--lt-setting",))

    def __post_init__(self) -> None:
        _positive(self, "peer_request_queue")
        if not 0 <= self.alert_batch <= 0.1:   # longer holds every piece (and a stall guard) that long
            raise InvalidOption("alert_batch", f"wants 0 to 0.1 seconds, got {self.alert_batch}")
        if self.disk_io not in DISK_IO:
            raise InvalidOption("disk_io", f"wants one of {', '.join(DISK_IO)}, got {self.disk_io!r}")
        _host_port("peer_listen", self.peer_listen, "--peer-listen")
        _host_port("peer_ssl_listen", self.peer_ssl_listen, "--peer-ssl-listen")


@dataclass
class ClientAuthSection:
    """Chained authorization: a client reads repository R only if the upstream lets it pull R."""

    # One check per (client credential, upstream, repository) per TTL: the upstream sees at most
    # that many extra requests, and a revoked user keeps access at most this long.
    auth_ttl: float = option(60.0, "seconds a client's authorization for a repository is trusted (and its "
                             "credential kept in memory) before the upstream is asked again", metavar="S")
    auth_cache_entries: int = option(20_000, "most authorization decisions (and credentials) kept at once",
                                     metavar="N")

    def __post_init__(self) -> None:
        _positive(self, "auth_ttl", "auth_cache_entries")


@dataclass
class BudgetSection:
    """Host budgets: what this host spends on the fleet (bandwidth, origin fetches) and the disk it keeps free."""

    # Bytes per second of payload to other hosts, BitTorrent peers (LAN ones included) and relays together;
    # node/budget.py splits it between the two, every 50 ms, over a sliding second.
    upload_budget: int | None = option(None, "upload to other hosts per second, BitTorrent peers (LAN included) "
                                       "and relays together, e.g. 10M (default: no limit)", parse=parse_size,
                                       metavar="BYTES")
    download_budget: int | None = option(None, "BitTorrent download per second (LAN peers included), e.g. 20M "
                                         "(default: no limit)", parse=parse_size, metavar="BYTES")
    origin_fetches: int | None = option(None, "blob fetches from origin registries at once, whatever the reason; "
                                        "more wait up to the first-byte timeout, then get 429 (default: no cap)",
                                        metavar="N")
    disk_free_min: int = option(1 << 30, "/readyz answers 503 while the store's filesystem has less free space "
                                "than this", parse=parse_size, metavar="BYTES")

    def __post_init__(self) -> None:
        if self.origin_fetches is not None:
            _positive(self, "origin_fetches")


@dataclass
class AdminSection:
    """Operator access to the admin views (/_layerswarm/seed, status, layers)."""

    admin_token: str | None = option(None, "bearer token the admin views require", secret=True, metavar="T")


@dataclass
class FleetSection:
    """Secure fleet mode: the fleet CA and this host's certificate (off when no CA is given)."""

    fleet_ca: str | None = option(None, "the fleet CA: secure fleet mode (TLS with certificates between hosts, "
                                  "SSL torrents)", metavar="PEM")
    fleet_cert: str | None = option(None, "this host's certificate from the fleet CA", metavar="PEM")
    fleet_key: str | None = option(None, "its private key", metavar="PEM")
    client_tls_cert: str | None = option(None, "serve the client API over HTTPS with this certificate "
                                         "(default plain HTTP: it is on loopback)", metavar="PEM")
    client_tls_key: str | None = option(None, "its private key", metavar="PEM")
    _tls: object = field(default=None, init=False, repr=False, compare=False)   # built once, on first use

    def __post_init__(self) -> None:
        given = [bool(self.fleet_ca), bool(self.fleet_cert), bool(self.fleet_key)]
        if any(given) and not all(given):
            raise InvalidOption("fleet_ca", "--fleet-ca, --fleet-cert and --fleet-key go together")
        if bool(self.client_tls_cert) != bool(self.client_tls_key):
            raise InvalidOption("client_tls_cert", "--client-tls-cert and --client-tls-key go together")

    @property
    def secure(self) -> bool:
        return bool(self.fleet_ca)

    def tls(self):
        """This host's one fleet TLS material (format/pki.py: FleetTLS), None in open mode."""
        if self.secure and self._tls is None:
            from layerswarm.bridge.format.pki import FleetTLS
            self._tls = FleetTLS(self.fleet_ca, self.fleet_cert, self.fleet_key)
        return self._tls

    def client_api_context(self) -> ssl.SSLContext | None:
        """HTTPS for the client API only when the user gives it a certificate (it is on loopback)."""
        if not self.client_tls_cert:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(self.client_tls_cert, self.client_tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise UserError(f"client API certificate {self.client_tls_cert}: {exc}") from None
        return ctx


@dataclass
class BridgeConfig:
    server: ServerSection = field(default_factory=ServerSection)
    upstreams: UpstreamsSection = field(default_factory=UpstreamsSection)
    swarm: SwarmSection = field(default_factory=SwarmSection)
    stream: StreamSection = field(default_factory=StreamSection)
    session: SessionSection = field(default_factory=SessionSection)
    client_auth: ClientAuthSection = field(default_factory=ClientAuthSection)
    budgets: BudgetSection = field(default_factory=BudgetSection)
    admin: AdminSection = field(default_factory=AdminSection)
    fleet: FleetSection = field(default_factory=FleetSection)

    def __post_init__(self) -> None:
        if not self.server.store_dir:
            raise InvalidOption("store_dir", "is required (or store_dir in the config file)")

    # Derived values: properties, never arithmetic in the wiring.
    @property
    def host_id(self) -> str:
        return self.swarm.host_id or f"{socket.gethostname()}-{self.server.listen.rpartition(':')[2]}"

    @functools.cached_property
    def advertise_url(self) -> str:
        """The fleet listener's URL for leases: the tracker accepts only the caller's own address."""
        if self.swarm.advertise_url:
            return self.swarm.advertise_url
        host, _, port = self.server.fleet_listen.rpartition(":")
        host = host.strip("[]")
        if host in ("0.0.0.0", "::", ""):
            host = _local_address_toward(next(iter(self.swarm.tracker), None)) or socket.gethostname()
        scheme = "https" if self.fleet.secure else "http"
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"

    @property
    def tracker_timeout(self) -> float:
        """A tracker call: connect, plus a few seconds for a loaded tracker to answer."""
        return self.upstreams.connect_timeout + 5

    @property
    def first_byte_timeout(self) -> float:
        """A cold fetch's first byte: the origin's own connect and read timeouts, plus slack."""
        return self.upstreams.read_timeout + self.upstreams.connect_timeout + 5

    @property
    def follow_timeout(self) -> float:
        """A client following a fetch waits this long for the next byte before the origin."""
        return max(self.swarm.relay_timeout, self.stream.stall_timeout) * 2


SCHEMA = Schema(BridgeConfig, ENV_PREFIX)


def add_arguments(parser) -> None:
    SCHEMA.add_arguments(parser)


def from_args(args=None, environ=None, **values) -> BridgeConfig:
    """Flags > environment > TOML file (``--config``) > defaults; ``values`` by field name (tests)."""
    return SCHEMA.load(args, environ=environ, values=values)


def check(cfg: BridgeConfig) -> str:
    """``--check-config``: what the configuration names is usable (the store directory, every
    certificate, key and CA bundle); a one-line summary.  Nothing is created, bound or called."""
    writable_dir(cfg.server.store_dir, "store dir")
    for up in cfg.upstreams.by_name.values():
        if up.ca_bundle:
            readable_file(up.ca_bundle, f"CA bundle of upstream {up.name!r}")
    cfg.fleet.client_api_context()
    s, sw = cfg.server, cfg.swarm
    tls = cfg.fleet.tls()
    mode = f"secure mode ({tls.check()})" if tls is not None else "open mode"
    named = [("tracker", url) for url in sw.tracker] + [("advertise_url", sw.advertise_url)]
    for name, url in named:   # a secure fleet talks TLS only: plain HTTP would never answer
        if tls is not None and url and not url.startswith("https://"):
            raise UserError(f"{name} {url}: secure fleet mode wants an https:// URL")
    fleet = (f"tracker {', '.join(sw.tracker)}, fleet listener {s.fleet_listen}, peers {cfg.session.peer_listen}"
             if sw.tracker else "no tracker (a plain mirror)")
    return (f"bridge {cfg.host_id}: client API {s.listen}, store {os.path.abspath(s.store_dir)}, "
            f"upstream {cfg.upstreams.default.url}, {fleet}, {mode}")


def _secret(table: dict, key: str, where: str) -> str | None:
    if table.get(key) is not None:
        return str(table[key])
    if table.get(key + "_env"):
        return env_secret(table[key + "_env"], f"{where} {key}_env")
    if table.get(key + "_file"):
        return read_secret(table[key + "_file"], f"{where} {key}_file")
    return None


def _upstream_from_table(name: str, t: dict) -> UpstreamConfig:
    where = f"[upstreams.{name}]"
    if not isinstance(t, dict) or "url" not in t:
        raise UserError(f"{where} needs url")
    return UpstreamConfig(name, t["url"], username=_secret(t, "username", where),
                          password=_secret(t, "password", where), ca_bundle=t.get("ca_bundle"),
                          insecure=bool(t.get("insecure", False)), hosts=list(t.get("hosts", [])))
