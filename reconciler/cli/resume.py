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
    was = store.suspended()
    store.resume()
    journal.event("sync.started", "automatic syncs resumed", priority=5)
    print("automatic syncs resumed" if was else "automatic syncs were not suspended")
    return 0
