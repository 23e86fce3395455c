"""``reconciler resume``: let automatic syncs run again."""

from __future__ import annotations

import argparse

from reconciler.cli import _options

HELP = "let automatic syncs run again after 'suspend' or 'rollback'"


def configure(parser: argparse.ArgumentParser) -> None:
    _options.add_settings(parser, source=False)


def run(args: argparse.Namespace) -> int:
    from reconciler import runtime
    from reconciler.host import journal

    journal.setup()
    store = runtime.open_store(_options.settings(args))
    if not store.suspended():  # nothing changed: nothing to log
        print("automatic syncs were not suspended")
        return 0
    store.resume()
    journal.event("sync.resumed", "automatic syncs resumed", priority=5, echo=False)
    print("automatic syncs resumed")
    return 0
