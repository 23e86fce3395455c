"""Counters tables (pure): a unit's successive looks in, start/stop/crash totals out.

Every case is replayed with each look fed twice: the totals must not change (a repeated
pass or a duplicated watch event never double-counts).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import pytest

from reconciler.core.counters import (
    REVIVE_SEC,
    STALE_SEC,
    Action,
    Counters,
    Event,
    Observation,
    attribute,
    signal_name,
    steady_look,
    update_counters,
)
from reconciler.model import LiveUnit

T0 = 1_709_510_400.0  # 2024-03-04 00:00 UTC, a Monday
UNIT = "web.service"


def look(
    at: float,
    inv: str = "a",
    state: str = "active",
    sub: str = "running",
    n: int = 0,
    result: str = "success",
    code: int = 0,
    status: int = 0,
    exit_at: float | None = None,
) -> Observation:
    return Observation(UNIT, T0 + at, state, sub, result, n, inv, code, status, None, exit_at)


def run(at: float, inv: str, n: int = 0) -> Observation:
    return look(at, inv, n=n)


def waiting(at: float, inv: str, n: int, status: int = 1) -> Observation:
    """Ended on its own; the automatic restart is pending (RestartSec=)."""
    return look(at, inv, "activating", "auto-restart", n, "exit-code", 1, status)


def failed(
    at: float, inv: str, n: int = 0, result: str = "exit-code", code: int = 1, status: int = 1
) -> Observation:
    return look(at, inv, "failed", "failed", n, result, code, status)


def dead(at: float, inv: str, n: int = 0) -> Observation:
    return look(at, inv, "inactive", "dead", n, code=1, status=0)


def fold(looks: list[Observation]) -> tuple[Counters | None, list[Event]]:
    counters: Counters | None = None
    events: list[Event] = []
    for obs in looks:
        counters, new = update_counters(counters, obs)
        events += new
    return counters, events


Totals = tuple[int, int, int, int | None, str | None]  # starts, stops, crashes, exit, signal


@dataclass(frozen=True)
class Case:
    name: str
    looks: list[Observation]
    totals: Totals


def _restart_always(count: int) -> list[Observation]:
    """Restart=always, RestartSec=1, exit 1, watched live: a look at every state change."""
    looks = [run(0, "i0")]
    for i in range(count):
        looks += [waiting(i * 1.1 + 0.05, f"i{i}", i), run(i * 1.1 + 1.1, f"i{i + 1}", i + 1)]
    return looks


def _oneshot_live(runs: int) -> list[Observation]:
    looks = [dead(0, "r0")]
    for i in range(1, runs + 1):
        looks += [look(i * 60, f"r{i}", "activating", "start"), dead(i * 60 + 2, f"r{i}")]
    return looks


SIGTERM_STOP = look(5, "a", "inactive", "dead", 0, "success", 2, 15)
CASES = [
    Case("steady unit, many passes", [run(i * 900, "a") for i in range(10)], (0, 0, 0, None, None)),
    Case("NRestarts +4 between passes", [run(0, "a", 0), run(900, "e", 4)], (4, 0, 4, None, None)),
    Case("manual restart resets NRestarts", [run(0, "a", 2), run(60, "b")], (1, 1, 0, None, None)),
    Case("manual restart, counter at 0", [run(0, "a"), run(60, "b")], (1, 1, 0, None, None)),
    Case("reboot between passes", [run(0, "a", 2), run(3600, "z")], (1, 1, 0, None, None)),
    Case("kill -9", [run(0, "a"), failed(5, "a", 0, "signal", 2, 9)], (0, 0, 1, None, "SIGKILL")),
    Case(
        "core dump",
        [run(0, "a"), failed(5, "a", 0, "core-dump", 3, 11)],
        (0, 0, 1, None, "SIGSEGV"),
    ),
    Case("exit status 3", [run(0, "a"), failed(5, "a", 0, "exit-code", 1, 3)], (0, 0, 1, 3, None)),
    # a stop is no crash: last_exit_code/last_signal describe the last crash (issue 12.6)
    Case("systemctl stop", [run(0, "a"), SIGTERM_STOP], (0, 1, 0, None, None)),
    Case("Restart=always RestartSec=1, live", _restart_always(5), (5, 0, 5, 1, None)),
    Case(
        "look between the NRestarts bump and the new invocation",
        [run(0, "a"), waiting(1, "a", 0), waiting(2, "a", 1), run(2.1, "b", 1)],
        (1, 0, 1, 1, None),
    ),
    Case("first look after the bump", [waiting(0, "a", 3), run(1, "b", 3)], (1, 0, 0, 1, None)),
    Case(
        "oneshot every minute, passes",
        [dead(i * 60, f"r{i}") for i in range(6)],
        (5, 5, 0, 0, None),
    ),
    Case("oneshot every minute, live", _oneshot_live(3), (3, 3, 0, 0, None)),
    Case(
        "start limit hit, live",
        [run(0, "e", 4), waiting(1, "e", 4), failed(2, "e", 5, "start-limit-hit")],
        (0, 0, 1, 1, None),
    ),
    Case(
        "start limit hit between passes (burst 5: 4 restarts ran, the 5th was refused)",
        [run(0, "a", 0), failed(900, "e", 5, "start-limit-hit")],
        (4, 0, 5, 1, None),
    ),
    Case(
        "failed for good, then started and restarted twice",
        [failed(0, "a"), run(900, "d", 2)],
        (3, 0, 2, None, None),  # the last crash was not seen: unknown, not the first's exit 1
    ),
    Case(
        "reset-failed, then started",
        [failed(0, "a", 3), dead(10, "a", 0), run(20, "b", 0)],
        (1, 0, 0, 1, None),
    ),
    Case(
        "no invocation ids",
        [look(0, "", "inactive", "dead"), look(10, ""), look(20, "", "inactive", "dead")],
        (1, 1, 0, None, None),
    ),
]


def _totals(counters: Counters | None) -> Totals:
    assert counters is not None
    c = counters
    return c.starts, c.stops, c.crashes, c.last_exit_code, c.last_signal


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_counts(case: Case) -> None:
    counters, events = fold(case.looks)
    assert _totals(counters) == case.totals
    kinds = [e.kind for e in events]
    assert (kinds.count("start"), kinds.count("stop"), kinds.count("crash")) == case.totals[:3]
    assert [e.at for e in events] == sorted(e.at for e in events)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_each_look_twice_counts_once(case: Case) -> None:
    doubled = [o for obs in case.looks for o in (obs, obs)]
    assert _totals(fold(doubled)[0]) == _totals(fold(case.looks)[0])


def test_first_look_is_a_baseline() -> None:
    counters, events = update_counters(None, failed(0, "a", 7, "signal", 2, 9))
    assert events == []
    assert (counters.starts, counters.crashes, counters.last_signal) == (0, 0, "SIGKILL")


def test_missed_restarts_are_spread_over_the_gap_and_marked() -> None:
    _, events = fold([run(0, "a", 0), run(900, "e", 4)])
    estimated = [e for e in events if e.estimated]
    assert [e.kind for e in events] == ["crash", "start"] * 4
    assert len(estimated) == 7 and not events[-1].estimated
    assert all(T0 < e.at < T0 + 900 for e in estimated)
    assert events[-1].at == T0 + 900


def test_crash_time_comes_from_exec_main_exit_timestamp() -> None:
    _, events = fold(
        [run(0, "a"), look(900, "a", "failed", "failed", 0, "exit-code", 1, 2, exit_at=T0 + 300)]
    )
    assert [(e.kind, e.at, e.exit_code) for e in events] == [("crash", T0 + 300, 2)]


def test_stale_look_is_ignored_but_a_clock_step_back_is_not() -> None:
    counters, _ = fold([run(100, "a"), run(110, "b", 1)])
    assert counters is not None
    same, events = update_counters(counters, run(105, "a"))
    assert (same, events) == (counters, [])
    later, events = update_counters(counters, run(110 - STALE_SEC - 60, "c", 0))
    assert later.starts == counters.starts + 1 and later.last_seen_at == T0 + 50 - STALE_SEC


def test_round_trip_through_json() -> None:
    counters, events = fold(_restart_always(3) + [failed(10, "i3", 3, "signal", 2, 9)])
    assert counters is not None
    row = json.loads(json.dumps(counters.to_dict()))
    assert Counters.from_dict(row) == counters
    assert [Event.from_dict(json.loads(json.dumps(e.to_dict()))) for e in events] == events
    obs = look(1, exit_at=T0)
    assert Observation.from_dict(obs.to_dict()) == obs
    # Rows written before a field existed still load; unknown columns are ignored.
    assert Counters.from_dict({"unit": UNIT, "starts": 2, "future": 1}) == Counters(UNIT, 2)


def test_counting_continues_after_a_round_trip() -> None:
    looks = _restart_always(6)
    counters, _ = fold(looks[:7])
    assert counters is not None
    resumed = Counters.from_dict(json.loads(json.dumps(counters.to_dict())))
    for obs in looks[6:]:  # the look the monitor saw last is fed again after its restart
        resumed, _ = update_counters(resumed, obs)
    assert _totals(resumed) == _totals(fold(looks)[0])


def test_from_live() -> None:
    live = LiveUnit(
        "web.service", "loaded", "failed", "failed", "enabled", "signal", 3, "abc", 2, 9, 1024
    )
    obs = Observation.from_live(live, T0, exec_main_exit_at=0.0)
    assert obs == Observation(UNIT, T0, "failed", "failed", "signal", 3, "abc", 2, 9, 1024, None)
    assert obs.exit == (None, "SIGKILL") and obs.failed and not obs.running


def test_unit_mismatch_is_refused() -> None:
    counters, _ = update_counters(None, run(0, "a"))
    other = Observation("db.service", T0, "active", "running", "success", 0, "b")
    with pytest.raises(ValueError, match="db.service"):
        update_counters(counters, other)


@pytest.mark.parametrize(
    ("number", "name"),
    [
        (1, "SIGHUP"),
        (6, "SIGABRT"),
        (9, "SIGKILL"),
        (11, "SIGSEGV"),
        (15, "SIGTERM"),
        (31, "SIGSYS"),
        (34, "SIGRTMIN"),
        (37, "SIGRTMIN+3"),
        (64, "SIGRTMIN+30"),
        (99, "SIG99"),
        (0, "SIG0"),
    ],
)
def test_signal_name(number: int, name: str) -> None:
    assert signal_name(number) == name


# -- who did it: counters.attribute ---------------------------------------------------------


def _ev(kind: str, at: float, by: str = "", code: int | None = None, sig: str | None = None):  # type: ignore[no-untyped-def]
    return Event("app.service", at, kind, code, sig, by=by)


@pytest.mark.parametrize(
    ("event", "actions", "since", "scheduled", "by"),
    [
        # a job the sync recorded after the previous look: the sync's
        (_ev("start", 100.0), [Action("app.service", 99.0, "restart")], 90.0, False, "sync"),
        (_ev("stop", 100.0), [Action("app.service", 99.0, "stop")], 90.0, False, "sync"),
        # done before the previous look: that look saw its effect; this is someone else
        (
            _ev("start", 100),
            [Action("app.service", 89, "restart", done_at=89.5)],
            90,
            0,
            "operator",
        ),
        # a look came between job and event (the watch, a pass), but the event came by its end
        (_ev("stop", 93.0), [Action("app.service", 92, "restart", done_at=94)], 92.5, 0, "sync"),
        # within the slack after its end, but a look after that end saw the job's effect:
        # an operator's restart a moment after the sync (the CI run of aa516f1)
        (
            _ev("stop", 94.5),
            [Action("app.service", 92, "restart", done_at=94)],
            94.2,
            0,
            "operator",
        ),
        # a job not known to have ended: what follows within JOB_SEC is still its
        (_ev("start", 100.0), [Action("app.service", 89.0, "restart")], 95.0, False, "sync"),
        # a job recorded after the look that saw the change did not cause it
        (_ev("start", 100.0), [Action("app.service", 100.5, "restart")], 90.0, False, "operator"),
        # another unit's job says nothing of this one
        (_ev("start", 100.0), [Action("db.service", 99.0, "restart")], 90.0, False, "operator"),
        # a timer-run service started with no job of ours: its timer
        (_ev("start", 100.0), [], 90.0, True, "timer"),
        # a stop by signal with no job of ours: an operator (systemctl stop/kill)
        (_ev("stop", 100.0, sig="SIGTERM"), [], 90.0, True, "operator"),
        # a process ending by itself (a oneshot's success), a crash: nobody's
        (_ev("stop", 100.0, code=0), [Action("app.service", 99.0, "restart")], 90.0, False, ""),
        (_ev("crash", 100.0, code=3), [Action("app.service", 99.0, "start")], 90.0, False, ""),
        # Restart='s own starts stay systemd's
        (
            _ev("start", 100.0, by="systemd"),
            [Action("app.service", 99.0, "start")],
            90,
            0,
            "systemd",
        ),
        # no earlier look: the job counts back STALE_SEC
        (_ev("start", 100.0), [Action("app.service", 50.0, "start")], None, False, "sync"),
    ],
)
def test_attribute(event, actions, since, scheduled, by) -> None:  # type: ignore[no-untyped-def]
    sched = {"app.service"} if scheduled else set()
    (got,) = attribute([event], actions, {"app.service": since}, sched)
    assert got.by == by


def test_a_late_look_at_the_run_before_is_ignored() -> None:
    """A look delivered late (the watch's signal, received after a sync's read of the next
    run) shows the previous run with a newer time: a run never comes back, so it counts
    nothing, and the run after it is not counted again."""
    looks = [run(0, "a"), waiting(1, "a", 0), run(4.0, "b", 1)]
    late = [look(4.01, "a", "activating", "auto-restart", 1, "exit-code", 1, 2), run(4.5, "b", 1)]
    counters, events = fold([*looks, *late])
    assert counters is not None
    assert [(e.kind, e.at - T0) for e in events] == [("crash", 1.0), ("start", 4.0)]
    assert (counters.starts, counters.stops, counters.crashes) == (1, 0, 1)
    assert counters.last_invocation_id == "b" and counters.last_seen_at == T0 + 4.5


def test_a_crash_never_keeps_the_next_runs_success() -> None:
    """A README-only trial: ``counters`` said ``(success)`` for a unit whose runs all exited
    3. The watch merges systemd's signals per interface: the restart's ``Service`` properties
    (Result reset to ``success``, ExecMain* reset) can land before the ``Unit`` ones leave
    ``activating/auto-restart``; that look is a crash whose exit is not known from it (the
    journal's exit fills it), never a success. The crash before keeps its exit."""
    torn = look(10, "a", "activating", "auto-restart", 0, "success", 0, 0)
    counters, events = fold([run(0, "a"), torn])
    assert counters is not None
    assert [e.kind for e in events] == ["crash"]
    assert (counters.last_exit_code, counters.last_result) == (None, None)
    counters, _ = fold([run(0, "a"), waiting(10, "a", 0, status=3), run(12, "b", 1), torn])
    assert counters is not None  # the same torn look of run b: b's crash, exit unknown
    assert counters.last_result != "success"
    for result in ("success", ""):
        after, _ = update_counters(counters, look(30, "c", "activating", "auto-restart", 2, result))
        assert after.last_result is None, result


def test_a_steady_look_is_one_that_moves_last_seen_at_alone() -> None:
    steady = Counters(
        "a.service", last_state="active", last_sub_state="running", last_invocation_id="r1",
        last_seen_at=10.0, seen_result="success",
    )  # fmt: skip
    look = Observation("a.service", 20.0, "active", "running", "success", 0, "r1")
    again, events = update_counters(steady, look)
    assert not events and again == dataclasses.replace(steady, last_seen_at=20.0)
    assert steady_look(steady, look)
    assert not steady_look(None, look)  # a first look
    assert not steady_look(steady, dataclasses.replace(look, at=10.0))  # nothing moved at all
    assert not steady_look(steady, dataclasses.replace(look, at=5.0))  # an older look
    for moved in (
        dataclasses.replace(look, active_state="failed"),
        dataclasses.replace(look, invocation_id="r2"),
        dataclasses.replace(look, n_restarts=1),
        dataclasses.replace(look, result="exit-code"),
    ):
        assert not steady_look(steady, moved)


def test_an_ended_run_seen_running_just_after_is_not_counted_again() -> None:
    """Reproduced 15 times in 43 crash loops (the watch daemon beside a sync's health gate):
    the gate saw run b crashed (its read spanned the restart), the watch's late signal then
    showed b running, and b's end was counted a second time. A run never runs again under
    its own InvocationID: that look is late. One crash, as systemd's journal says."""
    gate = look(1.0, "b", "activating", "auto-restart", 1, "exit-code", 1, 1, exit_at=T0 + 0.99)
    late_signal = run(1.0002, "b", n=1)  # stamped on receipt, after the gate's look
    ended = look(1.5, "b", "activating", "auto-restart", 1, "exit-code", 1, 1, exit_at=T0 + 0.99)
    counters, events = fold([run(0, "a"), gate, late_signal, ended])
    assert [e.kind for e in events] == ["crash", "start", "crash"], events  # a's, b's
    assert counters is not None and counters.crashes == 2, counters


def test_a_run_ended_by_a_torn_read_is_believed_running_after_revive_sec() -> None:
    """A read torn by a restart can end a run that in fact keeps running: a look of it
    running later than ``REVIVE_SEC`` after is believed, and counts nothing new."""
    torn = look(1.0, "b", "activating", "auto-restart", 1, "success", 0, 0)
    soon, later = run(1.0 + REVIVE_SEC / 2, "b", n=1), run(2.0 + REVIVE_SEC, "b", n=1)
    counters, events = fold([run(0, "a"), torn, soon])
    assert counters is not None and counters.last_sub_state == "auto-restart"
    crashes = counters.crashes
    counters, more = update_counters(counters, later)
    assert more == [] and counters.crashes == crashes
    assert (counters.last_state, counters.last_sub_state) == ("active", "running")
