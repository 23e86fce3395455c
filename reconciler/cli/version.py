"""``reconciler version``."""

from __future__ import annotations

import argparse

from reconciler import __version__

HELP = "print the version"


def configure(parser: argparse.ArgumentParser) -> None:
    del parser


def run(args: argparse.Namespace) -> int:
    del args
    print(f"reconciler {__version__}")
    return 0
