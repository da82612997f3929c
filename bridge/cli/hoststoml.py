"""``layerswarm hosts-toml``: point containerd's pulls of some registries at this host's bridge.

Writes ``DIR/<registry>/hosts.toml`` for each REGISTRY (format/hoststoml.py):
the bridge first, the registry itself as the fallback.  Run once per host
(a Kubernetes init container, or before the bridge's systemd unit) with the
registries the bridge serves: its default upstream (``docker.io``), its
aliases' hosts and its allowed hosts.  containerd re-reads the files on each
pull, so nothing restarts.
"""
from __future__ import annotations

from layerswarm.bridge.format import hoststoml
from layerswarm.bridge.format.options import readable_file, writable_dir


def add_arguments(p) -> None:
    p.add_argument("registries", nargs="+", metavar="REGISTRY",
                   help="a registry whose pulls go to the bridge: host[:port] (HTTPS, e.g. docker.io, ghcr.io) "
                        "or an http(s) URL")
    p.add_argument("--hosts-dir", default="/etc/containerd/certs.d", metavar="DIR",
                   help="containerd's registry config_path (default %(default)s)")
    p.add_argument("--mirror", default="http://127.0.0.1:5000", metavar="URL",
                   help="the bridge's client API as containerd reaches it (default %(default)s)")
    p.add_argument("--mirror-ca", metavar="PEM",
                   help="CA of the bridge's client API certificate (with --client-tls-cert on the bridge)")
    p.add_argument("--check-config", action="store_true", help="check the arguments and the directory; write nothing")


def run(args) -> int:
    # Every file's text first: a bad registry or mirror leaves the directory untouched.
    for reg in args.registries:
        hoststoml.render(hoststoml.registry_dir_and_server(reg)[1], args.mirror, args.mirror_ca)
    if args.mirror_ca:
        readable_file(args.mirror_ca, "mirror CA")
    if args.check_config:
        writable_dir(args.hosts_dir, "hosts dir")
        n = len(args.registries)
        print(f"configuration OK: {n} {'registry' if n == 1 else 'registries'} ({', '.join(args.registries)}) "
              f"to mirror {args.mirror} in {args.hosts_dir}")
        return 0
    for reg in args.registries:
        print(f"wrote {hoststoml.write(args.hosts_dir, reg, args.mirror, mirror_ca=args.mirror_ca)}")
    return 0
