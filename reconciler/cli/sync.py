"""``reconciler sync``: one reconcile of this host against the config repository."""

from __future__ import annotations

import argparse

from reconciler.cli import _options

HELP = "fetch, render, plan, apply, health-gate (roll back on failure) and record one sync"


def configure(parser: argparse.ArgumentParser) -> None:
    _options.add_settings(parser)
    parser.add_argument("--dry-run", action="store_true", help="print the plan, touch nothing")
    parser.add_argument(
        "--force",
        action="store_true",
        help="run even while suspended, and retry a revision marked bad",
    )
    parser.add_argument(
        "--allow-empty",
        action="store_true",
        help="allow an inventory that removes every managed unit",
    )
    parser.add_argument(
        "--trigger",
        default="manual",
        choices=["manual", "timer", "webhook"],
        help=argparse.SUPPRESS,
    )
    _options.add_json(parser)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from reconciler import journal, sync

    journal.setup()
    settings = _options.settings(args)
    if args.allow_empty:
        settings = replace(settings, allow_empty=True)
    outcome = sync.run(settings, dry_run=args.dry_run, force=args.force, trigger=args.trigger)
    if args.dry_run:
        from reconciler.cli import plan as plan_cmd

        return plan_cmd.show(outcome, as_json=args.json)
    if args.json:
        _options.print_json(_as_dict(outcome))
        return 0
    rev = (outcome.revision or "")[:12]
    if outcome.result in ("suspended", "held"):
        print(outcome.message)
    elif outcome.result == "noop":
        print(
            f"revision {rev}: host already matches; nothing to do"
            + (f" ({outcome.message})" if outcome.message else "")
        )
    else:
        print(f"revision {rev}: {len(outcome.actions)} actions")
        for line in outcome.actions:
            print(f"  {line}")
        print(f"{outcome.result}" + (f": {outcome.message}" if outcome.message else ""))
    return 0


def _as_dict(outcome: object) -> dict[str, object]:
    from reconciler.sync import Outcome

    assert isinstance(outcome, Outcome)
    return {
        "result": outcome.result,
        "revision": outcome.revision,
        "actions": outcome.actions,
        "notes": list(outcome.plan.notes),
        "failed_units": outcome.failed_units,
        "rolled_back_to": outcome.rolled_back_to,
        "message": outcome.message,
        "dbus_calls": outcome.dbus_calls,
    }
