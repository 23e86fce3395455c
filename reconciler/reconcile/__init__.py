"""One reconcile, as its steps: fetch → render → observe → plan → apply → verify → record.

Each step returns a value or raises a ReconcilerError. This module wires the adapters
(source, systemd, state, unit files) to the pure core (inventory, render, plan) and owns
the crash-safety rules:

* the manifest of owned files is widened to include every file about to be written
  *before* writing, so a kill half-way never leaves files the next run would take for
  foreign; it is narrowed only after a successful apply;
* a revision that fails its health gate is recorded as bad, the last good revision is
  applied again, and the bad one is not retried until a new commit (or ``--force``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.config import Settings
from reconciler.errors import ApplyError, ReconcilerError, SourceError, UsageError
from reconciler.host import journal
from reconciler.model import DesiredUnit, LiveUnit, Plan, Snapshot
from reconciler.runtime import connect, open_store
from reconciler.store.sync_store import DESIRED_KEY, decode_desired, encode_desired

if TYPE_CHECKING:
    from reconciler.store.sync_store import Store
    from reconciler.systemd.client import Systemd

log = logging.getLogger("reconciler")
MARKER = "# Managed by reconciler"  # first line of every unit file a sync writes
PENDING_KEY = "pending_jobs"  # units an apply is about to (re)start; cleared when done
RENDER_KEY = "render_key"  # revision:host:version of the last render
RENDERED_KEY = "rendered_units"  # its output, reused while the key matches


@dataclass
class Outcome:
    """What a sync did, for the CLI and the record."""

    result: str  # applied | noop | rolled-back | failed | suspended | held | dry-run
    revision: str | None = None
    plan: Plan = field(default_factory=Plan)
    actions: list[str] = field(default_factory=list)
    failed_units: dict[str, str] = field(default_factory=dict)
    rolled_back_to: str | None = None
    message: str = ""
    dbus_calls: dict[str, int] = field(default_factory=dict)  # D-Bus method -> calls
    recorded: bool = False


# ---- the steps -------------------------------------------------------------------------


def fetch_snapshot(settings: Settings, revision: str | None = None) -> Snapshot:
    from reconciler.reconcile import fetch as source

    cache = settings.state_dir / "repo"
    verify = None
    if settings.verify_signatures:
        if settings.gpg_home is None:
            raise UsageError(
                "cannot verify commit signatures: gpg_home is not set",
                "set gpg_home in /etc/reconciler/config.toml to a keyring of trusted keys",
            )
        verify = source.Verification(settings.gpg_home)
    timeout = settings.fetch_timeout_sec
    if revision is not None:
        return source.read_revision(cache, revision, verify=verify, timeout=timeout)
    if not settings.repo:
        raise UsageError(
            "cannot sync: no config repository configured",
            "set repo in /etc/reconciler/config.toml, $RECONCILER_REPO or --repo",
        )
    return source.fetch(settings.repo, settings.ref, cache, timeout=timeout, verify=verify)


def render(snapshot: Snapshot, host: str) -> list[DesiredUnit]:
    from reconciler.core import inventory
    from reconciler.core import render as render_mod

    inv = inventory.load(snapshot.files)
    units = render_mod.render(inv.select(host), render_mod.decode_templates(snapshot.files))
    return [
        replace(
            u,
            content=f"{MARKER} (service {u.service}); edits are reverted by the next "
            f"sync.\n{u.content}",
        )
        for u in units
    ]


def render_cached(snapshot: Snapshot, host: str, store: Store) -> list[DesiredUnit]:
    """Render, reusing the units of the last render of the same revision, host and version.

    Rendering is a pure function of those three, and skipping it keeps jinja2 and pydantic
    out of a no-op sync (about a quarter of a second at start-up).
    """
    from reconciler import __version__

    key = f"{snapshot.revision}:{host}:{__version__}"
    if store.kv_get(RENDER_KEY) == key:
        return decode_desired(store.kv_get(RENDERED_KEY))
    units = render(snapshot, host)
    with store.transaction():
        store.kv_set(RENDER_KEY, key)
        store.kv_set(RENDERED_KEY, encode_desired(units))
    return units


def observe(
    systemd: Systemd, unit_dir: Path, names: Sequence[str]
) -> tuple[dict[str, str | None], dict[str, LiveUnit]]:
    files: dict[str, str | None] = {}
    for name in names:
        try:
            files[name] = (unit_dir / name).read_text(encoding="utf-8")
        except FileNotFoundError:
            files[name] = None
        except UnicodeDecodeError:
            files[name] = ""  # unreadable as text: differs from anything we render
    return files, systemd.read_units(sorted(names), runtime=False)


def make_plan(
    desired: Sequence[DesiredUnit],
    systemd: Systemd,
    store: Store,
    settings: Settings,
) -> Plan:
    from reconciler.core import plan as plan_mod

    owned = store.owned()
    names = sorted({u.name for u in desired} | owned)
    files, live = observe(systemd, settings.unit_dir, names)
    # A file we wrote carries the marker: ownership survives a lost state database.
    owned |= {n for n, text in files.items() if text and text.startswith(MARKER)}
    foreign = frozenset(n for n in names if n not in owned and files.get(n) is not None)
    interrupted = frozenset(json.loads(store.kv_get(PENDING_KEY) or "[]"))
    return plan_mod.plan(
        desired,
        files,
        live,
        owned,
        allow_empty=settings.allow_empty,
        foreign=foreign,
        interrupted=interrupted,
        unit_dir=str(settings.unit_dir),
    )


def check_units(desired: Sequence[DesiredUnit], plan: Plan) -> None:
    """``systemd-analyze verify`` the units this plan writes; refuse before touching the host."""
    from reconciler.errors import RenderError
    from reconciler.model import WriteUnitFile
    from reconciler.reconcile import validate

    written = {a.name for a in plan.actions if isinstance(a, WriteUnitFile)}
    units = [u for u in desired if u.name in written]
    if not units:
        return
    complaints = validate.verify_units(units)
    if complaints:
        more = f" (and {len(complaints) - 1} more)" if len(complaints) > 1 else ""
        raise RenderError(f"systemd-analyze refused a rendered unit: {complaints[0]}{more}")


def execute(
    plan: Plan,
    desired: Sequence[DesiredUnit],
    systemd: Systemd,
    store: Store,
    settings: Settings,
    revision: str,
) -> dict[str, str]:
    """Apply, then gate; returns ``{unit: reason}`` of units that failed (empty: healthy)."""
    from reconciler.core import plan as plan_mod
    from reconciler.model import RestartUnit, StartUnit
    from reconciler.reconcile import apply as apply_mod
    from reconciler.reconcile import verify as health

    pending = sorted(a.name for a in plan.actions if isinstance(a, StartUnit | RestartUnit))
    with store.transaction():
        store.set_owned(store.owned() | plan.owned_after)  # widen before writing anything
        store.kv_set(PENDING_KEY, json.dumps(pending))  # a kill before the jobs: redo them
    _record_jobs(settings, store, plan, systemd)
    apply_mod.clean_temp_files(settings.unit_dir)
    lines = iter(plan_mod.describe(plan))

    def on_action(_action: object) -> None:
        journal.event("action", next(lines, str(_action)), revision=revision)

    result = apply_mod.apply(plan, settings.unit_dir, systemd, on_action=on_action)
    with store.transaction():
        store.set_owned(plan.owned_after | (store.owned() - result.removed))
        store.kv_set(DESIRED_KEY, encode_desired(desired))
        store.kv_set(PENDING_KEY, "[]")
    gated = {unit for unit, _ in plan.health_checks}
    failed = {u: f"start job {r}" for u, r in result.failed_jobs.items() if u in gated}
    checks = [(u, t) for u, t in plan.health_checks if u not in failed]
    if checks:
        with _recording(settings, store) as on_read:
            failed.update(health.wait_healthy(systemd, checks, on_read=on_read))
    for unit, result_text in result.failed_jobs.items():
        if unit not in gated:
            log.warning("%s: start job %s (no health gate: not rolled back)", unit, result_text)
    return failed


def _record_jobs(settings: Settings, store: Store, plan: Plan, systemd: Systemd) -> None:
    """The start/restart/stop jobs about to run, so ``reconciler events`` says "sync" and
    not "operator" for what they cause. Written before them: a look may follow at once.

    A unit the monitor has never looked at gets its first look (the baseline) now, before
    its start job: that first start is then counted, and is the sync's.
    """
    from reconciler import monitor
    from reconciler.core.counters import Action, Observation
    from reconciler.model import RestartUnit, StartUnit, StopUnit
    from reconciler.store.finding_store import FindingStore

    verbs = {StartUnit: "start", RestartUnit: "restart", StopUnit: "stop"}
    now = time.time()
    jobs = [
        Action(a.name, now, verbs[type(a)])
        for a in plan.actions
        if isinstance(a, StartUnit | RestartUnit | StopUnit)
    ]
    if not jobs:
        return
    config = monitor.load_config(settings)
    db = FindingStore(store.path, retention=config.retention)
    try:
        db.add_actions(jobs)
        known = db.counters(j.unit for j in jobs)
        new = sorted({j.unit for j in jobs if j.verb != "stop" and j.unit not in known})
        if new:  # not loaded yet (written by this sync): inactive, as systemd will see it
            lives = systemd.read_units(new)
            looks = [
                Observation.from_live(u, now - 0.001)
                if u.load_state == "loaded"
                else Observation(u.name, now - 0.001, "inactive", "dead", "", 0, "")
                for u in lives.values()
            ]
            monitor.Recorder(db, config).record(looks)
    finally:
        db.close()


@contextlib.contextmanager
def _recording(settings: Settings, store: Store) -> Iterator[Callable[[dict[str, LiveUnit]], None]]:
    """A health-gate callback that folds each read into the monitor's counters."""
    from reconciler import monitor
    from reconciler.core.counters import Observation
    from reconciler.store.finding_store import FindingStore

    config = monitor.load_config(settings)
    db = FindingStore(store.path, retention=config.retention)
    recorder = monitor.Recorder(db, config)

    def on_read(live: dict[str, LiveUnit]) -> None:
        now = time.time()
        recorder.record([Observation.from_live(u, now) for u in live.values()])

    try:
        yield on_read
    finally:
        db.close()


def monitor_pass(settings: Settings, systemd: Systemd | None, store: Store | None) -> object:
    """The monitoring pass a sync ends with; its failure is logged, never fails the sync."""
    from reconciler import monitor
    from reconciler.errors import ReconcilerError

    try:
        return monitor.run_pass(settings, systemd=systemd, store=store)
    except (ReconcilerError, OSError) as exc:
        log.warning("monitoring pass failed: %s", exc)
        return None


# ---- one whole sync --------------------------------------------------------------------


def run(
    settings: Settings,
    *,
    dry_run: bool = False,
    force: bool = False,
    trigger: str = "manual",
    revision: str | None = None,
) -> Outcome:
    """One reconcile under the sync lock. ``revision``: apply that cached commit (rollback)."""
    from reconciler.reconcile import lock

    if dry_run:
        return _run_locked(settings, dry_run=True, force=force, trigger=trigger, revision=revision)
    with lock.hold(settings.run_dir / "sync.lock", timeout=settings.lock_timeout_sec):
        return _run_locked(settings, dry_run=False, force=force, trigger=trigger, revision=revision)


def _run_locked(
    settings: Settings, *, dry_run: bool, force: bool, trigger: str, revision: str | None
) -> Outcome:
    started_wall, started = time.time(), time.monotonic()
    store = open_store(settings)
    suspended = store.suspended()
    if suspended and not force and not dry_run and revision is None:
        msg = f"automatic syncs are suspended ({suspended.reason}); nothing done"
        journal.event("sync.suspended", msg, priority=5)
        return Outcome("suspended", message=msg)
    outcome = Outcome("applied")
    systemd: Systemd | None = None
    try:  # a failed fetch or render is a failed sync too: recorded and logged
        snapshot = fetch_snapshot(settings, revision)
        outcome.revision = snapshot.revision
        held_from: str | None = None
        if revision is None and not force and store.is_bad(snapshot.revision):
            good = store.applied_revision()
            if good is None or good == snapshot.revision:
                msg = f"revision {snapshot.revision[:12]} is marked bad; waiting for a new commit"
                journal.event("sync.noop", msg, priority=4, revision=snapshot.revision)
                return Outcome("held", revision=snapshot.revision, message=msg)
            held_from, snapshot = snapshot.revision, fetch_snapshot(settings, good)
            outcome.revision = snapshot.revision
        desired = render_cached(snapshot, settings.host_name, store)
        systemd = connect(settings)
        plan = make_plan(desired, systemd, store, settings)
        outcome.plan = plan
        from reconciler.core import plan as plan_mod

        outcome.actions = plan_mod.describe(plan)
        if dry_run:
            outcome.result = "dry-run"
            return outcome
        if held_from:
            outcome.message = (
                f"revision {held_from[:12]} is marked bad; holding at "
                f"{snapshot.revision[:12]} until a new commit"
            )
        if plan.empty:
            outcome.result = "noop"
            journal.event(
                "sync.noop",
                outcome.message or f"host matches revision {snapshot.revision[:12]}",
                revision=snapshot.revision,
            )
            _record(store, outcome, started_wall, started, trigger)
            return outcome
        check_units(desired, plan)
        failed = execute(plan, desired, systemd, store, settings, snapshot.revision)
        if failed:
            _roll_back(settings, store, systemd, outcome, failed, started_wall, started, trigger)
        else:
            journal.event(
                "sync.applied",
                f"applied revision {snapshot.revision[:12]}: {len(plan.actions)} actions",
                revision=snapshot.revision,
                actions=len(plan.actions),
            )
            _record(store, outcome, started_wall, started, trigger)
        return outcome
    except Exception as exc:
        if not dry_run and not outcome.recorded:
            outcome.result, outcome.message = "failed", str(exc)
            journal.event(
                "sync.failed", f"sync failed: {exc}", priority=3, revision=outcome.revision
            )
            try:
                _record(store, outcome, started_wall, started, trigger)
            except ReconcilerError as record_exc:  # the error the operator needs is exc
                log.warning("cannot record the failed sync: %s", record_exc)
        raise
    finally:
        if systemd is not None:
            outcome.dbus_calls = dict(systemd.calls)
            systemd.close()


def _roll_back(
    settings: Settings,
    store: Store,
    systemd: Systemd,
    outcome: Outcome,
    failed: dict[str, str],
    started_wall: float,
    started: float,
    trigger: str,
) -> None:
    bad = outcome.revision or ""
    reasons = "; ".join(f"{u}: {r}" for u, r in sorted(failed.items()))
    store.mark_bad(bad, reasons)
    outcome.failed_units = failed
    outcome.message = f"health gate failed: {reasons}"  # the record's error if we stop here
    journal.event(
        "health.failed",
        f"revision {bad[:12]} failed its health gate: {reasons}",
        priority=3,
        revision=bad,
    )
    good = store.last_good()
    if good is None or good == bad:
        outcome.result = "failed"
        _record(store, outcome, started_wall, started, trigger)
        raise ApplyError(
            f"revision {bad[:12]} failed its health gate: {reasons}",
            "no earlier good revision to roll back to; fix and push a new commit",
        )
    monitor_pass(settings, systemd, store)  # findings and bundles of the bad revision
    try:
        snapshot = fetch_snapshot(settings, good)
        desired = render_cached(snapshot, settings.host_name, store)
        plan = make_plan(desired, systemd, store, settings)
        execute(plan, desired, systemd, store, settings, good)
    except Exception as exc:
        outcome.result = "failed"
        _record(store, outcome, started_wall, started, trigger)
        raise ApplyError(
            f"revision {bad[:12]} failed its health gate ({reasons}) and the "
            f"rollback to {good[:12]} failed: {exc}"
        ) from exc
    outcome.result, outcome.rolled_back_to = "rolled-back", good
    outcome.message = f"rolled back to {good[:12]}"
    journal.event(
        "rollback",
        f"revision {bad[:12]} failed its health gate ({reasons}); rolled back to {good[:12]}",
        priority=3,
        revision=good,
        bad_revision=bad,
    )
    _record(store, outcome, started_wall, started, trigger)
    store.record_sync(good, time.time(), 0.0, "applied", ["rollback"], None, "rollback")
    raise ApplyError(
        f"revision {bad[:12]} failed its health gate: {reasons}; rolled back to {good[:12]}",
        "fix the service and push a new commit; the bad revision is not retried",
    )


def _record(
    store: Store, outcome: Outcome, started_wall: float, started: float, trigger: str
) -> None:
    error = outcome.message if outcome.result == "failed" else None
    outcome.recorded = True
    store.record_sync(
        outcome.revision or "",
        started_wall,
        time.monotonic() - started,
        outcome.result,
        outcome.actions,
        error,
        trigger,
    )


__all__ = ["Outcome", "SourceError", "run"]
