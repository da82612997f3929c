"""Bridge configuration: CLI flags, an optional TOML file, env vars for secrets.

Upstream routing (which registry a request goes to) is decided here once:

* the *default* upstream answers plain names (dockerd ``registry-mirrors``
  sends ``library/<name>``) and the Docker Hub hosts (``?ns=docker.io``);
  it is Docker Hub unless ``--upstream URL`` / ``default_upstream`` says else;
* named aliases (``--alias NAME=URL`` or ``[upstreams.NAME]``) answer
  ``/v2/NAME/<repo>/...`` and ``?ns=<their host[:port]>``;
* allowed hosts (``--allow-host HOST``, ``allow_hosts``) answer
  ``/v2/HOST/<repo>/...`` and ``?ns=HOST`` over https.  Nothing else is
  reachable, so the bridge is not an open proxy.

TOML example::

    listen = "127.0.0.1:5000"
    store_dir = "/var/lib/layerswarm"
    default_upstream = "hub"           # an alias name or a URL
    allow_hosts = ["ghcr.io", "quay.io"]
    connect_timeout = 5
    read_timeout = 30
    tag_ttl = 5
    threads = 64

    [upstreams.hub]
    url = "https://registry-1.docker.io"
    username = "me"
    password_env = "HUB_TOKEN"         # secret from the environment

    [upstreams.corp]
    url = "https://registry.corp:5443"
    ca_bundle = "/etc/ssl/corp-ca.pem"
    hosts = ["registry.corp"]          # extra host names routed here
"""
from __future__ import annotations

import os

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from layerswarm.bridge.format.errors import UserError
from layerswarm.bridge.format.names import COMPONENT_RE

DOCKER_HUB_URL = "https://registry-1.docker.io"
DOCKER_HUB_HOSTS = ("docker.io", "index.docker.io", "registry-1.docker.io")
DEFAULT_NAME = "default"


@dataclass
class UpstreamConfig:
    name: str
    url: str
    username: str | None = None
    password: str | None = None
    ca_bundle: str | None = None
    insecure: bool = False
    hosts: list = field(default_factory=list)

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


@dataclass
class BridgeConfig:
    store_dir: str
    listen: str = "127.0.0.1:5000"
    upstreams: dict = field(default_factory=dict)  # name -> UpstreamConfig
    default_upstream: str = DEFAULT_NAME
    allow_hosts: list = field(default_factory=list)
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    tag_ttl: float = 5.0
    threads: int = 64
    graceful_timeout: float = 5.0
    max_manifest_bytes: int = 4 << 20
    access_log: bool = False
    # The swarm (all off without a tracker: a plain pass-through mirror).
    tracker_url: str | None = None
    publish_token: str | None = None
    peer_listen: str = "0.0.0.0:6881"
    advertise_url: str | None = None   # how other bridges reach this one (relay); default http://<listen>
    host_id: str | None = None         # unique per host; default <hostname>-<port>
    cache_max_bytes: int | None = None
    tiny_blob_bytes: int = 1 << 20
    stall_timeout: float = 30.0
    relay_timeout: float = 20.0
    lease_ttl: float = 30.0
    origin_slots: int = 4
    tracker_backoff: float = 10.0
    utp: bool = False
    admin_token: str | None = None     # required as Bearer on the admin views (/_layerswarm/seed, status)

    def __post_init__(self) -> None:
        if DEFAULT_NAME not in self.upstreams and self.default_upstream == DEFAULT_NAME:
            self.upstreams[DEFAULT_NAME] = UpstreamConfig(DEFAULT_NAME, DOCKER_HUB_URL)
        if self.default_upstream not in self.upstreams:
            raise UserError(f"default upstream {self.default_upstream!r} is not configured")
        for name in self.upstreams:
            if name != DEFAULT_NAME and not COMPONENT_RE.match(name):
                raise UserError(f"upstream alias {name!r} must be one lowercase name component "
                                "(letters, digits, '.', '_', '-')")
        for flag, url in (("--tracker", self.tracker_url), ("--advertise-url", self.advertise_url)):
            if url is not None:
                parts = urlsplit(url)
                if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
                    raise UserError(f"{flag} wants an http(s) base URL, got {url!r}")
        host, sep, port = self.peer_listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise UserError(f"--peer-listen wants HOST:PORT, got {self.peer_listen!r}")
        for host in self.allow_hosts:
            if host not in self.hosts():
                self.upstreams.setdefault(host, UpstreamConfig(host, "https://" + host))

    @property
    def default(self) -> UpstreamConfig:
        return self.upstreams[self.default_upstream]

    def hosts(self) -> dict:
        """Registry host (``host`` or ``host:port``, lower case) -> upstream name."""
        out = {}
        for name, up in self.upstreams.items():
            out.setdefault(up.netloc, name)
            for h in up.hosts:
                out[h.lower()] = name
        d = self.default
        for h in DOCKER_HUB_HOSTS:
            if d.is_docker_hub or h not in out:
                out[h] = self.default_upstream
        return out

    def prefixes(self) -> dict:
        """First path component -> upstream name (aliases, and hosts without a port)."""
        out = {h: n for h, n in self.hosts().items() if ":" not in h and "." in h and COMPONENT_RE.match(h)}
        out.update({n: n for n in self.upstreams if n != DEFAULT_NAME})
        return out


def _secret(table: dict, key: str) -> str | None:
    if table.get(key) is not None:
        return str(table[key])
    env = table.get(key + "_env")
    if env:
        if env not in os.environ:
            raise UserError(f"environment variable {env} (for {key}) is not set")
        return os.environ[env]
    return None


def _upstream_from_table(name: str, t: dict) -> UpstreamConfig:
    if "url" not in t:
        raise UserError(f"[upstreams.{name}] needs url")
    return UpstreamConfig(name, t["url"], username=_secret(t, "username"), password=_secret(t, "password"),
                          ca_bundle=t.get("ca_bundle"), insecure=bool(t.get("insecure", False)),
                          hosts=list(t.get("hosts", [])))


def add_arguments(parser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML config (upstream credentials, CA bundles, ...)")
    parser.add_argument("--listen", metavar="HOST:PORT", help="address to serve on (default 127.0.0.1:5000)")
    parser.add_argument("--store-dir", metavar="DIR", help="local store (manifest cache, layers)")
    parser.add_argument("--upstream", metavar="URL",
                        help=f"default upstream registry for plain names and docker.io (default {DOCKER_HUB_URL})")
    parser.add_argument("--upstream-user", metavar="USER",
                        help="username for the default upstream (password from $LAYERSWARM_UPSTREAM_PASSWORD)")
    parser.add_argument("--upstream-ca", metavar="PEM", help="CA bundle for the default upstream")
    parser.add_argument("--upstream-insecure", action="store_true", help="do not verify the default upstream's TLS")
    parser.add_argument("--alias", action="append", default=[], metavar="NAME=URL",
                        help="named upstream, reached as /v2/NAME/<repo>/... or ?ns=<its host> (repeatable)")
    parser.add_argument("--allow-host", action="append", default=[], metavar="HOST",
                        help="registry host reachable as /v2/HOST/<repo>/... or ?ns=HOST over https (repeatable)")
    parser.add_argument("--connect-timeout", type=float, metavar="S", help="upstream connect timeout (default 5)")
    parser.add_argument("--read-timeout", type=float, metavar="S", help="upstream read timeout (default 30)")
    parser.add_argument("--tag-ttl", type=float, metavar="S", help="seconds a tag->digest answer is cached (default 5)")
    parser.add_argument("--threads", type=int, metavar="N", help="server threads (default 64)")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.add_argument("--admin-token", metavar="T",
                        help="bearer token the admin views (/_layerswarm/seed, status) require "
                             "(or $LAYERSWARM_ADMIN_TOKEN)")
    sw = parser.add_argument_group("swarm (peer-to-peer layers; without --tracker the bridge is a plain mirror)")
    sw.add_argument("--tracker", metavar="URL", help="layerswarm tracker base URL, e.g. http://tracker:6969")
    sw.add_argument("--token", metavar="T", help="publish token for the tracker (or $LAYERSWARM_PUBLISH_TOKEN)")
    sw.add_argument("--peer-listen", metavar="HOST:PORT", help="BitTorrent listen address (default 0.0.0.0:6881)")
    sw.add_argument("--advertise-url", metavar="URL",
                    help="this bridge's URL as other bridges reach it for relaying (default http://<listen>)")
    sw.add_argument("--host-id", metavar="ID", help="unique name of this host (default <hostname>-<port>)")
    sw.add_argument("--cache-max", metavar="SIZE", help="layer store cap, e.g. 20G (LRU eviction; default none)")
    sw.add_argument("--tiny-blob-bytes", type=int, metavar="N", help="blobs below this get no torrent (default 1 MiB)")
    sw.add_argument("--stall-timeout", type=float, metavar="S", help="swarm without progress this long -> origin (30)")
    sw.add_argument("--relay-timeout", type=float, metavar="S", help="relay source silent this long -> origin (20)")
    sw.add_argument("--lease-ttl", type=float, metavar="S", help="cold-fetch lease TTL asked of the tracker (30)")
    sw.add_argument("--origin-slots", type=int, metavar="N",
                    help="concurrent origin fetches when the tracker is down (default 4)")
    sw.add_argument("--tracker-backoff", type=float, metavar="S",
                    help="after a tracker failure, go straight to the origin for this long (default 10)")
    sw.add_argument("--utp", action="store_true", help="also use uTP (default TCP only: faster on LANs)")


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text) -> int | None:
    """``20G``, ``512M``, ``1048576`` -> bytes."""
    if text is None or text == "":
        return None
    t = str(text).strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in _UNITS and not t[-1:].isdigit() else ""
    try:
        n = float(t[:-1] if unit else t)
    except ValueError:
        raise UserError(f"not a size: {text!r} (examples: 20G, 512M, 1048576)") from None
    if n <= 0:
        raise UserError(f"size must be positive: {text!r}")
    return int(n * _UNITS[unit])


def from_args(args) -> BridgeConfig:
    """Merge the TOML file (if any) with CLI flags (flags win) and env secrets."""
    data = {}
    if getattr(args, "config", None):
        try:
            with open(args.config, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UserError(f"cannot read config {args.config}: {exc}") from None
    upstreams = {name: _upstream_from_table(name, t) for name, t in data.get("upstreams", {}).items()}
    default_name = data.get("default_upstream", DEFAULT_NAME)
    if default_name not in upstreams and default_name != DEFAULT_NAME:
        # a URL
        upstreams[DEFAULT_NAME] = UpstreamConfig(DEFAULT_NAME, default_name)
        default_name = DEFAULT_NAME
    if args.upstream:
        upstreams[DEFAULT_NAME] = UpstreamConfig(DEFAULT_NAME, args.upstream)
        default_name = DEFAULT_NAME
    if default_name == DEFAULT_NAME and DEFAULT_NAME not in upstreams:
        upstreams[DEFAULT_NAME] = UpstreamConfig(DEFAULT_NAME, DOCKER_HUB_URL)
    d = upstreams[default_name]
    if args.upstream_user:
        d.username = args.upstream_user
    if os.environ.get("LAYERSWARM_UPSTREAM_USERNAME") and not d.username:
        d.username = os.environ["LAYERSWARM_UPSTREAM_USERNAME"]
    if os.environ.get("LAYERSWARM_UPSTREAM_PASSWORD") and not d.password:
        d.password = os.environ["LAYERSWARM_UPSTREAM_PASSWORD"]
    if args.upstream_ca:
        d.ca_bundle = args.upstream_ca
    if args.upstream_insecure:
        d.insecure = True
    for spec in args.alias:
        name, sep, url = spec.partition("=")
        if not sep or not name or not url:
            raise UserError(f"--alias wants NAME=URL, got {spec!r}")
        prev = upstreams.get(name)
        up = UpstreamConfig(name, url)
        if prev is not None:  # keep credentials / CA from the file
            up.username, up.password, up.ca_bundle, up.insecure, up.hosts = (
                prev.username, prev.password, prev.ca_bundle, prev.insecure, prev.hosts)
        upstreams[name] = up

    def pick(flag, key, default):
        v = getattr(args, flag, None)
        return v if v is not None else data.get(key, default)

    store_dir = pick("store_dir", "store_dir", None)
    if not store_dir:
        raise UserError("--store-dir is required (or store_dir in the config file)")
    return BridgeConfig(
        store_dir=store_dir,
        listen=pick("listen", "listen", "127.0.0.1:5000"),
        upstreams=upstreams,
        default_upstream=default_name,
        allow_hosts=[h.lower() for h in list(data.get("allow_hosts", [])) + list(args.allow_host)],
        connect_timeout=float(pick("connect_timeout", "connect_timeout", 5.0)),
        read_timeout=float(pick("read_timeout", "read_timeout", 30.0)),
        tag_ttl=float(pick("tag_ttl", "tag_ttl", 5.0)),
        threads=int(pick("threads", "threads", 64)),
        access_log=bool(args.access_log or data.get("access_log", False)),
        tracker_url=pick("tracker", "tracker", None),
        publish_token=pick("token", "token", None) or os.environ.get("LAYERSWARM_PUBLISH_TOKEN"),
        peer_listen=pick("peer_listen", "peer_listen", "0.0.0.0:6881"),
        advertise_url=pick("advertise_url", "advertise_url", None),
        host_id=pick("host_id", "host_id", None),
        cache_max_bytes=parse_size(pick("cache_max", "cache_max", None)),
        tiny_blob_bytes=int(pick("tiny_blob_bytes", "tiny_blob_bytes", 1 << 20)),
        stall_timeout=float(pick("stall_timeout", "stall_timeout", 30.0)),
        relay_timeout=float(pick("relay_timeout", "relay_timeout", 20.0)),
        lease_ttl=float(pick("lease_ttl", "lease_ttl", 30.0)),
        origin_slots=int(pick("origin_slots", "origin_slots", 4)),
        tracker_backoff=float(pick("tracker_backoff", "tracker_backoff", 10.0)),
        utp=bool(args.utp or data.get("utp", False)),
        admin_token=pick("admin_token", "admin_token", None) or os.environ.get("LAYERSWARM_ADMIN_TOKEN") or None,
    )
