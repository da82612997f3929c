"""containerd's ``hosts.toml``: send a registry's pulls to the bridge, falling back to the registry itself.

containerd (``ctr --hosts-dir``, CRI ``config_path``) reads
``<hosts dir>/<registry host>/hosts.toml`` on every pull; the file names the
registry (``server``: the fallback) and the mirrors tried first, in order.
containerd adds ``?ns=<registry host>`` to every mirror request, which is how
the bridge picks the upstream.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import tomli_w

from layerswarm.bridge.format.errors import UserError

# containerd's own default endpoint for docker.io (a hosts.toml naming docker.io replaces it)
DOCKER_HUB_SERVER = "https://registry-1.docker.io"
_REGISTRY_RE = re.compile(r"(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
                          r"(?::(?P<port>\d{1,5}))?")


def registry_dir_and_server(registry: str) -> tuple[str, str]:
    """(directory name, server URL) of a registry given as ``host[:port]`` (HTTPS) or an http(s) URL."""
    if "://" in registry:
        parts = urlsplit(registry)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/") or parts.query:
            raise UserError(f"registry {registry!r}: want host[:port] or an http(s) URL without a path")
        return parts.netloc, f"{parts.scheme}://{parts.netloc}"
    m = _REGISTRY_RE.fullmatch(registry)
    if m is None or (m["port"] and not 0 < int(m["port"]) < 65536):
        raise UserError(f"registry {registry!r}: want host[:port], e.g. docker.io or registry.corp:5443")
    return registry, DOCKER_HUB_SERVER if registry == "docker.io" else f"https://{registry}"


def render(server: str, mirror: str, mirror_ca: str | None = None) -> str:
    """The file's text: ``mirror`` (pull and resolve) first, then ``server``."""
    parts = urlsplit(mirror)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise UserError(f"mirror {mirror!r}: want an http(s) URL, e.g. http://127.0.0.1:5000")
    host = {"capabilities": ["pull", "resolve"]}
    if mirror_ca:
        host["ca"] = mirror_ca
    return tomli_w.dumps({"server": server, "host": {mirror.rstrip("/"): host}})


def write(hosts_dir, registry: str, mirror: str, server: str | None = None, mirror_ca: str | None = None) -> Path:
    """Write ``hosts_dir/<registry>/hosts.toml`` (atomically: containerd may read it mid-pull);
    ``server`` overrides the fallback derived from ``registry``."""
    name, derived = registry_dir_and_server(registry)
    text = render(server or derived, mirror, mirror_ca)
    d = Path(hosts_dir) / name
    tmp = None
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".hosts.toml.", dir=d)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, d / "hosts.toml")
    except OSError as exc:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
        raise UserError(f"cannot write {d / 'hosts.toml'}: {exc.strerror or exc}") from None
    return d / "hosts.toml"
