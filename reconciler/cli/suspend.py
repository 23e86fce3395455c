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
    import time

    from reconciler import runtime
    from reconciler.host import journal

    journal.setup()
    store = runtime.open_store(_options.settings(args))
    before = store.suspended()  # suspended already: the time is kept, the reasons both
    reason = args.reason
    if before is not None and before.reason not in (reason, ""):
        reason = f"{reason}; before: {before.reason}"  # an incident id is never lost
    store.suspend(reason, by=getpass.getuser(), now=before.since if before else None)
    msg = f"automatic syncs suspended: {args.reason}"
    if before is not None:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(before.since))
        msg += f" (were already, since {since}: {before.reason})"
    journal.event("sync.suspended", msg, priority=5, echo=False)
    print(msg)
    return 0
