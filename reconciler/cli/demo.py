"""``reconciler demo``: the whole loop on a disposable systemd host (needs root)."""

from __future__ import annotations

import argparse

HELP = "show the whole loop on a disposable systemd host (root, Linux namespaces)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keep",
        action="store_true",
        help="leave the host running after the demo and print how to enter and stop it",
    )
    parser.add_argument(
        "--stop",
        metavar="NAME",
        help="power off a host --keep left running and remove everything it left behind",
    )


def run(args: argparse.Namespace) -> int:
    from reconciler.devtools import demo

    if args.stop:
        return demo.stop(args.stop)
    return demo.main(keep=args.keep)
