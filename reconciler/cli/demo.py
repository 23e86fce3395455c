"""``reconciler demo``: the whole loop on a disposable systemd host (needs root)."""

from __future__ import annotations

import argparse

HELP = "show the whole loop on a disposable systemd host (root, Linux namespaces)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keep",
        action="store_true",
        help="leave the host running at the end and print how to enter it",
    )


def run(args: argparse.Namespace) -> int:
    from reconciler.devtools import demo

    return demo.main(keep=args.keep)
