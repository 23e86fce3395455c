"""watchstate: signals folded into looks, coalescing, settled states, selection, settings.

The signal sequences are systemd 252's and 257's own (recorded from the disposable host on
the machine's root and on the Debian 13 root, reduced to the properties a look uses): what
they send for a crash loop with ``Restart=``, for a unit stopped by its start limit and for
one stopped while waiting for its restart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from reconciler.core.counters import Counters, update_counters
from reconciler.core.watch_state import (
    Throttle,
    UnitView,
    WatchConfig,
    due,
    look,
    merge,
    observation,
    parse_config,
    restarts_on,
    select,
    settled,
    status_line,
    without_watch_keys,
)
from reconciler.errors import UsageError
from reconciler.model import LiveUnit

U = "crash.service"
Signal = Mapping[str, object]


def unit(active: str, sub: str, job: int, inv: str) -> Signal:
    return {"ActiveState": active, "SubState": sub, "Job": (job, "/"), "InvocationID": inv}


def svc(result: str, n: int, code: int, exit_at: int = 0) -> Signal:
    status = 1 if code == 1 else 0
    return {
        "Result": result,
        "NRestarts": n,
        "ExecMainCode": code,
        "ExecMainStatus": status,
        "ExecMainExitTimestamp": exit_at,
    }


def run(inv: str, n: int, job: int) -> list[Signal]:
    """A (re)start: systemd shows the new run's id with inactive/dead first, then active."""
    return [
        svc("success", n, 0),
        unit("inactive", "dead", job, inv),
        svc("success", n, 0),
        unit("active", "running", job, inv),
        unit("active", "running", 0, inv),
    ]


def crash(inv: str, n: int, at: int) -> list[Signal]:
    """Exit 1, ``failed`` for an instant, then waiting for the automatic restart."""
    return [
        svc("exit-code", n, 1, at),
        unit("failed", "failed", 0, inv),
        unit("activating", "auto-restart", 0, inv),
        svc("exit-code", n + 1, 1, at),  # the restart job: NRestarts first
        unit("activating", "auto-restart", 7, inv),
    ]


CRASH_LOOP = [
    *run("aa", 0, 5),
    *crash("aa", 0, 1_000_100_000),
    *run("bb", 1, 6),
    *crash("bb", 1, 1_000_200_000),
    *run("cc", 2, 7),
    *crash("cc", 2, 1_000_300_000),
    *run("dd", 3, 8),
]
START_LIMIT = [
    *run("aa", 0, 5),
    *crash("aa", 0, 1_000_100_000),
    # the restart is refused: inactive with the job, then failed, the job gone
    svc("exit-code", 1, 1, 1_000_100_000),
    unit("inactive", "dead", 7, "aa"),
    unit("failed", "failed", 7, "aa"),
    unit("failed", "failed", 0, "aa"),
]


# ... and stopped while waiting for its restart: NRestarts was bumped for a run that never was
STOPPED = [
    *CRASH_LOOP,
    *crash("dd", 3, 1_000_400_000),
    unit("activating", "auto-restart", 9, "dd"),  # the stop job replaces the restart job
    unit("inactive", "dead", 9, "dd"),
    unit("inactive", "dead", 0, "dd"),
]


# systemd 257: the restart job runs in a state of its own, auto-restart-queued, where the new
# run's id first shows (252: inactive/dead); the crash's instant of failed is named
# failed-before-auto-restart; a running unit repeats its running state once.
def run257(inv: str, n: int, job: int, after_crash: bool = True) -> list[Signal]:
    signals = run(inv, n, job)
    if after_crash:  # after a crash the new run's id shows in auto-restart-queued (252: dead)
        signals[1] = unit("activating", "auto-restart-queued", job, inv)
    return [*signals, svc("success", n, 0), unit("active", "running", 0, inv)]


def crash257(inv: str, n: int, at: int) -> list[Signal]:
    signals = crash(inv, n, at)
    signals[1] = unit("failed", "failed-before-auto-restart", 0, inv)
    return [*signals, unit("activating", "auto-restart-queued", 7, inv)]


CRASH_LOOP_257 = [
    *run257("aa", 0, 5, after_crash=False),
    *crash257("aa", 0, 1_000_100_000),
    *run257("bb", 1, 6),
    *crash257("bb", 1, 1_000_200_000),
    *run257("cc", 2, 7),
    *crash257("cc", 2, 1_000_300_000),
    *run257("dd", 3, 8),
]
START_LIMIT_257 = [
    *run257("aa", 0, 5, after_crash=False),
    *crash257("aa", 0, 1_000_100_000),
    # the restart is refused: failed straight from auto-restart-queued, then the job gone
    unit("failed", "failed", 7, "aa"),
    unit("failed", "failed", 0, "aa"),
]
STOPPED_257 = [
    *CRASH_LOOP_257,
    *crash257("dd", 3, 1_000_400_000)[:3],  # stopped before the restart job was queued
    unit("activating", "auto-restart", 9, "dd"),
    unit("inactive", "dead", 9, "dd"),
    unit("inactive", "dead", 0, "dd"),
]


def fold(batches: Sequence[Sequence[Signal]], restart_policy: str = "always") -> Counters:
    """Feed batches as the daemon does: a look per run first seen settled, one at the end."""
    view = UnitView(LiveUnit(U, "loaded"), restart_policy=restart_policy)
    counters, _ = update_counters(None, look(view, 999.0))
    looks = 0
    for i, batch in enumerate(batches):
        for j, changed in enumerate(batch):
            at = 1000.0 + i + j / 1000
            if merge(view, changed, at) and due(view, end_of_batch=False):
                counters, _ = update_counters(counters, look(view, at))
                looks += 1
        if due(view, end_of_batch=True):
            counters, _ = update_counters(counters, look(view, view.changed_at))
            looks += 1
    assert looks < sum(map(len, batches))  # not a look per signal
    return counters


def batched(signals: list[Signal], size: int) -> list[list[Signal]]:
    return [signals[i : i + size] for i in range(0, len(signals), size)]


@pytest.mark.parametrize(
    ("signals", "counts"),
    [
        (CRASH_LOOP, (4, 3, 0)),
        (STOPPED, (4, 4, 0)),
        (CRASH_LOOP_257, (4, 3, 0)),
        (STOPPED_257, (4, 4, 0)),
    ],
    ids=["crash-loop", "stopped-during-auto-restart", "crash-loop-257", "stopped-257"],
)
@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 11, 1000])
def test_counts_are_the_same_however_coalesced(
    signals: list[Signal], counts: tuple[int, int, int], size: int
) -> None:
    c = fold(batched(signals, size))
    assert (c.starts, c.crashes, c.stops) == counts
    assert c.last_invocation_id == "dd"
    if size == 1:
        assert c.last_exit_code == 1  # a burst may hide every exit: then the code is unknown


def test_without_restart_policy_a_failed_look_is_final() -> None:
    view = UnitView(LiveUnit(U, "loaded", "active", "running"), restart_policy="no")
    merge(view, svc("exit-code", 0, 1), 1.0)
    merge(view, unit("failed", "failed", 0, "aa"), 1.0)
    assert settled(view)
    view.restart_policy = "on-failure"
    assert not settled(view)  # the auto-restart follows within a millisecond
    merge(view, unit("activating", "auto-restart", 0, "aa"), 1.0)
    assert settled(view)


def test_transient_inactive_of_a_start_job_is_not_a_look() -> None:
    view = UnitView(LiveUnit(U, "loaded"))
    assert merge(view, unit("inactive", "dead", 5, "aa"), 1.0)  # new id, job running
    assert not settled(view)
    assert not merge(view, unit("inactive", "dead", 5, "aa"), 1.0)  # nothing new
    assert merge(view, unit("active", "running", 5, "aa"), 1.1)
    assert settled(view) and view.dirty


@pytest.mark.parametrize(
    ("signals", "result"),
    [
        pytest.param(START_LIMIT, "start-limit-hit", id="refused-restart"),
        pytest.param(CRASH_LOOP[:8], "exit-code", id="crash"),
        pytest.param(START_LIMIT_257, "start-limit-hit", id="refused-restart-257"),
        pytest.param(CRASH_LOOP_257[:10], "exit-code", id="crash-257"),
    ],
)
def test_start_limit_only_when_a_restart_was_refused(signals: list[Signal], result: str) -> None:
    view = UnitView(LiveUnit(U, "loaded"), restart_policy="always")
    view.came_from = "running"  # the view was built from signals, not from a read
    for s in signals:
        merge(view, s, 1.0)
    assert settled(view)
    assert observation(view, 2.0).result == result


def test_after_a_read_the_monitor_rule_applies() -> None:
    live = LiveUnit(U, "loaded", "failed", "failed", result="exit-code", n_restarts=4)
    view = UnitView(live, restart_policy="on-failure")  # came_from "": a read
    assert observation(view, 1.0).result == "start-limit-hit"
    view.restart_policy = "no"
    assert observation(view, 1.0).result == "exit-code"


def test_a_look_carries_exit_time_and_memory_only_when_given() -> None:
    view = UnitView(LiveUnit(U, "loaded"))
    for s in CRASH_LOOP[:7]:
        merge(view, s, 5.0)
    look = observation(view, 5.0)
    assert (look.exec_main_exit_at, look.memory_current, look.exit) == (1000.1, None, (1, None))
    assert observation(view, 5.0, memory=1234).memory_current == 1234


def test_merge_keeps_only_look_properties() -> None:
    view = UnitView(LiveUnit(U, "loaded"))
    assert not merge(view, {"StatusText": "x" * 10_000, "MainPID": 5}, 1.0)
    assert merge(view, {"InvocationID": b"\x01\xab"}, 2.0)
    assert view.live.invocation_id == "01ab" and view.changed_at == 2.0
    assert not hasattr(view, "__dict__") or "StatusText" not in str(view)


@pytest.mark.parametrize(
    ("desired", "loaded", "include", "exclude", "expected"),
    [
        (["a.service", "b.timer"], [], [], [], ["a.service", "b.timer"]),
        (["a.service", "b.timer"], [], [], ["*.timer"], ["a.service"]),
        (["a.service"], ["docker.service", "sshd.service"], ["docker*"], [], ["docker.service"]),
        (["a.service"], ["a.service", "x.service"], ["*.service"], ["x.*"], ["a.service"]),
        ([], [], [], [], []),
    ],
)
def test_select(
    desired: list[str],
    loaded: list[str],
    include: list[str],
    exclude: list[str],
    expected: list[str],
) -> None:
    assert select(desired, loaded, include, exclude) == expected


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({}, WatchConfig()),
        ({"watch_include": "web*"}, WatchConfig(include=("web*",))),
        (
            {"watch_exclude": ["a*", "b*"], "watch_reread_sec": 5, "watch_pass_sec": 60},
            WatchConfig(exclude=("a*", "b*"), reread_sec=5.0, pass_sec=60.0),
        ),
        ({"watch_queue_size": 64, "restart_threshold": 3}, WatchConfig(queue_size=64)),
        ({"watch_memory_sec": 600}, WatchConfig(memory_sec=600.0)),
    ],
)
def test_parse_config(section: dict[str, object], expected: WatchConfig) -> None:
    assert parse_config(section) == expected


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"watch_include": [1]}, "monitor.watch_include"),
        ({"watch_exclude": [""]}, "monitor.watch_exclude"),
        ({"watch_reread_sec": 0}, "monitor.watch_reread_sec"),
        ({"watch_pass_sec": True}, "monitor.watch_pass_sec"),
        ({"watch_queue_size": 10**9}, "monitor.watch_queue_size"),
    ],
)
def test_parse_config_refuses(section: dict[str, object], key: str) -> None:
    with pytest.raises(UsageError, match=key):
        parse_config(section)


def test_pass_section_has_no_watch_keys() -> None:
    section = {"watch_include": ["x*"], "restart_threshold": 4}
    assert without_watch_keys(section) == {"restart_threshold": 4}


@pytest.mark.parametrize(
    ("policy", "result", "restarts"),
    [
        ("always", "success", True),
        ("on-failure", "exit-code", True),
        ("on-failure", "success", False),
        ("on-abnormal", "exit-code", False),
        ("no", "signal", False),
        ("", "exit-code", False),
    ],
)
def test_restarts_on(policy: str, result: str, restarts: bool) -> None:
    assert restarts_on(policy, result) is restarts


def test_status_line_and_throttle() -> None:
    assert status_line(3, 1, 42, 0) == "watching 3 units, 1 finding open, 42 events, 0 dropped"
    assert status_line(1, 0, 1, 2) == "watching 1 unit, 0 findings open, 1 event, 2 dropped"
    t = Throttle(60.0)
    assert [t.due(x) for x in (0.0, 10.0, 59.9, 60.0, 61.0)] == [True, False, False, True, False]
