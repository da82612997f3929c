"""The one ``layerswarm`` command and its subcommands.

Each subcommand lives in the module named below, which exposes
``add_arguments(parser)`` and ``run(args) -> int``.  They import libtorrent
only when they run, so ``layerswarm tracker`` never loads it.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from layerswarm.bridge.format.errors import UserError

SUBCOMMANDS = {
    # name: (module, one-line help)
    "tracker": ("layerswarm.bridge.cli.tracker", "run the HTTP BitTorrent tracker and layer metainfo registry"),
    "bridge": ("layerswarm.bridge.cli.bridge", "run the per-host registry mirror"),
    "seed": ("layerswarm.bridge.cli.seed", "seed prebuilt layers (docker save tar, OCI layout, blob, image ref)"),
    "inspect": ("layerswarm.bridge.cli.inspect", "show swarms of layers known to a tracker"),
    "demo": ("layerswarm.bridge.cli.demo", "run the embedded local stack and pull a demo image through it"),
    "ca": ("layerswarm.bridge.cli.ca", "make a fleet CA and host certificates for secure fleet mode"),
    "hosts-toml": ("layerswarm.bridge.cli.hoststoml", "point containerd's pulls of some registries at the bridge "
                   "(hosts.toml)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layerswarm",
        description="Docker image layers over BitTorrent.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (modname, helptext) in SUBCOMMANDS.items():
        mod = importlib.import_module(modname)
        p = sub.add_parser(name, help=helptext, description=helptext)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=min(level, logging.INFO) if args.command in ("tracker", "bridge", "demo") else level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"layerswarm {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: say so in one line, details only with -vv
        logging.getLogger("layerswarm").debug("unexpected error", exc_info=True)
        print(f"layerswarm {args.command}: internal error: {exc.__class__.__name__}: {exc} "
              "(run with -vv for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
