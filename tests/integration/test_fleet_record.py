"""The host's record for the fleet's metrics, in a real SQLite state database (no systemd):
what a sync tried and failed, rollbacks, health-gate failures, when the applied revision
became healthy and stopped being so."""

from __future__ import annotations

from pathlib import Path

from reconciler.config import Settings
from reconciler.core.counters import Finding
from reconciler.errors import ApplyError, SourceError
from reconciler.monitor.publish import fleet_sample
from reconciler.monitor.types import PassResult
from reconciler.reconcile import track_fleet
from reconciler.reconcile.outcome import Outcome, Reason, Result, Unhealthy
from reconciler.store.finding_store import StoredFinding
from reconciler.store.sync_store import FLEET_KEY, Store

GOOD, BAD, NEXT = "a" * 40, "b" * 40, "c" * 40


def passed(at: float, *critical: str) -> PassResult:
    open_ = [StoredFinding(Finding("crash_loop", u, "critical", "loops"), at) for u in critical]
    return PassResult(at, 0.1, GOOD, [], [], open_, [], [])


def test_the_fleet_record_follows_syncs_and_passes(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, host="web-1", rollout=True)
    with Store.open(tmp_path / "state.db") as store:
        assert fleet_sample(settings, store, passed(100.0)) is None  # never polled its wave
        store.record_sync(GOOD, 10.0, 2.5, "applied", [], None, "timer")
        store.kv_update(FLEET_KEY, wave="canary", target=GOOD)
        first = fleet_sample(settings, store, passed(100.0))
        assert first is not None
        assert (first.host, first.wave, first.revision, first.target) == (
            "web-1",
            "canary",
            GOOD,
            GOOD,
        )
        assert (first.healthy_since, first.failed, first.last_success) == (100.0, False, 12.5)
        again = fleet_sample(settings, store, passed(200.0))
        assert again is not None and again.healthy_since == 100.0, "kept while healthy"
        sick = fleet_sample(settings, store, passed(300.0, "web.service"))
        assert sick is not None and sick.healthy_since == 0.0, "a critical finding: unhealthy"
        well = fleet_sample(settings, store, passed(400.0))
        assert well is not None and well.healthy_since == 400.0, "healthy again from now"

        # the target BAD fails its health gate and is rolled back to GOOD
        store.kv_update(FLEET_KEY, target=BAD)
        gate = {"web.service": Unhealthy(Reason.FAILED, "(exit-code)")}
        rolled = Outcome(Result.ROLLED_BACK, revision=BAD, failed_units=gate)
        track_fleet(store, rolled, ApplyError("rolled back"))
        after = fleet_sample(settings, store, passed(500.0))
        assert after is not None
        assert (after.target, after.failed, after.rollbacks, after.health_gate_failures) == (
            BAD,
            True,
            1,
            1,
        )
        # a fetch that failed is no failed target; a newer target is not failed yet
        track_fleet(store, Outcome(Result.FAILED, revision=None), SourceError("down"))
        store.kv_update(FLEET_KEY, target=NEXT)
        moved = fleet_sample(settings, store, passed(600.0))
        assert moved is not None and not moved.failed and moved.rollbacks == 1
    outside = Settings(state_dir=tmp_path, host="web-1")
    with Store.open(tmp_path / "state.db") as store:
        assert fleet_sample(outside, store, passed(700.0)) is None, "rollout = false: no lines"
