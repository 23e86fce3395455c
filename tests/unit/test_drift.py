"""Drift rules and the start-limit inference, table-driven (plain data in, items out)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from reconciler.core import drift
from reconciler.core.drift import TimerInfo, UnitState
from reconciler.core.patterns import Thresholds
from reconciler.model import DesiredUnit, LiveUnit

WANT = DesiredUnit("web.service", "[Service]\nExecStart=/bin/sleep infinity\n", "web")
GOOD = LiveUnit(
    "web.service", "loaded", "active", "running", "enabled", "success", service_type="simple"
)


def state(live: LiveUnit = GOOD, file: str | None = WANT.content, **kw: object) -> UnitState:
    return UnitState(live=live, file=file, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("case", "desired", "unit", "expect"),
    [
        ("matches", WANT, state(), []),
        ("missing file", WANT, state(file=None), [("file", "missing")]),
        ("edited", WANT, state(file="[Service]\n"), [("file", "edited by hand")]),
        (
            "masked wins",
            WANT,
            state(replace(GOOD, load_state="masked", unit_file_state="masked")),
            [("masked", "masked by hand")],
        ),
        (
            "disabled",
            WANT,
            state(replace(GOOD, unit_file_state="disabled")),
            [("enablement", "disabled")],
        ),
        ("static is fine", WANT, state(replace(GOOD, unit_file_state="static")), []),
        (
            "enabled, want disabled",
            replace(WANT, enable=False),
            state(),
            [("enablement", "enabled")],
        ),
        (
            "stopped",
            WANT,
            state(replace(GOOD, active_state="inactive", sub_state="dead")),
            [("active", "inactive")],
        ),
        (
            "failed",
            WANT,
            state(replace(GOOD, active_state="failed", result="exit-code")),
            [("active", "failed (exit-code)")],
        ),
        (
            "oneshot done",
            WANT,
            state(replace(GOOD, active_state="inactive", service_type="oneshot")),
            [],
        ),
        (
            "run by a timer, inactive",
            replace(WANT, start=False),
            state(replace(GOOD, active_state="inactive")),
            [],
        ),
        (
            "reload",
            WANT,
            state(replace(GOOD, need_daemon_reload=True)),
            [("reload", "changed on disk since the last daemon-reload")],
        ),
        (
            "bad setting",
            WANT,
            state(replace(GOOD, load_state="bad-setting", active_state="inactive")),
            [("load", "bad-setting"), ("active", "inactive")],
        ),
    ],
)
def test_check(
    case: str, desired: DesiredUnit, unit: UnitState, expect: list[tuple[str, str]]
) -> None:
    assert [(i.aspect, i.have) for i in drift.check(desired, unit)] == expect, case


def test_timer_without_next_elapse() -> None:
    want = DesiredUnit("t.timer", "[Timer]\n", "t")
    live = LiveUnit("t.timer", "loaded", "active", "waiting", "static")
    stuck = TimerInfo(last_trigger_at=100.0, monotonic=(("OnUnitActiveUSec", 60.0),))
    assert [i.aspect for i in drift.check(want, state(live, "[Timer]\n", timer=stuck))] == ["timer"]
    once = TimerInfo(monotonic=(("OnActiveUSec", 60.0),))  # a one-shot timer: nothing next is fine
    assert drift.check(want, state(live, "[Timer]\n", timer=once)) == []
    running = replace(stuck, job_running=True)  # a long job: the next elapse comes at its end
    assert drift.check(want, state(live, "[Timer]\n", timer=running)) == []
    th = Thresholds(missed_run_grace_sec=1)
    assert drift.missed_run("t.timer", stuck, 1000.0, th, {}) is not None
    assert drift.missed_run("t.timer", running, 1000.0, th, {}) is None


def test_finding_folds_items() -> None:
    items = drift.check(
        WANT, state(replace(GOOD, active_state="failed", result="signal"), file=None)
    )
    f = drift.drift_finding("web.service", items, 50.0)
    assert f is not None and f.kind == "drift" and f.severity == "critical"
    assert f.evidence == {"file": "missing", "active": "failed (signal)"}
    assert drift.drift_finding("web.service", [], 50.0) is None


@pytest.mark.parametrize(
    ("policy", "result", "n_restarts", "expect"),
    [
        ("always", "exit-code", 3, "start-limit-hit"),
        ("on-failure", "signal", 1, "start-limit-hit"),
        ("on-abnormal", "exit-code", 2, "exit-code"),  # would not have restarted anyway
        ("no", "exit-code", 0, "exit-code"),
        ("always", "exit-code", 0, "exit-code"),  # failed on its first run: no restart yet
        ("always", "start-limit-hit", 3, "start-limit-hit"),
    ],
)
def test_effective_result(policy: str, result: str, n_restarts: int, expect: str) -> None:
    live = replace(
        GOOD, active_state="failed", sub_state="failed", result=result, n_restarts=n_restarts
    )
    assert drift.effective_result(state(live, restart_policy=policy)) == expect


def test_missed_run_uses_the_schedule() -> None:
    th = Thresholds(missed_run_grace_sec=10)
    timer = TimerInfo(last_trigger_at=1000.0, calendar=("*-*-* *:00:00",), accuracy_sec=60.0)
    assert drift.schedule_interval(timer, {"*-*-* *:00:00": 3600.0}) == 3660.0
    assert (
        drift.missed_run("t.timer", timer, 1000.0 + 3660 + 5, th, {"*-*-* *:00:00": 3600.0}) is None
    )
    late = drift.missed_run("t.timer", timer, 1000.0 + 3660 + 11, th, {"*-*-* *:00:00": 3600.0})
    assert late is not None and late.kind == "missed_run"
    assert drift.schedule_interval(TimerInfo(), {}) is None
    states = {"t.timer": state(GOOD, timer=timer)}
    assert drift.specs_needing_interval(states) == ["*-*-* *:00:00"]


@pytest.mark.parametrize(
    ("ours", "on_disk", "have"),
    [
        ({"50-reconciler-a.conf": "x"}, {"50-reconciler-a.conf": "x"}, []),
        ({"50-reconciler-a.conf": "x"}, {}, ["50-reconciler-a.conf missing"]),
        ({"50-reconciler-a.conf": "x"}, {"50-reconciler-a.conf": "y"},
         ["50-reconciler-a.conf edited by hand"]),
        ({}, {"10-local.conf": "z"}, ["10-local.conf foreign"]),
    ],
)  # fmt: skip
def test_dropin_drift(ours: dict[str, str], on_disk: dict[str, str], have: list[str]) -> None:
    items = drift.dropin_items("web.service", ours, on_disk)
    assert [(i.aspect, i.have) for i in items] == [("dropin", h) for h in have]


SYNC_FAILED = LiveUnit("gitops-sync.service", "loaded", "failed", "failed", "static", "exit-code")


@pytest.mark.parametrize(
    ("case", "live", "sync", "failed_at", "synced_at", "kind"),
    [
        ("the sync's failed run", SYNC_FAILED, True, 100.0, 50.0, "failed_run"),
        ("a later good sync resolves it", SYNC_FAILED, True, 100.0, 150.0, None),
        ("failure time unknown: any good sync", SYNC_FAILED, True, None, 50.0, None),
        ("never a good sync", SYNC_FAILED, True, 100.0, None, "failed_run"),
        ("another own unit waits for its run", SYNC_FAILED, False, 100.0, 150.0, "failed_run"),
        ("not failed", replace(SYNC_FAILED, active_state="inactive"), True, None, None, None),
    ],
)
def test_failed_run_of_an_own_unit(
    case: str,
    live: LiveUnit,
    sync: bool,
    failed_at: float | None,
    synced_at: float | None,
    kind: str | None,
) -> None:
    found = drift.failed_run(
        live.name, state(live), failed_at, 200.0, sync=sync, synced_at=synced_at
    )
    assert (found.kind if found else None) == kind, case
    if found:
        assert found.severity == "warning" and "drifted" not in found.summary, case
