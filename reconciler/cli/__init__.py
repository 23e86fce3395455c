"""The command-line frame: argument parsing, errors to one line and an exit code.

Commands live in ``reconciler/cli/<name>.py`` and are imported only when run, so that
``--help`` and ``--version`` stay cheap. A command module provides
``configure(parser)`` and ``run(args) -> int``; adding a command is one row in COMMANDS.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from reconciler import __version__

# name -> (module under reconciler.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "version": ("version", "print the version"),
}


def _build_parser(chosen: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconciler",
        description="GitOps for systemd hosts: git push changes what runs on this host.",
    )
    parser.add_argument("--version", action="version", version=f"reconciler {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default /etc/reconciler/config.toml, or $RECONCILER_CONFIG)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            _command_module(module).configure(cmd)
    return parser


def _command_module(module: str) -> Any:
    return importlib.import_module(f"reconciler.cli.{module}")


def _chosen_command(argv: Sequence[str]) -> str | None:
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
            continue
        if arg == "--config":
            skip_next = True
            continue
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = _chosen_command(argv)
    parser = _build_parser(chosen)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    from reconciler.errors import ReconcilerError

    debug = args.debug or os.environ.get("RECONCILER_DEBUG") == "1"
    try:
        code: int = _command_module(COMMANDS[args.command][0]).run(args)
        return code
    except ReconcilerError as exc:
        if debug:
            raise
        print(f"reconciler {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"reconciler {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
