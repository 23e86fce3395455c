"""``reconciler history``: what was applied when, and how it went."""

from __future__ import annotations

import argparse

from reconciler.cli import _options

HELP = "list recent syncs: time, revision, result, duration, trigger"


def configure(parser: argparse.ArgumentParser) -> None:
    _options.add_settings(parser, source=False)
    parser.add_argument("-n", "--limit", type=int, default=20, help="how many (default 20)")
    _options.add_json(parser)


def run(args: argparse.Namespace) -> int:
    import time

    from reconciler import runtime

    store = runtime.open_store(_options.settings(args))
    records = store.history(args.limit)
    if args.json:
        _options.print_json([r.__dict__ for r in records])
        return 0
    print(f"{'WHEN (UTC)':<20} {'REVISION':<12} {'RESULT':<12} {'SECS':>6} {'TRIGGER':<8} ACTIONS")
    for r in records:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.started_at))
        line = (
            f"{when:<20} {r.revision[:12]:<12} {r.result:<12} {r.duration_sec:>6.1f} "
            f"{r.trigger:<8} {len(r.actions)}"
        )
        if r.summary:
            line += f"  {r.summary}"
        if r.error:
            line += f"  {r.error}"
        elif r.trigger == "rollback" and r.actions:
            line += f"  {'; '.join(r.actions)}"  # what the rollback did
        print(line)
    return 0
