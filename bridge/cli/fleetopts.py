"""Options of the commands that talk to a fleet's tracker (seed, inspect): ``--tracker`` (repeatable) and
``--fleet-ca/--fleet-cert/--fleet-key`` for a secure fleet."""
from __future__ import annotations

import os

from layerswarm.bridge.config import FleetSection
from layerswarm.bridge.format.errors import InvalidOption, UserError


def add_arguments(p) -> None:
    g = p.add_argument_group("secure fleet mode (all three, or none)")
    for name, what in (("ca", "the fleet CA"), ("cert", "this host's certificate from it"), ("key", "its key")):
        env = f"LAYERSWARM_FLEET_{name.upper()}"
        g.add_argument(f"--fleet-{name}", default=os.environ.get(env), metavar="PEM", help=f"{what} (env {env})")


def tls(args):
    """The FleetTLS the options name, None in open mode; a clear error for half a set or unreadable files."""
    try:
        section = FleetSection(fleet_ca=args.fleet_ca, fleet_cert=args.fleet_cert, fleet_key=args.fleet_key)
    except InvalidOption as exc:
        raise UserError(str(exc)) from None
    return section.tls()


def add_tracker_argument(p, default: str | None = None) -> None:
    shown = f"; default {default}" if default else ""
    p.add_argument("--tracker", action="append", metavar="URL",
                   help="tracker base URL; repeat for replicas sharing one store "
                        f"(env LAYERSWARM_TRACKER, comma-separated{shown})")


def trackers(args, default: str | None = None) -> list:
    """The tracker URLs: the flags, else the environment, else ``default`` (empty when none)."""
    env = [u.strip() for u in os.environ.get("LAYERSWARM_TRACKER", "").split(",") if u.strip()]
    return args.tracker or env or ([default] if default else [])
