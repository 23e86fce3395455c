"""Findings an operator can trust (pure rules): one incident one finding, the reconciler's
own actions are not incidents (tables: timelines in, findings out)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from reconciler.core.counters import (
    Counters,
    Event,
    Exit,
    Finding,
    Observation,
    apply_exits,
    never_ran,
    unknown_exits,
    update_counters,
)
from reconciler.core.patterns import Thresholds, detect, hold

T0 = 1_709_510_400.0
UNIT = "web.service"
TH = Thresholds(restart_threshold=3, restart_window_sec=300, hold_down_sec=600)


def crash(at: float) -> Event:
    return Event(UNIT, at, "crash", 1)


def look(at: float, state: str = "active", sub: str = "running", inv: str = "a") -> Observation:
    return Observation(UNIT, at, state, sub, "success", 0, inv)


LOOP = Finding("crash_loop", UNIT, "critical", "loop", {}, T0)
FLAP = Finding("flapping", UNIT, "warning", "flap", {}, T0)
DRIFT = Finding("drift", UNIT, "warning", "drift", {}, T0)


@pytest.mark.parametrize(
    ("case", "finding", "last_seen", "now", "unhealthy_at", "healthy", "held"),
    [
        ("quiet for less than the hold-down", LOOP, T0 + 100, T0 + 300, None, True, True),
        ("quiet for the hold-down", LOOP, T0 + 100, T0 + 700, None, True, False),
        ("flapping is held the same way", FLAP, T0 + 100, T0 + 300, None, True, True),
        ("drift resolves at once", DRIFT, T0 + 100, T0 + 101, None, True, False),
        # issue 12: a sync's or rollback's restart is no proof of health
        (
            "replaced by a sync, running but not yet long",
            LOOP,
            T0 + 100,
            T0 + 130,
            None,
            True,
            True,
        ),
        ("replaced, but failing again", LOOP, T0 + 100, T0 + 130, T0 + 125, False, True),
        ("failing, long after it was last seen", LOOP, T0 + 100, T0 + 900, T0 + 890, False, True),
        ("crashed after it was last seen", LOOP, T0 + 100, T0 + 750, T0 + 300, True, True),
        (
            "healthy for the hold-down since its last crash",
            LOOP,
            T0 + 100,
            T0 + 901,
            T0 + 300,
            True,
            False,
        ),
    ],
)
def test_hold(
    case: str,
    finding: Finding,
    last_seen: float,
    now: float,
    unhealthy_at: float | None,
    healthy: bool,
    held: bool,
) -> None:
    assert hold(finding, last_seen, now, TH, unhealthy_at=unhealthy_at, healthy=healthy) is held, (
        case
    )


def test_crashes_before_the_reconcilers_action_are_not_a_crash_loop() -> None:
    crashes = [crash(T0 + i) for i in (10, 20, 30, 40)]
    assert [f.kind for f in detect(UNIT, crashes, [], T0 + 60, TH)] == ["crash_loop"]
    assert detect(UNIT, crashes, [], T0 + 60, TH, since=T0 + 45) == []
    after = [*crashes, crash(T0 + 50), crash(T0 + 55), crash(T0 + 58)]  # the new run crashes
    loop = detect(UNIT, after, [], T0 + 60, TH, since=T0 + 45)
    assert [(f.kind, f.evidence["count"]) for f in loop] == [("crash_loop", 3)]


def test_restarts_by_the_reconciler_are_not_flapping() -> None:
    looks = [look(T0)]
    for i in range(6):  # up and down six times, each a sync's restart seen by the watch
        looks.append(look(T0 + 10 * i + 5, "inactive", "dead", str(i)))
        looks.append(look(T0 + 10 * i + 6, "active", "running", str(i)))
    assert [f.kind for f in detect(UNIT, [], looks, T0 + 70, TH)] == ["flapping"]
    assert detect(UNIT, [], looks, T0 + 70, TH, since=T0 + 54.5) == []


def test_a_unit_the_sync_starts_first_is_counted_from_its_first_start() -> None:
    seeded = never_ran(UNIT, T0)
    crashed_52 = Observation(UNIT, T0 + 60, "active", "running", "success", 52, "b")
    counters, events = update_counters(seeded, crashed_52)
    assert (counters.starts, counters.crashes) == (53, 52)
    assert counters.acted_at == T0
    assert len(events) == 53 + 52
    baseline, nothing = update_counters(None, crashed_52)  # never seen, never started by us
    assert nothing == [] and baseline.crashes == 0
    assert isinstance(baseline, Counters)


def test_unseen_crashes_take_their_exits_from_systemds_log() -> None:
    prev = Counters(UNIT, last_state="active", last_sub_state="running", last_invocation_id="a")
    prev = replace(prev, last_seen_at=T0, last_exit_code=None, last_signal="SIGSEGV")
    # two unseen SIGKILLs: the unit runs again, its ExecMain* describe the new run
    again = Observation(UNIT, T0 + 10, "active", "running", "success", 2, "c")
    counters, events = update_counters(prev, again)
    assert [e.kind for e in events] == ["crash", "start", "crash", "start"]
    assert (counters.last_exit_code, counters.last_signal) == (None, None)  # not the SIGSEGV
    assert unknown_exits(events) == 2
    exits = [Exit(T0 + 3, None, "SIGKILL", "signal"), Exit(T0 + 7, None, "SIGABRT", "watchdog")]
    counters, events = apply_exits(counters, events, exits)
    assert [e.signal for e in events if e.kind == "crash"] == ["SIGKILL", "SIGABRT"]
    assert (counters.last_signal, counters.last_result) == ("SIGABRT", "watchdog")
    assert unknown_exits(events) == 0


def test_a_seen_crash_keeps_its_own_exit_and_the_log_fills_the_earlier_ones() -> None:
    prev = Counters(UNIT, last_state="active", last_sub_state="running", last_invocation_id="a")
    prev = replace(prev, last_seen_at=T0)
    seen = Observation(UNIT, T0 + 10, "activating", "auto-restart", "exit-code", 1, "b", 1, 3)
    counters, events = update_counters(prev, seen)
    crashes = [e for e in events if e.kind == "crash"]
    assert [e.exit_code for e in crashes] == [None, 3]  # the first run's end was not seen
    exits = [Exit(T0 + 4, 2, None, "exit-code"), Exit(T0 + 9, 3, None, "exit-code")]
    counters, events = apply_exits(counters, events, exits)
    assert [e.exit_code for e in events if e.kind == "crash"] == [2, 3]
    assert (counters.last_exit_code, counters.last_result) == (3, "exit-code")
    assert apply_exits(counters, events, []) == (counters, events)  # no log: nothing guessed


def test_a_restart_job_under_way_is_not_a_look() -> None:
    """A look at ``deactivating`` mid-restart would come after the sync's recorded job and
    make the restart's stop and start look like an operator's."""
    from reconciler.core.watch_state import UnitView, settled
    from reconciler.model import LiveUnit

    live = LiveUnit(UNIT, "loaded", "deactivating", "stop-sigterm")
    assert not settled(UnitView(live, job=True))
    assert settled(UnitView(live, job=False))  # a process ending by itself: a real state
