"""The sync, as its steps (talks to git, systemd and the store through the step modules).

``run`` reads as the list: fetch → render → observe → plan → validate → apply → verify →
record. Each step is a module of this package (``fetch``, ``render``, ``observe``,
``plan``, ``validate``, ``apply``, ``verify``; ``rollback`` when the gate fails; the sync
lock, ``host.lock``, around it all) and returns a value or raises a ReconcilerError;
``run`` records the outcome in one place, whatever happened. Before the apply, the sync
notes the revision and the units it must gate (``interrupted``): a sync killed before it
is recorded is recorded by the next, which runs its gate.

May import: ``core``, ``systemd``, ``store``, ``host``, ``config``, ``runtime``, ``model``,
``errors``. Never ``monitor``: the monitoring the sync needs (counting the health gate's
reads, a pass before a rollback) comes in as ``hooks.Monitoring``, filled by the CLI.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from reconciler.config import Settings
from reconciler.core.plan import describe
from reconciler.core.unitkind import is_quadlet_path
from reconciler.core.words import count
from reconciler.errors import (
    ApplyError,
    InventoryError,
    LockedError,
    ReconcilerError,
    RenderError,
    SourceError,
    SystemdError,
)
from reconciler.host import journal, lock
from reconciler.reconcile import fetch, interrupted, poll, validate, verify
from reconciler.reconcile.apply import ApplyResult, apply_plan
from reconciler.reconcile.hooks import Monitoring, NoMonitoring
from reconciler.reconcile.host_files import observe_files, save_manifest
from reconciler.reconcile.observe import observe
from reconciler.reconcile.outcome import Outcome, Reason, Result, Unhealthy
from reconciler.reconcile.plan import make_plan
from reconciler.reconcile.render import is_cached, render_cached, rendered_files
from reconciler.reconcile.rollback import roll_back
from reconciler.runtime import connect, open_store
from reconciler.store.ledger import FILE_NAME as LEDGER_FILE
from reconciler.store.ledger import Ledger
from reconciler.store.sync_store import DESIRED_KEY, FLEET_KEY, GOOD_RESULTS, encode_desired

if TYPE_CHECKING:
    from reconciler.model import DesiredUnit, Snapshot
    from reconciler.store.sync_store import Store
    from reconciler.systemd.client import Systemd

log = logging.getLogger("reconciler")


def run(
    settings: Settings,
    *,
    dry_run: bool = False,
    force: bool = False,
    trigger: str = "manual",
    revision: str | None = None,
    monitoring: Monitoring | None = None,
) -> Outcome:
    """One reconcile under the sync lock. ``revision``: apply that cached commit (rollback).

    ``monitoring``: the monitor's hooks (the CLI passes ``monitor.SyncMonitoring``);
    without them the health gate's reads are not counted and no pass precedes a rollback.
    """
    sync = _Sync(settings, trigger, force=force, dry_run=dry_run)
    hooks = monitoring if monitoring is not None else NoMonitoring()
    if dry_run:
        return sync.run(revision, hooks)
    with lock.hold(settings.run_dir / "sync.lock", timeout=settings.lock_timeout_sec):
        return sync.run(revision, hooks)


# A sync whose connection to systemd is lost (daemon-reexec, a dbus-daemon restart) connects
# again, waiting up to RECONNECT_SEC, and plans anew; at most RECONNECT_ATTEMPTS in all.
RECONNECT_ATTEMPTS = 3
RECONNECT_SEC = 30.0
RECORDED = frozenset({Result.APPLIED, Result.NOOP, Result.FAILED, Result.ROLLED_BACK})


@dataclass
class _Sync:
    settings: Settings
    trigger: str
    force: bool
    dry_run: bool
    systemd: Systemd | None = None  # open from the observe step on; closed by run()
    calls: Counter[str] = field(default_factory=Counter)  # D-Bus calls of every connection
    id: str = field(default_factory=interrupted.new_id)  # whose note (interrupted.Note) is whose
    started_at: float = 0.0  # unix time

    def run(self, revision: str | None, monitoring: Monitoring) -> Outcome:
        started_wall, started = time.time(), time.monotonic()
        self.started_at = started_wall
        store = open_store(self.settings)
        suspended = store.suspended()
        if suspended and not self.force and not self.dry_run and revision is None:
            msg = (
                f"automatic syncs are suspended ({suspended.reason}); nothing done "
                "(sync --force or reconciler resume)"
            )
            journal.event("sync.suspended", msg, priority=5)
            return Outcome(Result.SUSPENDED, message=msg)
        if not self.dry_run:  # a start with no end in the journal is a killed sync
            journal.event(
                "sync.started", f"sync started ({self.trigger})", trigger=self.trigger, echo=False
            )
        outcome = Outcome(Result.APPLIED)
        error: Exception | None = None
        try:
            self.steps(outcome, store, revision, monitoring)
        except Exception as exc:
            error = exc
            if not self.dry_run:  # every sync.started gets its end, a rolled-back one too
                if not outcome.settled:  # a failed fetch is a failed sync
                    outcome.result, outcome.message = Result.FAILED, str(exc)
                journal.event(  # echo=False: the CLI prints the error as its one line
                    "sync.failed",
                    f"sync failed: {exc}",
                    priority=3,
                    revision=outcome.revision,
                    echo=False,
                )
        finally:
            self.disconnect()
            if self.calls:
                outcome.dbus_calls = dict(self.calls)
        if not self.dry_run and outcome.result in RECORDED:
            try:
                track_fleet(store, outcome, error)
                record(store, outcome, started_wall, started, self.trigger)
                interrupted.clear(store, self.settings.state_dir, self.id)  # recorded: done
                if outcome.result is not Result.FAILED:  # a copy that outlives the database
                    Ledger.load(self.settings.state_dir / LEDGER_FILE).record(store)
            except ReconcilerError as record_exc:
                if error is None:
                    raise
                log.warning("cannot record the failed sync: %s", record_exc)  # error matters
        if not self.dry_run and outcome.result in (Result.APPLIED, Result.ROLLED_BACK):
            keep_revisions(self.settings, store)
        if error is not None:
            raise error
        return outcome

    def steps(
        self, outcome: Outcome, store: Store, revision: str | None, monitoring: Monitoring
    ) -> None:
        """fetch → render → observe → plan → validate → apply → verify, filling ``outcome``."""
        rendered = partial(is_cached, settings=self.settings, store=store)
        snapshot = self.fetch(outcome, store, revision, rendered)
        if snapshot is None:
            return  # held: backing off, or the host's wave ref does not exist yet
        settings = self.settings  # in a rollout, its ref is the host's wave ref
        outcome.revision = snapshot.revision
        describe_source(settings, store, snapshot, outcome)
        if revision is None:
            if behind_its_new_wave(settings, store, snapshot, outcome):
                return
            check_forward(settings, store, snapshot, outcome)
        held_from: str | None = None
        if revision is None and not self.force and store.is_bad(snapshot.revision):
            good = store.applied_revision()
            if good is None or good == snapshot.revision:
                msg = f"revision {snapshot.revision[:12]} is marked bad; waiting for a new commit"
                journal.event("sync.noop", msg, priority=4, revision=snapshot.revision)
                outcome.result, outcome.message = Result.HELD, msg
                return
            held_from, snapshot = snapshot.revision, fetch.snapshot(settings, good, rendered)
            outcome.revision = snapshot.revision
            describe_source(settings, store, snapshot, outcome)
        desired = render_cached(snapshot, settings, store)
        for attempt in range(1, RECONNECT_ATTEMPTS + 1):
            try:
                systemd = self.connect(retry_sec=0.0 if attempt == 1 else RECONNECT_SEC)
                self.converge(systemd, desired, snapshot, held_from, outcome, store, monitoring)
                return
            except SystemdError as exc:
                if not exc.disconnected or attempt == RECONNECT_ATTEMPTS or self.dry_run:
                    raise
                journal.event(
                    "sync.reconnect",
                    f"{exc.message}; connecting again and planning anew "
                    f"(attempt {attempt + 1} of {RECONNECT_ATTEMPTS})",
                    priority=4,
                    revision=snapshot.revision,
                )
                self.disconnect()

    def fetch(
        self,
        outcome: Outcome,
        store: Store,
        revision: str | None,
        rendered: Callable[[str], bool],
    ) -> Snapshot | None:
        """The fetch step: one poll of the git server (``rollout``: of the wave refs), a
        fetch when the ref moved; None when the sync holds (``outcome`` says why)."""
        if revision is not None:
            return fetch.snapshot(self.settings, revision, rendered)
        snapshot, self.settings = poll.poll(
            self.settings,
            store,
            outcome,
            rendered,
            dry_run=self.dry_run,
            force=self.force,
            trigger=self.trigger,
        )
        return snapshot

    def connect(self, retry_sec: float) -> Systemd:
        self.systemd = connect(self.settings, retry_sec=retry_sec)
        return self.systemd

    def disconnect(self) -> None:
        """Close the connection, keeping its call counts for the outcome."""
        if self.systemd is not None:
            self.calls.update(self.systemd.calls)
            self.systemd.close()
            self.systemd = None

    def converge(
        self,
        systemd: Systemd,
        desired: list[DesiredUnit],
        snapshot: Snapshot,
        held_from: str | None,
        outcome: Outcome,
        store: Store,
        monitoring: Monitoring,
    ) -> None:
        """observe → plan → validate → apply → verify. A lost connection to systemd makes
        ``steps`` run this again on a new one: the plan is made anew from what is live, and
        the units a killed apply left to (re)start are in the store, so it converges."""
        settings = self.settings
        files = rendered_files(store)
        observed = observe(desired, systemd, store, settings)
        facts = observe_files(files, systemd, settings)
        plan = make_plan(desired, observed, settings, files, facts)
        if any(is_quadlet_path(getattr(a, "path", "")) for a in plan.actions):
            from reconciler.reconcile import quadlet  # Podman's own dry run, before any write

            quadlet.check(files, settings.host_root)
        outcome.plan, outcome.actions = plan, describe(plan)
        if held_from:  # plan says it as sync does
            outcome.message = (
                f"revision {held_from[:12]} is marked bad; holding at "
                f"{snapshot.revision[:12]} until a new commit"
            )
        if self.dry_run:
            from reconciler.core.unitkind import cat

            if not plan.empty:  # plan refuses what the sync's validate step refuses
                validate.check_units(desired, plan, settings)

            views = validate.merged_views(plan, desired, settings)
            outcome.merged = {unit: cat(*view) for unit, view in views.items()}
            outcome.result = Result.DRY_RUN
            return
        # a sync killed before its gate finished: recorded now; its gate, if this revision's
        carried = interrupted.take_over(store, settings.state_dir, self.id, snapshot.revision)
        if plan.empty:
            if store.owned() != plan.owned_after:  # e.g. a pruned name now a vendor unit's
                store.set_owned(plan.owned_after)
            if plan.files_during:  # e.g. an adopted file that already had the content
                save_manifest(settings, plan.files_after)
            record_matching(store, desired)
            if not carried:
                outcome.result = Result.NOOP
                journal.event(
                    "sync.noop",
                    outcome.message or f"host matches revision {snapshot.revision[:12]}",
                    revision=snapshot.revision,
                )
                return
        else:
            validate.check_units(desired, plan, settings)
        checks = interrupted.merge(plan.health_checks, carried)
        note = interrupted.Note(
            self.id,
            snapshot.revision,
            checks,
            self.started_at,
            self.trigger,
            tuple(outcome.actions),
        )
        interrupted.note(store, settings.state_dir, note)  # not good until the gate passed
        applied = ApplyResult()
        if not plan.empty:
            applied = apply_plan(
                plan, desired, systemd, store, settings, snapshot.revision, monitoring
            )
        failed = verify.gate(plan, applied, systemd, store, monitoring, carried)
        if failed:
            roll_back(failed, outcome, settings, store, systemd, monitoring)  # always raises
        if plan.empty:
            outcome.message = (
                f"revision {snapshot.revision[:12]}: the health gate an interrupted sync left "
                f"passed ({len(carried)} units)"
            )
            journal.event("sync.applied", outcome.message, revision=snapshot.revision, actions=0)
            return
        commit = snapshot.commit
        journal.event(
            "sync.applied",
            f"applied revision {snapshot.revision[:12]}: {count(len(plan.actions), 'action')}"
            + (f" ({commit.subject!r} by {commit.author})" if commit else "")
            + (f"; {count(len(outcome.commits), 'new commit')}" if outcome.commits else ""),
            revision=snapshot.revision,
            actions=len(plan.actions),
            author=commit.author if commit else None,
            subject=commit.subject if commit else None,
            ref=outcome.resolved or None,
            commits=" ".join(c.revision for c in outcome.commits) or None,
        )
        for text in plan.notes:  # what the apply left undone or cannot tell (the CLI prints it)
            journal.event("sync.note", text, priority=4, revision=snapshot.revision, echo=False)


def record_matching(store: Store, desired: list[DesiredUnit]) -> None:
    """The host matches ``desired``: record it as the applied units (status and the monitor
    read them) if the store says otherwise: a database lost while the host held or matched
    its revision would leave the units unmonitored until a new commit is applied."""
    units = encode_desired(desired)
    if store.kv_get(DESIRED_KEY) != units:
        store.kv_set(DESIRED_KEY, units)


KEPT_REVISIONS = 20  # the newest applied revisions kept in the git cache for a rollback


def keep_revisions(settings: Settings, store: Store) -> None:
    """Pin the revisions a rollback may go back to in the git cache, and bound the cache."""
    applied = [r.revision for r in store.history(200) if r.result in GOOD_RESULTS]
    keep = list(dict.fromkeys([*applied, store.last_good() or ""]))[:KEPT_REVISIONS]
    fetch.keep(
        settings.state_dir / "repo",
        keep,
        max_bytes=settings.cache_max_mb << 20,
        url=settings.repo,
        timeout=settings.fetch_timeout_sec,
    )


def describe_source(settings: Settings, store: Store, snapshot: Snapshot, outcome: Outcome) -> None:
    """The commit's author and subject, and the commits since the applied revision (if new)."""
    outcome.commit, outcome.resolved = snapshot.commit, snapshot.resolved
    applied = store.applied_revision()
    if applied and applied != snapshot.revision:
        outcome.commits = fetch.commits_between(
            settings.state_dir / "repo", applied, snapshot.revision
        )


def behind_its_new_wave(
    settings: Settings, store: Store, snapshot: Snapshot, outcome: Outcome
) -> bool:
    """A host moved to another wave (by the rollout.toml it applied) whose ref is still
    behind that revision holds until the wave reaches it: not a downgrade to refuse."""
    applied = store.applied_revision()
    fleet = store.kv_json(FLEET_KEY) if settings.rollout else {}
    if not applied or fleet.get("joined_at") != applied or snapshot.revision == applied:
        return False
    if fetch.is_ancestor(settings.state_dir / "repo", snapshot.revision, applied) is not True:
        return False
    msg = (
        f"this host moved to wave '{fleet.get('wave')}' at revision {applied[:12]}, and "
        f"'{settings.ref}' is still behind it ({snapshot.revision[:12]}); holding until the "
        "wave reaches it"
    )
    journal.event("sync.noop", msg, priority=5, revision=applied)
    outcome.result, outcome.message, outcome.revision = Result.HELD, msg, applied
    return True


def check_forward(settings: Settings, store: Store, snapshot: Snapshot, outcome: Outcome) -> None:
    """A ref that moved to a revision not descending from the applied one: always a warning;
    refused in signed mode unless this host allows it (a signed old commit is still signed:
    anyone with push access could otherwise roll the fleet back to a vulnerable revision)."""
    applied, new = store.applied_revision(), snapshot.revision
    if not applied or applied == new:
        return
    if fetch.is_ancestor(settings.state_dir / "repo", applied, new) is not False:
        return  # a fast-forward, or the cache cannot tell (the applied one is not in it)
    what = (
        f"revision {new[:12]} of '{settings.ref}' is not a fast-forward of the applied "
        f"revision {applied[:12]} (the ref was moved back or its history rewritten)"
    )
    mode = "signed mode" if settings.verify_signatures else "rollout"
    refuse = (settings.verify_signatures or settings.rollout) and not settings.allow_downgrade
    journal.event(
        "sync.downgrade",
        what + (f"; refused ({mode})" if refuse else ""),
        priority=4,
        revision=new,
        applied_revision=applied,
    )
    if refuse and not settings.verify_signatures:
        raise SourceError(
            f"cannot apply revision '{new[:12]}' of wave ref '{settings.ref}': not a "
            f"fast-forward of the applied revision '{applied[:12]}' (wave refs only move "
            "forward: was it force-pushed?); the host keeps its revision",
            "undo a bad commit with a revert on the source branch; to accept the move: "
            "reconciler sync --allow-downgrade, or allow_downgrade = true in "
            "/etc/reconciler/config.toml",
        )
    if refuse:
        raise SourceError(
            f"cannot apply revision '{new[:12]}': not a fast-forward of the applied revision "
            f"'{applied[:12]}' (signed mode refuses a downgrade)",
            "if the move is intended: reconciler sync --allow-downgrade, or allow_downgrade = "
            "true in /etc/reconciler/config.toml",
        )
    outcome.message = what


def track_fleet(store: Store, outcome: Outcome, error: Exception | None) -> None:
    """What the fleet's metrics say of this sync: the revision it tried and failed (its
    health gate, a rollback, a refused render or inventory), rollbacks, gate failures."""
    fleet = store.kv_json(FLEET_KEY)
    refused = isinstance(error, InventoryError | RenderError | ApplyError)
    changes: dict[str, object] = {}
    if (
        outcome.revision
        and (refused or outcome.failed_units)
        and not isinstance(error, LockedError)
    ):
        changes["failed_target"] = outcome.revision
    if outcome.result is Result.ROLLED_BACK:
        changes["rollbacks"] = int(fleet.get("rollbacks", 0)) + 1
    if outcome.failed_units:
        changes["health_gate_failures"] = int(fleet.get("health_gate_failures", 0)) + 1
    if changes:
        store.kv_update(FLEET_KEY, **changes)


def record(
    store: Store, outcome: Outcome, started_wall: float, started: float, trigger: str
) -> None:
    """The sync's record step, the one place a sync's history row is written.

    A rollback writes two rows: the failed sync, then the good revision applied again.
    """
    error = outcome.message if outcome.result is Result.FAILED else None
    commit = outcome.commit
    store.record_sync(
        outcome.revision or "",
        started_wall,
        time.monotonic() - started,
        outcome.result.value,
        outcome.actions,
        error,
        trigger,
        summary=f"{commit.subject} ({commit.author})" if commit else "",
    )
    if outcome.result is Result.ROLLED_BACK and outcome.rolled_back_to:
        back = outcome.rollback
        store.record_sync(
            outcome.rolled_back_to,
            back.started_at if back else time.time(),
            back.duration_sec if back else 0.0,
            Result.APPLIED.value,
            back.actions if back else ["rollback"],  # what the rollback did
            None,
            "rollback",
        )


__all__ = ["Monitoring", "Outcome", "Reason", "Result", "SourceError", "Unhealthy", "run"]
