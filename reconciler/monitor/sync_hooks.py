"""The monitor's side of a sync (talks to the finding store): ``reconcile.hooks.Monitoring``.

The CLI hands this to ``reconcile.run``; the sync never imports the monitor.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from reconciler.config import Settings
from reconciler.core.counters import Action, Observation
from reconciler.errors import ReconcilerError
from reconciler.model import LiveUnit, Plan, RestartUnit, StartUnit, StopUnit
from reconciler.monitor import Recorder, exit_reader, load_config, run_pass
from reconciler.store.finding_store import FindingStore

if TYPE_CHECKING:
    from reconciler.store.sync_store import Store
    from reconciler.systemd.client import Systemd

log = logging.getLogger("reconciler")


class SyncMonitoring:
    """Counts the health gate's reads and runs the passes a sync asks for."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._jobs_at: float | None = None  # when record_jobs noted the jobs of this apply

    def record_jobs(self, store: Store, plan: Plan, systemd: Systemd) -> None:
        """The start/restart/stop jobs about to run, so ``reconciler events`` says "sync" and
        not "operator" for what they cause. Written before them: a look may follow at once.

        Every unit a job is about to touch gets a look now: a unit the monitor has never
        seen gets its baseline (its first start is then counted, and is the sync's), and one
        it knows has what happened since the last look counted before the job (a
        crash-looping unit's last restarts, just before a rollback stops and removes it).
        """
        verbs = {StartUnit: "start", RestartUnit: "restart", StopUnit: "stop"}
        now = time.time()
        jobs = [
            Action(a.name, now, verbs[type(a)])
            for a in plan.actions
            if isinstance(a, StartUnit | RestartUnit | StopUnit)
        ]
        if not jobs:
            return
        self._jobs_at = now
        config = load_config(self.settings)
        db = FindingStore(store.path, retention=config.retention)
        try:
            db.add_actions(jobs)
            known = db.counters(j.unit for j in jobs)
            lives = systemd.read_units(sorted({j.unit for j in jobs}))
            looks = [
                Observation.from_live(u, now - 0.001)
                if u.load_state == "loaded"
                # not loaded yet (written by this sync): inactive, as systemd will see it
                else Observation(u.name, now - 0.001, "inactive", "dead", "", 0, "")
                for u in lives.values()
                if u.load_state == "loaded" or u.name not in known
            ]
            Recorder(db, config, exit_reader(self.settings)).record(looks)
            # What these units did before is the old incarnation's (patterns look after it).
            db.mark_acted((j.unit for j in jobs), now)
        finally:
            db.close()

    def jobs_done(self, store: Store) -> None:
        if self._jobs_at is None:
            return
        db = FindingStore(store.path, retention=load_config(self.settings).retention)
        try:
            db.finish_actions(self._jobs_at, time.time())
        finally:
            db.close()
        self._jobs_at = None

    @contextlib.contextmanager
    def recording(self, store: Store) -> Iterator[Callable[[dict[str, LiveUnit]], None]]:
        """A health-gate callback that folds each read into the monitor's counters."""
        config = load_config(self.settings)
        db = FindingStore(store.path, retention=config.retention)
        recorder = Recorder(db, config, exit_reader(self.settings))

        def on_read(live: dict[str, LiveUnit]) -> None:
            now = time.time()
            recorder.record([Observation.from_live(u, now) for u in live.values()])

        try:
            yield on_read
        finally:
            db.close()

    def run_pass(
        self, systemd: Systemd | None, store: Store | None, *, quiet: bool = False
    ) -> object:
        """A monitoring pass; its failure is logged, never fails the sync. ``quiet``: after
        a failed sync, whose one error line is all a terminal should show (journald only)."""
        try:
            return run_pass(self.settings, systemd=systemd, store=store)
        except (ReconcilerError, OSError) as exc:
            log.warning("monitoring pass failed: %s", exc, extra={"echo": not quiet})
            return None
