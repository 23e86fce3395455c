"""``reconciler watch``: the long-running, event-driven monitor (``Type=notify``)."""

from __future__ import annotations

import argparse

from reconciler.cli import _options

HELP = "long-running monitor: live unit changes, crash loops within a second (Type=notify)"


def configure(parser: argparse.ArgumentParser) -> None:
    _options.add_settings(parser, source=False)
    parser.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="PATTERN",
        help="watch units whose names match (fnmatch; repeatable); default: the managed units "
        "(also [monitor] watch_include)",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="leave out units whose names match (repeatable; also [monitor] watch_exclude)",
    )


def run(args: argparse.Namespace) -> int:
    from reconciler.monitor.watch import daemon

    selection = daemon.Selection(tuple(args.include), tuple(args.exclude))
    return daemon.serve(lambda: _options.settings(args), selection)
