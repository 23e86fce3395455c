"""``reconciler sync``: one reconcile of this host against the config repository."""

from __future__ import annotations

import argparse
import contextlib
import os

from reconciler.cli import _options
from reconciler.config import Settings

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
        "--allow-downgrade",
        action="store_true",
        help="signed mode: apply a revision that is not a fast-forward of the applied one",
    )
    parser.add_argument(
        "--no-monitor",
        action="store_true",
        help="skip the monitoring pass a sync ends with",
    )
    parser.add_argument(
        "--trigger",
        default="manual",
        choices=["manual", "timer", "webhook", "unit"],  # unit: ask systemd and the mark
        help=argparse.SUPPRESS,
    )
    _options.add_json(parser)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from reconciler import reconcile
    from reconciler.errors import LockedError, ReconcilerError
    from reconciler.host import journal
    from reconciler.monitor.sync_hooks import SyncMonitoring
    from reconciler.reconcile.outcome import Result

    journal.setup()
    settings = _options.settings(args)
    if args.allow_empty:
        settings = replace(settings, allow_empty=True)
    if args.allow_downgrade:
        settings = replace(settings, allow_downgrade=True)
    monitor = not (args.dry_run or args.no_monitor)
    monitoring = SyncMonitoring(settings)
    trigger = args.trigger
    if trigger in ("timer", "unit") and not args.dry_run:
        from reconciler.push import trigger as marks

        mark = marks.take(settings.state_dir)  # started by the webhook, the config follow?
        if trigger == "unit":  # gitops-sync.service's runs: systemd says what started it
            trigger = marks.of_unit(os.environ, mark, last_sync_at(settings))
        else:  # "timer": what the unit ran before it said "unit" (until install follows)
            trigger = mark or trigger
    if args.dry_run:
        from reconciler.cli import plan

        plan.check_systemd(settings)
    elif follow_config(settings, trigger) is None:
        return 0  # this run's own unit changed: the run under the new one follows
    try:
        outcome = reconcile.run(
            settings,
            dry_run=args.dry_run,
            force=args.force,
            trigger=trigger,
            monitoring=monitoring,
        )
    except LockedError:
        raise  # the sync holding the lock ends with its own monitoring pass
    except ReconcilerError:
        if monitor:  # the remote is down or the apply failed: still look at the units
            monitoring.run_pass(None, None, quiet=True)
        raise
    passed = monitoring.run_pass(None, None) if monitor else None
    if args.dry_run:
        from reconciler.cli import plan

        return plan.show(outcome, as_json=args.json)
    findings = _findings(passed)
    if args.json:
        _options.print_json({**_as_dict(outcome), "findings": findings})
        return 0
    if journal.stderr_is_journal(os.environ.get("JOURNAL_STREAM"), 1):
        return 0  # a unit's run: its journal entries (sync.*, action, findings) say it once
    rev = (outcome.revision or "")[:12]
    if outcome.result in (Result.SUSPENDED, Result.HELD):
        print(outcome.message)
    elif outcome.result is Result.NOOP:
        print(
            f"revision {rev}: host already matches; nothing to do"
            + (f" ({outcome.message})" if outcome.message else "")
        )
    else:
        from reconciler.cli.plan import describe_commits

        for line in describe_commits(outcome):
            print(line)
        print(f"revision {rev}: {_options.count(len(outcome.actions), 'action')}")
        for line in outcome.actions:
            print(f"  {line}")
        print(f"{outcome.result.value}" + (f": {outcome.message}" if outcome.message else ""))
    for f in findings:
        print(f"finding: {f['summary']}")
    return 0


def last_sync_at(settings: Settings) -> float | None:
    """When the newest recorded sync started (None: none, or no readable state database):
    systemd's trigger details older than that were another run's."""
    from reconciler import runtime
    from reconciler.errors import ReconcilerError

    try:
        store = runtime.open_store(settings)
    except (ReconcilerError, OSError):
        return None
    try:
        newest = store.history(1)
    except (ReconcilerError, OSError):
        return None
    finally:
        store.close()
    return newest[0].started_at if newest else None


def follow_config(settings: Settings, trigger: str | None = None) -> bool | None:
    """The installed own units follow the host config first (``[backup] dest``, ``[webhook]
    listen``, ...); a failure there is logged and never stops the sync (False).

    None: this process runs in gitops-sync.service and the follow rewrote that unit. Its
    sandbox stays the old one (a new files root read-only): rather than fail half-way, the
    run stops after one line and starts reconciler-config.service, which is ordered after
    this run and starts the sync again under the new unit.
    """
    from reconciler.core import plan as plan_mod
    from reconciler.errors import ReconcilerError
    from reconciler.host import journal
    from reconciler.reconcile import install

    try:
        plan = install.follow_config(settings)
    except (ReconcilerError, OSError) as exc:
        journal.event(
            "install", f"cannot bring the own units in line with the config: {exc}", priority=4
        )
        return False
    if plan is not None and not plan.empty:
        lines = plan_mod.describe(plan)
        journal.event("install", "own units follow the host config: " + "; ".join(lines))
    if not (install.changes_sync_unit(plan) and _running_in(install.SYNC)):
        return True
    from reconciler.errors import SystemdError
    from reconciler.push.service import start_unit

    if trigger:  # the run under the new unit is this one's: same trigger in the history
        from reconciler.push import trigger as marks

        with contextlib.suppress(OSError):
            marks.mark(settings.state_dir, trigger)
    try:
        start_unit(settings.bus, install.CONFIG_UNIT)
        then = f"{install.CONFIG_UNIT} starts a sync under the new unit once this run ends"
    except SystemdError as exc:
        then = f"the next run applies it (cannot start {install.CONFIG_UNIT}: {exc})"
    journal.event(
        "install", f"{install.SYNC} changed with the host config: this run stops here; {then}"
    )
    return None


def _running_in(unit: str) -> bool:
    """Whether this process runs in ``unit``'s cgroup (its sandbox is that unit's)."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as fh:
            return any(line.rstrip("\n").endswith("/" + unit) for line in fh)
    except OSError:
        return False


def _findings(passed: object) -> list[dict[str, object]]:
    """The open findings of the monitoring pass (kind, unit, summary), if it ran."""
    from reconciler.monitor.types import PassResult

    if not isinstance(passed, PassResult):
        return []
    return [
        {"kind": f.finding.kind, "unit": f.finding.unit, "summary": f.finding.summary}
        for f in passed.open
    ]


def _as_dict(outcome: object) -> dict[str, object]:
    from reconciler.reconcile import Outcome

    assert isinstance(outcome, Outcome)
    return {
        "result": outcome.result.value,
        "revision": outcome.revision,
        "resolved": outcome.resolved,
        "commit": outcome.commit.__dict__ if outcome.commit else None,
        "commits": [c.__dict__ for c in outcome.commits],
        "actions": outcome.actions,
        "notes": list(outcome.plan.notes),
        "failed_units": {u: str(why) for u, why in outcome.failed_units.items()},
        "rolled_back_to": outcome.rolled_back_to,
        "message": outcome.message,
        "dbus_calls": outcome.dbus_calls,
    }
