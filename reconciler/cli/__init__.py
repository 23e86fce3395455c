"""The command-line frame: argument parsing, errors to one line and an exit code.

Every module ``reconciler/cli/<name>.py`` (not starting with ``_``) is a command: it sets
``HELP`` (one line), ``configure(parser)`` and ``run(args) -> int``, and imports anything
heavy inside ``run``. Adding a command means adding a module; this frame never changes.
Only the chosen command's module is imported: these commands are oneshots fired by timers.

The top layer, and the only place that prints: may import every other subpackage (it
fills the sync's monitoring hooks from ``monitor``). Nothing imports ``cli``.
"""

from __future__ import annotations

import os
import sys

from reconciler import __version__

TYPE_CHECKING = False  # typing itself costs ~5 ms at start-up
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from types import ModuleType


_DEBUG = "show tracebacks on errors"


def _commands() -> dict[str, str]:
    """Command name -> module name, from the modules in this package (no pkgutil/inspect)."""
    names = {}
    for entry in os.scandir(os.path.dirname(__file__)):
        stem, dot, suffix = entry.name.partition(".")
        if dot and suffix == "py" and not stem.startswith("_"):
            names[stem.replace("_", "-")] = stem
    return names


def _module(name: str) -> ModuleType:
    import importlib

    return importlib.import_module(f"{__name__}.{name}")


def build_parser(commands: dict[str, str], only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, just that command (the others are not even imported)."""
    import argparse

    from reconciler.cli._parser import Parser

    parser = Parser(
        prog="reconciler",
        description="GitOps for systemd hosts: git push changes what runs on this host.",
    )
    parser.add_argument("--version", action="version", version=f"reconciler {__version__}")
    parser.add_argument("--debug", action="store_true", help=_DEBUG)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in sorted(commands.items()):
        if only is not None and name != only:
            continue
        module = _module(module_name)
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.configure(cmd)
        # also after the command (``reconciler sync --debug``); absent, the global one stands
        cmd.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG)
    return parser


def _chosen(argv: Sequence[str], commands: dict[str, str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in commands else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:  # the fast path: no parser, no imports
        print(f"reconciler {__version__}")
        return 0
    commands = _commands()
    parser = build_parser(commands, only=_chosen(argv, commands))
    args = parser.parse_args(argv)
    if not args.command:
        build_parser(commands).print_help()
        return 2
    from reconciler.errors import ReconcilerError

    debug = args.debug or os.environ.get("RECONCILER_DEBUG") == "1"
    from reconciler.cli import _streams

    _streams.deduplicate()  # under systemd: a line the journal has natively is not repeated
    try:
        code: int = _module(commands[args.command]).run(args)
        return code
    except ReconcilerError as exc:
        if debug:
            raise
        from reconciler.host import journal

        # a failed sync logged its error natively: under systemd the line is not repeated
        if not journal.logged_natively(str(exc), sys.stderr, part=True):
            print(f"reconciler {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"reconciler {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
