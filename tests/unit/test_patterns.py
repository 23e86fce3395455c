"""Pattern tables (pure): realistic timelines of events and looks in, findings out.

Healthy timelines (a steady service, timer jobs that succeed, flat or sawtooth memory) must
give no finding at all; each pattern's timeline must give exactly its finding.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest

from reconciler.core.counters import Counters, Event, Observation, update_counters
from reconciler.core.patterns import (
    Finding,
    Thresholds,
    detect,
    detect_missed_run,
    impact,
    reconcile_findings,
)
from reconciler.errors import UsageError

T0 = 1_709_510_400.0  # 2024-03-04 00:00 UTC, a Monday
DAY = 86400.0
MB = 1_000_000
UNIT = "web.service"
TH = Thresholds()


def obs(
    at: float,
    state: str = "active",
    sub: str = "running",
    inv: str = "a",
    mem: int | None = None,
    result: str = "success",
    n: int = 0,
) -> Observation:
    return Observation(UNIT, at, state, sub, result, n, inv, memory_current=mem)


def crash(at: float, code: int | None = 1, estimated: bool = False) -> Event:
    return Event(UNIT, at, "crash", code, None, estimated)


def fold(looks: list[Observation]) -> list[Event]:
    counters: Counters | None = None
    events: list[Event] = []
    for o in looks:
        counters, new = update_counters(counters, o)
        events += new
    return events


@dataclass
class Timeline:
    events: list[Event] = field(default_factory=list)
    looks: list[Observation] = field(default_factory=list)
    now: float = T0
    scheduled: bool = False


def steady() -> Timeline:
    """A long-running service looked at every 15 min for a week; memory flat with noise."""
    rnd = random.Random(1)
    looks = [obs(T0 + i * 900, mem=200 * MB + rnd.randint(-5, 5) * MB) for i in range(672)]
    return Timeline([Event(UNIT, T0 - 60, "start")], looks, T0 + 671 * 900)


def restart_always(count: int = 6) -> Timeline:
    """Restart=always, RestartSec=1, exits 1 at once: a new start every ~1.1 s, watched live."""
    looks = [obs(T0)]
    for i in range(count):
        t = T0 + i * 1.1
        died = Observation(UNIT, t + 0.05, "activating", "auto-restart", "exit-code", i, f"i{i}")
        looks += [
            replace(died, exec_main_code=1, exec_main_status=1),
            obs(t + 1.1, inv=f"i{i + 1}", n=i + 1),
        ]
    return Timeline(fold(looks), looks, looks[-1].at + 0.2)


def timer_oneshot(scheduled: bool) -> Timeline:
    """Type=oneshot on OnCalendar=minutely for two hours, every run succeeds."""
    looks = [obs(T0 - 5, "inactive", "dead", "r0")]
    for i in range(1, 121):
        t = T0 + i * 60
        looks += [obs(t, "activating", "start", f"r{i}"), obs(t + 3, "inactive", "dead", f"r{i}")]
    return Timeline(fold(looks), looks, looks[-1].at + 10, scheduled)


def timer_simple(scheduled: bool) -> Timeline:
    """A Type=simple job run by a timer every minute; each run lasts 20 s and exits 0."""
    looks = [obs(T0 - 5, "inactive", "dead", "r0")]
    for i in range(1, 31):
        t = T0 + i * 60
        looks += [obs(t, inv=f"r{i}"), obs(t + 20, "inactive", "dead", f"r{i}")]
    return Timeline(fold(looks), looks, looks[-1].at + 10, scheduled)


def flapping() -> Timeline:
    """Two tools fight over the unit: stopped and started again every minute."""
    looks = []
    for i in range(8):
        t = T0 + i * 60
        looks += [obs(t, inv=f"r{i}"), obs(t + 30, "inactive", "dead", f"r{i}")]
    return Timeline(fold(looks), looks, looks[-1].at + 5)


def start_limit() -> Timeline:
    tl = restart_always(4)
    last = Observation(UNIT, tl.now, "failed", "failed", "start-limit-hit", 5, "i4", 1, 1)
    return Timeline(tl.events, [*tl.looks, last], tl.now + 1)


def daily_crash(days: int = 8) -> Timeline:
    """A nightly job fails at about 03:00 UTC for a week (jitter of a minute or two)."""
    rnd = random.Random(2)
    events = [crash(T0 + d * DAY + 3 * 3600 + rnd.uniform(-90, 90), 3) for d in range(days)]
    return Timeline(events, [], T0 + (days - 1) * DAY + 10 * 3600)


def memory(shape: Callable[[int], float], samples: int = 40) -> Timeline:
    """MemoryCurrent read once a minute for 40 minutes."""
    looks = [obs(T0 + i * 60, mem=int(shape(i))) for i in range(samples)]
    return Timeline([], looks, looks[-1].at)


_noise = random.Random(3)
GROWING = memory(lambda i: 300 * MB + 10 * MB * i + _noise.gauss(0, 3 * MB))
FLAT = memory(lambda i: 300 * MB + _noise.gauss(0, 3 * MB))
SAWTOOTH = memory(lambda i: 300 * MB + 40 * MB * (i % 6))  # grows, then GC gives it back
RESTARTED = Timeline(
    [],
    [obs(T0 + i * 60, inv=f"r{i // 5}", mem=300 * MB + 10 * MB * (i % 5)) for i in range(30)],
    T0 + 29 * 60,
)


def anomaly() -> Timeline:
    """About one crash a day for a week, then six in the last hour (never 3 within 5 min)."""
    rnd = random.Random(4)
    now = T0 + 8 * DAY
    events = [Event(UNIT, T0 - 60, "start")]
    events += [crash(T0 + d * DAY + rnd.uniform(0, DAY)) for d in range(7)]
    events += [crash(now - 3600 + m * 60) for m in (2, 5, 16, 23, 36, 41)]
    return Timeline(events, [], now)


def missed_passes() -> Timeline:
    """A pass every 15 min finds NRestarts grown by 4: the count is sure, the times are not."""
    looks = [obs(T0, n=0), obs(T0 + 120, inv="e", n=4)]
    return Timeline(fold(looks), looks, T0 + 120)


CASES: dict[str, tuple[Timeline, set[str]]] = {
    "steady service": (steady(), set()),
    "timer oneshot every minute": (timer_oneshot(False), set()),
    "timer oneshot every minute (scheduled)": (timer_oneshot(True), set()),
    "timer-run simple job (scheduled)": (timer_simple(True), set()),
    "restart always, RestartSec=1": (restart_always(), {"crash_loop"}),
    "start limit hit": (start_limit(), {"crash_loop", "start_limit_hit"}),
    "flapping": (flapping(), {"flapping"}),
    "daily crash at 03:00": (daily_crash(), {"periodic_crash", "failure_clustering"}),
    "memory grows 10 MB/min": (GROWING, {"memory_growth"}),
    "memory flat with noise": (FLAT, set()),
    "memory sawtooth (GC)": (SAWTOOTH, set()),
    "memory reset by restarts": (RESTARTED, set()),
    "restart rate far above baseline": (anomaly(), {"restart_anomaly"}),
    "restarts missed between passes": (missed_passes(), {"crash_loop"}),
}


@pytest.mark.parametrize(("name"), CASES)
def test_detect(name: str) -> None:
    tl, kinds = CASES[name]
    found = detect(UNIT, tl.events, tl.looks, tl.now, TH, scheduled=tl.scheduled)
    assert {f.kind for f in found} == kinds, [f.summary for f in found]
    for f in found:
        assert f.unit == UNIT and f.first_seen == tl.now and "\n" not in f.summary
        assert f.severity in ("critical", "warning", "info")
        assert json.loads(json.dumps(f.to_dict())) == f.to_dict()


def _one(tl: Timeline, kind: str) -> Finding:
    found = detect(UNIT, tl.events, tl.looks, tl.now, TH, scheduled=tl.scheduled)
    return next(f for f in found if f.kind == kind)


def test_crash_loop_evidence() -> None:
    f = _one(restart_always(), "crash_loop")
    assert f.severity == "critical"
    assert f.evidence["count"] == 6 and f.evidence["rapid"] == 1
    assert f.evidence["escalating"] == 0 and f.evidence["last_exit_code"] == 1
    assert f.evidence["mean_interval_sec"] == pytest.approx(1.1)
    assert f.summary == (
        "web.service crashed 6 times in 5.5s (threshold 3 in 5m); last exit code 1; every ~1.1s"
    )


def test_crash_loop_with_backoff_is_escalating() -> None:
    times = [T0 + s for s in (0, 5, 15, 35, 75, 155)]  # RestartSteps= doubling the delay
    f = _one(Timeline([crash(t) for t in times], [], T0 + 160), "crash_loop")
    assert f.evidence["escalating"] == 1 and f.evidence["rapid"] == 0
    assert "intervals growing" in f.summary


def test_estimated_restarts_count_but_never_make_a_pattern() -> None:
    events = [crash(T0 + i * 900.0, estimated=True) for i in range(10)]
    found = detect(UNIT, events, [], T0 + 9 * 900, TH)
    assert found == []  # evenly spread guesses are not a period; 1 in the window is no loop


def test_crash_loop_clears_after_the_window() -> None:
    tl = restart_always()
    assert detect(UNIT, tl.events, tl.looks, tl.now + TH.restart_window_sec, TH) == []


def test_timer_run_simple_job_flaps_unless_scheduled() -> None:
    assert {f.kind for f in detect(UNIT, *_args(timer_simple(False)))} == {"flapping"}


def _args(tl: Timeline) -> tuple[list[Event], list[Observation], float, Thresholds]:
    return tl.events, tl.looks, tl.now, TH


def test_periodic_and_clustering_evidence() -> None:
    tl = daily_crash()
    periodic = _one(tl, "periodic_crash")
    assert periodic.evidence["period_sec"] == pytest.approx(DAY, rel=0.01)
    assert periodic.evidence["events"] == 8
    assert periodic.summary.startswith("web.service crashes every 23h59m (last 8 crashes")
    assert "next expected in 16h59m" in periodic.summary
    cluster = _one(tl, "failure_clustering")
    assert cluster.evidence["hour_share"] == 1.0 and "UTC" in cluster.summary
    assert str(cluster.evidence["hour_window"]).startswith("02:5")
    # Two periods without a crash: the pattern is over.
    assert not [
        f for f in detect(UNIT, tl.events, [], tl.now + 2 * DAY, TH) if f.kind == "periodic_crash"
    ]


def test_weekday_clustering() -> None:
    mondays = [crash(T0 + w * 7 * DAY + 9 * 3600 + w * 7000) for w in range(5)]
    other = [crash(T0 + 2 * DAY + 13 * 3600)]
    found = detect(UNIT, mondays + other, [], T0 + 30 * DAY, Thresholds(history_days=35))
    assert {f.kind for f in found} == {"failure_clustering", "periodic_crash"}  # weekly, too
    f = next(f for f in found if f.kind == "failure_clustering")
    assert "hour_window" not in f.evidence  # the hour drifts by ~2h a week
    assert f.evidence["weekday"] == "Monday" and "5 of 6 failing days are Mondays" in f.summary


def test_memory_growth_evidence() -> None:
    f = _one(GROWING, "memory_growth")
    assert f.evidence["slope_bytes_per_hour"] == pytest.approx(600 * MB, rel=0.05)
    assert f.evidence["r2"] > 0.95 and f.evidence["samples"] == 40
    assert f.evidence["span_sec"] == 39 * 60


def test_anomaly_evidence() -> None:
    f = _one(anomaly(), "restart_anomaly")
    assert f.evidence["recent_count"] == 6 and f.evidence["factor"] >= 5
    assert f.evidence["baseline_days"] >= 1


def test_anomaly_needs_a_baseline() -> None:
    tl = anomaly()
    recent = [e for e in tl.events if e.at > tl.now - 2 * 3600]
    assert detect(UNIT, recent, [], tl.now, TH) == []


def test_start_limit_summary() -> None:
    f = _one(start_limit(), "start_limit_hit")
    assert f.summary.startswith("web.service hit its start limit after 5 automatic restarts")


@pytest.mark.parametrize(
    ("last", "next_", "interval", "summary"),
    [
        (None, T0 - 600, None, "backup.timer never ran although a run was due 10m ago"),
        (None, T0 + 600, None, None),
        (None, None, None, None),
        (T0 - 1800, T0 + 600, 3600, None),
        (T0 - 7200, None, 3600, "backup.timer last ran 2h ago; a run is 1h overdue (every 1h)"),
        (T0 - 3600 - 59, None, 3600, None),  # within the grace
        (T0 - 1800, None, 3600, None),
        (T0 - 7200, T0 - 7300, None, None),  # a next elapse before the last run is stale
        (T0 - 7200, T0 - 3600, None, "backup.timer last ran 2h ago; a run is 1h overdue"),
    ],
)
def test_missed_run(
    last: float | None, next_: float | None, interval: float | None, summary: str | None
) -> None:
    f = detect_missed_run("backup.timer", last, next_, interval, T0, TH)
    assert (f.summary if f else None) == summary
    if f:
        assert f.key == ("missed_run", "backup.timer") and f.severity == "warning"


def test_findings_open_once_then_resolve() -> None:
    tl = restart_always()
    first = detect(UNIT, tl.events, tl.looks, tl.now, TH)
    opened, still, resolved = reconcile_findings({}, first)
    assert [f.kind for f in opened] == ["crash_loop"] and still == resolved == []
    open_ = {f.key: f for f in opened}
    again = detect(UNIT, tl.events, tl.looks, tl.now + 30, TH)
    opened, still, resolved = reconcile_findings(open_, again)
    assert opened == [] and resolved == [] and [f.first_seen for f in still] == [tl.now]
    other = Finding("missed_run", "backup.timer", "warning", "x", {}, T0)
    open_[other.key] = other
    later = detect(UNIT, tl.events, tl.looks, tl.now + 600, TH)
    opened, still, resolved = reconcile_findings(open_, later, units={UNIT})
    assert opened == still == [] and [f.kind for f in resolved] == ["crash_loop"]
    assert reconcile_findings(open_, [])[2] == list(open_.values())


def test_impact() -> None:
    deps = {
        "containerd.service": ["docker.service", "kubelet.service"],
        "docker.service": ["app.service", "docker.socket"],
        "docker.socket": ["docker.service"],  # cycle
        "app.service": ["multi-user.target"],
        "multi-user.target": ["graphical.target"],
    }
    assert impact("containerd.service", deps) == [
        ("docker.service", 1, True),
        ("kubelet.service", 1, True),
        ("app.service", 2, False),
        ("docker.socket", 2, True),
        ("multi-user.target", 3, False),
    ]
    assert impact("containerd.service", deps, depth=1) == [
        ("docker.service", 1, True),
        ("kubelet.service", 1, True),
    ]
    assert impact("lonely.service", deps) == [] and impact("app.service", deps, 0) == []
    with pytest.raises(ValueError):
        impact("app.service", deps, -1)


def test_thresholds_from_mapping() -> None:
    th = Thresholds.from_mapping(
        {"restart_threshold": 5, "restart_window_sec": 60, "include": ["*"]}, ignore={"include"}
    )
    assert th.restart_threshold == 5 and th.restart_window_sec == 60.0
    assert isinstance(th.restart_window_sec, float)
    assert Thresholds.from_mapping({}) == Thresholds()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"restart_treshold": 3}, "monitor.restart_treshold: unknown key"),
        ({"restart_threshold": 2.5}, "monitor.restart_threshold: expected an integer"),
        ({"restart_threshold": True}, "monitor.restart_threshold: expected an integer"),
        ({"restart_window_sec": "5m"}, "monitor.restart_window_sec: expected a number"),
        ({"restart_window_sec": 0}, "monitor.restart_window_sec: expected a number above 0"),
        ({"clustering_share": 1.5}, "monitor.clustering_share: expected at most 1"),
        ({"periodic_min_events": 2}, "monitor.periodic_min_events: expected 3 or more"),
    ],
)
def test_thresholds_refused(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        Thresholds.from_mapping(data)
    assert isinstance(info.value, UsageError)  # the CLI prints it as one line, exit 2


def test_finding_round_trip() -> None:
    f = _one(restart_always(), "crash_loop")
    assert Finding.from_dict(json.loads(json.dumps(f.to_dict()))) == f
    assert f.key == ("crash_loop", UNIT)


def test_flapping_states_the_span_of_its_transitions_not_since_the_baseline() -> None:
    looks = [obs(T0)]  # the baseline read, five minutes before the first transition
    for i in range(6):
        looks.append(obs(T0 + 300 + 10 * i, "inactive" if i % 2 == 0 else "active", inv=str(i)))
    (flap,) = [f for f in detect(UNIT, [], looks, T0 + 360, TH) if f.kind == "flapping"]
    assert flap.evidence["transitions"] == 6
    assert flap.evidence["span_sec"] == 50.0
    assert (flap.evidence["first_at"], flap.evidence["last_at"]) == (T0 + 300, T0 + 350)
    assert "6 times in 50s" in flap.summary
