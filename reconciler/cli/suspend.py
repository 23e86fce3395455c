"""``reconciler suspend``: stop automatic syncs during an incident (until ``resume``)."""

from __future__ import annotations

import argparse

from reconciler.cli import _options

HELP = "stop automatic syncs until 'reconciler resume' (sync --force still runs)"


def configure(parser: argparse.ArgumentParser) -> None:
    _options.add_settings(parser, source=False)
    parser.add_argument("--reason", default="suspended by operator", help="why, for status")


def run(args: argparse.Namespace) -> int:
    import getpass

    from reconciler import runtime
    from reconciler.host import journal

    journal.setup()
    store = runtime.open_store(_options.settings(args))
    store.suspend(args.reason, by=getpass.getuser())
    journal.event("sync.suspended", f"automatic syncs suspended: {args.reason}", priority=5)
    print(f"automatic syncs suspended: {args.reason}")
    return 0
