"""``reconciler version``: the version and where the package lives."""

from __future__ import annotations

import argparse

from reconciler import __version__


def configure(parser: argparse.ArgumentParser) -> None:
    del parser


def run(args: argparse.Namespace) -> int:
    del args
    print(f"reconciler {__version__}")
    return 0
