"""The sync's rollback step (talks to git, systemd, the store through the steps).

The bad revision is marked in the store (not retried until a new commit or ``--force``),
the monitoring pass keeps the findings and bundles of the bad revision, then the last
good revision is fetched from the cache, rendered, planned, applied and gated like any
other. The step always ends by raising: the sync failed, whether the host is back or not;
``outcome`` says which, for the record.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, NoReturn

from reconciler.config import Settings
from reconciler.core.plan import describe
from reconciler.errors import ApplyError
from reconciler.host import journal
from reconciler.reconcile import fetch, verify
from reconciler.reconcile.apply import apply_plan
from reconciler.reconcile.hooks import Monitoring
from reconciler.reconcile.host_files import observe_files
from reconciler.reconcile.observe import observe
from reconciler.reconcile.outcome import Outcome, Result, Rollback, Unhealthy
from reconciler.reconcile.plan import make_plan
from reconciler.reconcile.render import render_cached, rendered_files
from reconciler.store.ledger import FILE_NAME as LEDGER_FILE
from reconciler.store.ledger import Ledger

if TYPE_CHECKING:
    from reconciler.store.sync_store import Store
    from reconciler.systemd.client import Systemd


def roll_back(
    failed: dict[str, Unhealthy],
    outcome: Outcome,
    settings: Settings,
    store: Store,
    systemd: Systemd,
    monitoring: Monitoring,
) -> NoReturn:
    """Mark the outcome's revision bad and apply the last good one; raises ApplyError."""
    bad = outcome.revision or ""
    reasons = "; ".join(f"{u}: {r}" for u, r in sorted(failed.items()))
    store.mark_bad(bad, reasons)
    Ledger.load(settings.state_dir / LEDGER_FILE).mark_bad(bad, reasons)  # outlives the store
    outcome.failed_units = failed
    outcome.result = Result.FAILED  # until the host is back on the good revision
    outcome.message = f"health gate failed: {reasons}"
    journal.event(
        "health.failed",
        f"revision {bad[:12]} failed its health gate: {reasons}",
        priority=3,
        revision=bad,
    )
    good = store.last_good()
    if good is None or good == bad:
        raise ApplyError(
            f"revision {bad[:12]} failed its health gate: {reasons}",
            "no earlier good revision to roll back to; fix and push a new commit",
        )
    monitoring.run_pass(systemd, store)  # findings and bundles of the bad revision
    started_wall, started = time.time(), time.monotonic()
    try:
        done = _converge(good, settings, store, systemd, monitoring)
    except Exception as exc:
        raise ApplyError(
            f"revision {bad[:12]} failed its health gate ({reasons}) and the "
            f"rollback to {good[:12]} failed: {exc}"
        ) from exc
    outcome.result, outcome.rolled_back_to = Result.ROLLED_BACK, good
    outcome.rollback = Rollback(
        started_wall, time.monotonic() - started, [f"roll back from {bad[:12]}", *done]
    )
    outcome.message = f"rolled back to {good[:12]}"
    journal.event(
        "rollback",
        f"revision {bad[:12]} failed its health gate ({reasons}); rolled back to {good[:12]}",
        priority=3,
        revision=good,
        bad_revision=bad,
    )
    raise ApplyError(
        f"revision {bad[:12]} failed its health gate: {reasons}; rolled back to {good[:12]}",
        "fix the service and push a new commit; the bad revision is not retried",
    )


def _converge(
    good: str, settings: Settings, store: Store, systemd: Systemd, monitoring: Monitoring
) -> list[str]:
    """The good revision through the steps of any sync (it passed validation once already;
    its gate's verdict is not judged again); what it did."""
    snapshot = fetch.snapshot(settings, good)
    desired = render_cached(snapshot, settings, store)
    files = rendered_files(store)
    observed = observe(desired, systemd, store, settings)
    plan = make_plan(desired, observed, settings, files, observe_files(files, systemd, settings))
    applied = apply_plan(plan, desired, systemd, store, settings, good, monitoring)
    verify.gate(plan, applied, systemd, store, monitoring)
    return describe(plan)
