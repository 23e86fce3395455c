"""``reconciler rollback [REV]``: go back to an earlier applied revision, then suspend."""

from __future__ import annotations

import argparse

from reconciler.cli import _options

HELP = "apply an earlier revision (default: the one before the current) and suspend syncs"


def configure(parser: argparse.ArgumentParser) -> None:
    _options.add_settings(parser)
    parser.add_argument(
        "revision",
        nargs="?",
        metavar="REV",
        help="a revision from 'reconciler history' (a prefix is enough)",
    )


def run(args: argparse.Namespace) -> int:
    from reconciler import reconcile, runtime
    from reconciler.errors import ReconcilerError, UsageError
    from reconciler.host import journal
    from reconciler.monitor.sync_hooks import SyncMonitoring

    journal.setup()
    settings = _options.settings(args)
    store = runtime.open_store(settings)
    applied = [r.revision for r in store.history(1000) if r.result in ("applied", "noop")]
    current = store.applied_revision()
    if args.revision is not None:
        matches = sorted({r for r in applied if r.startswith(args.revision)})
        if not args.revision.strip() or len(matches) != 1:
            others = {r.revision for r in store.history(1000) if r.revision}
            never = not matches and any(r.startswith(args.revision) for r in others)
            why = (
                "empty"
                if not args.revision.strip()
                else "ambiguous"
                if matches
                else "never applied healthy (it failed or was rolled back)"
                if never
                else "not an applied revision"
            )
            raise UsageError(
                f"cannot roll back to '{args.revision}': {why}",
                "pick a revision whose result is applied or noop in 'reconciler history'",
            )
        target = matches[0]
    else:
        earlier = [r for r in applied if r != current]
        if not earlier:
            raise UsageError("cannot roll back: no earlier applied revision")
        target = earlier[0]
    monitoring = SyncMonitoring(settings)
    try:
        outcome = reconcile.run(
            settings, revision=target, trigger="rollback", force=True, monitoring=monitoring
        )
    except ReconcilerError:
        monitoring.run_pass(None, None)  # as sync: look at the units anyway
        raise
    store.suspend(f"rolled back to {target[:12]}", by="rollback")
    journal.event(
        "rollback",
        f"rolled back to {target[:12]} by operator; automatic syncs suspended",
        priority=4,
        revision=target,
    )
    print(
        f"rolled back to {target[:12]} ({_options.count(len(outcome.actions), 'action')}); "
        "automatic syncs suspended: run 'reconciler resume' to follow the branch again"
    )
    # Like a sync, a rollback ends with a monitoring pass: findings of the units it
    # replaced resolve now, not at the next timer run.
    passed = monitoring.run_pass(None, None)
    for f in getattr(passed, "open", []):
        print(f"finding: {f.finding.summary}")
    return 0
