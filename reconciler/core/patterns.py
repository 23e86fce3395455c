"""Restart patterns, findings and dependency impact (pure: no I/O, no clock; ``now`` is passed in).

``detect`` reads one unit's recorded ``Event`` s (from ``update_counters``) and
``Observation`` s and says which ``Finding`` s hold *now*; ``counters.reconcile_findings``
turns one result after another into opened / still open / resolved (alerted once).
Every number comes from ``Thresholds`` (the ``[monitor]`` config section). The rules:

- crash_loop (critical): at least ``restart_threshold`` **crashes** within
  ``restart_window_sec``. Crashes, not starts: a timer-run oneshot that starts every minute
  and succeeds is healthy. A crash is a run that ended on its own (failed, or was restarted
  automatically; see ``counters``), whoever started it again. Evidence: mean interval,
  ``rapid`` (every interval under ``rapid_restart_sec``), ``escalating`` (intervals keep
  growing, as with ``RestartSteps=``).
- start_limit_hit (critical): the latest look has ``Result=start-limit-hit``.
- flapping (warning): ``flap_transitions`` up/down changes (active <-> inactive/failed) in
  the looks of the last ``flap_window_sec``. For a ``scheduled`` unit (run by a timer) a
  clean return to inactive is its normal rhythm; only failed counts as down. Not reported
  next to a crash loop, which already says it.
- periodic_crash (warning): the latest ``periodic_min_events`` or more crash episodes (a
  burst of crashes within ``restart_window_sec`` is one episode) come at regular intervals
  (coefficient of variation <= ``periodic_max_cv``); resolved after two periods without one.
- failure_clustering (info): at least ``clustering_min_events`` distinct failing hours
  (days), ``clustering_share`` of them within one hour of day (on one weekday), in UTC.
- memory_growth (warning): least-squares trend of ``MemoryCurrent`` over the current run
  (a restart resets a leak): slope >= ``memory_min_slope_bytes_per_hour``, r² >=
  ``memory_min_r2``, >= ``memory_min_samples`` samples over >= ``memory_min_span_sec``.
- restart_anomaly (warning): crashes in the last ``anomaly_recent_sec`` run at
  ``anomaly_factor`` times the unit's own earlier rate (>= ``anomaly_min_baseline_days`` of
  history; a quiet baseline counts as one crash so one bad minute is not "infinitely" worse).
- missed_run (warning, ``detect_missed_run``): a timer's run is overdue by more than
  ``missed_run_grace_sec``.

One incident is one finding (``hold``): a crash loop or flapping that is no longer detected
stays open until the unit has been healthy (no crash, not failed) for ``hold_down_sec`` (a
unit crashing steadily near the threshold would otherwise open and resolve it again and
again), also when the reconciler itself replaced the run since (a sync's restart is no
proof of health: the run it starts may crash-loop the same way). ``detect``'s ``since`` (the
reconciler's last start, restart or stop of the unit) cuts off what an earlier incarnation
did: its crashes are not a crash loop now, and the reconciler's own restart is not flapping.

Times estimated from ``NRestarts`` count towards counts and rates, never towards intervals or
hours. Periodic and clustering look back ``history_days``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, fields
from operator import attrgetter, mul

from reconciler.config import Monitor, read_section
from reconciler.core.counters import (
    Counters,
    Event,
    Evidence,
    Finding,
    Observation,
    reconcile_findings,
    signal_name,
    update_counters,
)
from reconciler.errors import UsageError

__all__ = [
    "HELD_KINDS", "Counters", "Event", "Finding", "MemoryRun", "Observation", "ThresholdError",
    "Thresholds", "detect", "detect_missed_run", "hold", "impact", "memory_run",
    "reconcile_findings", "signal_name", "update_counters",
]  # fmt: skip

DAY = 86400.0
CONTAINER_RUNTIMES = frozenset({"docker", "containerd", "cri-o", "crio", "kubelet", "podman"})
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_FRACTIONS = frozenset({"clustering_share", "memory_min_r2"})
_AT = attrgetter("at")


class ThresholdError(UsageError, ValueError):
    """A bad ``[monitor]`` threshold: a ``UsageError`` for the CLI, a ``ValueError`` for callers."""


@dataclass(frozen=True)
class Thresholds:
    restart_threshold: int = 3
    restart_window_sec: float = 300.0
    rapid_restart_sec: float = 30.0
    flap_transitions: int = 6
    flap_window_sec: float = 600.0
    periodic_min_events: int = 4
    periodic_max_cv: float = 0.15
    clustering_min_events: int = 6
    clustering_share: float = 0.6
    history_days: float = 28.0
    memory_min_samples: int = 6
    memory_min_span_sec: float = 1800.0
    memory_min_slope_bytes_per_hour: float = 4.0 * 2**20
    memory_min_r2: float = 0.8
    anomaly_factor: float = 5.0
    anomaly_recent_sec: float = 3600.0
    anomaly_min_events: int = 3
    anomaly_min_baseline_days: float = 1.0
    missed_run_grace_sec: float = 60.0
    hold_down_sec: float = 600.0  # a crash loop or flapping resolves after this long quiet

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int":
                low = 3 if f.name == "periodic_min_events" else 1
                if value < low:
                    raise ThresholdError(f"cannot use threshold '{f.name}': below {low}")
            elif not value > 0:
                raise ThresholdError(f"cannot use threshold '{f.name}': must be above 0")
            if f.name in _FRACTIONS and value > 1:
                raise ThresholdError(f"cannot use threshold '{f.name}': must be at most 1")

    @classmethod
    def from_section(cls, section: Monitor) -> Thresholds:
        """The thresholds ``[monitor]`` sets (read and checked by ``config``); the rest default."""
        values = {f.name: getattr(section, f.name) for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if v is not None})

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, object], *, ignore: Collection[str] = (), section: str = "monitor"
    ) -> Thresholds:
        """Thresholds from a plain table, through the config reader; keys in ``ignore``
        belong to the caller."""
        table = {k: v for k, v in data.items() if k not in ignore}
        try:
            return cls.from_section(read_section(Monitor, table, section))
        except UsageError as exc:  # a ValueError too, for callers outside the CLI
            raise ThresholdError(exc.message, exc.hint) from None


def detect(
    unit: str,
    events: Sequence[Event],
    observations: Sequence[Observation],
    now: float,
    th: Thresholds,
    *,
    scheduled: bool = False,
    since: float | None = None,
    memory: MemoryRun | None = None,
) -> list[Finding]:
    """The findings that hold for ``unit`` at ``now`` (``scheduled``: run by a timer;
    ``since``: the reconciler's last action on it, before which crash loops and flapping
    do not look; ``memory``: its current run's memory samples, summed; None: those in
    ``observations``)."""
    evs = sorted((e for e in events if e.unit == unit), key=_AT)
    obs = sorted((o for o in observations if o.unit == unit), key=_AT)
    crashes = [e for e in evs if e.kind == "crash"]
    cut = -math.inf if since is None else since
    history = now - th.history_days * DAY
    exact = [e.at for e in crashes if not e.estimated and e.at > history]
    loop = _crash_loop(unit, [e for e in crashes if e.at > cut], now, th)
    found = [
        loop,
        _start_limit(unit, obs, now),
        None if loop else _flapping(unit, [o for o in obs if o.at > cut], now, th, scheduled),
        _periodic(unit, exact, now, th),
        _clustering(unit, exact, now, th),
        _memory(unit, memory or memory_run(obs), obs[-1].memory_current if obs else None, now, th),
        _anomaly(unit, crashes, evs, obs, now, th),
    ]
    return [f for f in found if f is not None]


def _crash_loop(unit: str, crashes: list[Event], now: float, th: Thresholds) -> Finding | None:
    recent = [e for e in crashes if e.at > now - th.restart_window_sec]
    if len(recent) < th.restart_threshold:
        return None
    span = recent[-1].at - recent[0].at
    mean = span / (len(recent) - 1) if len(recent) > 1 else 0.0
    exact = [e.at for e in recent if not e.estimated]
    gaps = [b - a for a, b in zip(exact, exact[1:], strict=False)]
    rapid = bool(gaps) and all(g < th.rapid_restart_sec for g in gaps)
    escalating = (
        len(gaps) >= 3
        and all(b > a for a, b in zip(gaps, gaps[1:], strict=False))
        and gaps[-1] >= 1.5 * gaps[0]
    )
    evidence: Evidence = dict(count=len(recent), threshold=th.restart_threshold)
    evidence.update(window_sec=th.restart_window_sec, span_sec=round(span, 3))
    evidence.update(mean_interval_sec=round(mean, 3), rapid=int(rapid), escalating=int(escalating))
    evidence.update(estimated=sum(e.estimated for e in recent), first_at=recent[0].at)
    evidence.update(last_at=recent[-1].at)
    summary = (
        f"{unit} crashed {len(recent)} times in {_span(span)} "
        f"(threshold {th.restart_threshold} in {_span(th.restart_window_sec)})"
    )
    last = _last_exit(recent, evidence)
    summary += f"; last {last}" if last else ""
    summary += "; intervals growing" if escalating else f"; every ~{_span(mean)}" if rapid else ""
    return Finding("crash_loop", unit, "critical", summary, evidence, now)


def _last_exit(events: list[Event], evidence: Evidence) -> str:
    for e in reversed(events):
        if e.exit_code is not None:
            evidence["last_exit_code"] = e.exit_code
            return f"exit code {e.exit_code}"
        if e.signal is not None:
            evidence["last_signal"] = e.signal
            return f"signal {e.signal}"
    return ""


def _start_limit(unit: str, obs: list[Observation], now: float) -> Finding | None:
    if not obs or obs[-1].result != "start-limit-hit" or obs[-1].running:
        return None
    last = obs[-1]
    summary = (
        f"{unit} hit its start limit after {last.n_restarts} automatic restarts and stays "
        f"{last.active_state}; fix it, then run 'systemctl reset-failed {unit}'"
    )
    evidence: Evidence = dict(n_restarts=last.n_restarts, active_state=last.active_state)
    evidence.update(seen_at=last.at)
    return Finding("start_limit_hit", unit, "critical", summary, evidence, now)


def _flapping(
    unit: str, obs: list[Observation], now: float, th: Thresholds, scheduled: bool
) -> Finding | None:
    down = {"failed"} if scheduled else {"failed", "inactive"}
    states: list[tuple[float, bool]] = []
    for o in obs:
        if o.at <= now - th.flap_window_sec:
            continue
        up = o.active_state in ("active", "reloading")
        if (up or o.active_state in down) and (not states or states[-1][1] != up):
            states.append((o.at, up))
    changes = len(states) - 1
    if changes < th.flap_transitions:
        return None
    # From the first transition to the last: the look before the first one (a baseline read,
    # minutes earlier) is where the count starts, not part of the span.
    span = states[-1][0] - states[1][0]
    summary = (
        f"{unit} went up and down {changes} times in {_span(span)} "
        f"(threshold {th.flap_transitions} in {_span(th.flap_window_sec)})"
    )
    evidence: Evidence = dict(transitions=changes, span_sec=round(span, 3))
    evidence.update(window_sec=th.flap_window_sec, first_at=states[1][0], last_at=states[-1][0])
    return Finding("flapping", unit, "warning", summary, evidence, now)


def _periodic(unit: str, times: list[float], now: float, th: Thresholds) -> Finding | None:
    if len(times) < th.periodic_min_events:
        return None
    episodes: list[float] = []
    last = -math.inf
    for t in times:
        if t - last > th.restart_window_sec:
            episodes.append(t)
        last = t
    best: tuple[int, float, float] | None = None  # (episodes, period, cv) of the longest run
    total = squares = 0.0
    for k in range(1, len(episodes)):
        gap = episodes[-k] - episodes[-k - 1]
        total, squares = total + gap, squares + gap * gap
        mean = total / k
        cv = math.sqrt(max(squares / k - mean * mean, 0.0)) / mean
        if k + 1 >= th.periodic_min_events and cv <= th.periodic_max_cv:
            best = (k + 1, mean, cv)
    if best is None or now - episodes[-1] > 2 * best[1]:
        return None
    count, period, cv = best
    due = episodes[-1] + period - now
    summary = f"{unit} crashes every {_span(period)} (last {count} crashes, cv {cv:.2f}); " + (
        f"next expected in {_span(due)}" if due >= 0 else f"next one {_span(-due)} overdue"
    )
    evidence: Evidence = dict(period_sec=round(period, 3), cv=round(cv, 4), events=count)
    evidence.update(last_at=episodes[-1], next_expected_at=episodes[-1] + period)
    return Finding("periodic_crash", unit, "warning", summary, evidence, now)


def _clustering(unit: str, times: list[float], now: float, th: Thresholds) -> Finding | None:
    if len(times) < th.clustering_min_events:
        return None
    parts: list[str] = []
    evidence: Evidence = {}
    first_in_hour: dict[int, float] = {}
    for t in times:
        first_in_hour.setdefault(int(t // 3600), t)
    tods = sorted(t % DAY for t in first_in_hour.values())
    n = len(tods)
    if n >= th.clustering_min_events:
        ring = tods + [t + DAY for t in tods]
        best, start, j = 0, 0, 0
        for i in range(n):  # widest one-hour window on the 24-hour circle
            j = max(j, i)
            while j < i + n and ring[j] < ring[i] + 3600:
                j += 1
            if j - i > best:
                best, start = j - i, i
        if best / n >= th.clustering_share:
            window = f"{_clock(ring[start])}-{_clock(ring[start + best - 1])} UTC"
            parts.append(f"{best} of {n} failing hours fall within {window}")
            evidence.update(hour_events=n, hour_share=round(best / n, 3), hour_window=window)
    days = Counter((day + 3) % 7 for day in {int(t // DAY) for t in times})  # 0: Monday
    n_days = sum(days.values())
    if n_days >= th.clustering_min_events:
        weekday, count = days.most_common(1)[0]
        if count / n_days >= th.clustering_share:
            parts.append(f"{count} of {n_days} failing days are {_WEEKDAYS[weekday]}s (UTC)")
            evidence.update(day_events=n_days, weekday=_WEEKDAYS[weekday])
            evidence.update(weekday_share=round(count / n_days, 3))
    if not parts:
        return None
    summary = f"{unit} failures cluster: " + "; ".join(parts)
    return Finding("failure_clustering", unit, "info", summary, evidence, now)


@dataclass(frozen=True)
class MemoryRun:
    """The memory samples of a unit's current run as least-squares sums (x: seconds after
    a fixed time, y: bytes): all the trend needs, so a pass over 10,000 units with hours of
    samples each gets them summed by SQLite (``FindingStore.load``) instead of loading
    every sample."""

    samples: int
    first_at: float
    last_at: float
    sx: float
    sy: float
    sxx: float
    syy: float
    sxy: float

    @classmethod
    def of(cls, points: Sequence[tuple[float, float]], x0: float) -> MemoryRun | None:
        if not points:
            return None
        xs = [x - x0 for x, _ in points]
        ys = [float(y) for _, y in points]
        sx, sy = sum(xs), sum(ys)
        sxx, syy, sxy = sum(map(mul, xs, xs)), sum(map(mul, ys, ys)), sum(map(mul, xs, ys))
        return cls(len(points), points[0][0], points[-1][0], sx, sy, sxx, syy, sxy)

    def fit(self) -> tuple[float, float] | None:
        """Least-squares slope and r² (None when every x is the same)."""
        n = self.samples
        sxx = self.sxx - self.sx * self.sx / n
        syy = self.syy - self.sy * self.sy / n
        sxy = self.sxy - self.sx * self.sy / n
        if sxx <= 1e-9 * max(self.sxx, 1.0):  # the same x throughout, up to rounding
            return None
        return sxy / sxx, (min(sxy * sxy / (sxx * syy), 1.0) if syy > 0 else 0.0)


def memory_run(obs: Sequence[Observation]) -> MemoryRun | None:
    """The current run's memory samples in ``obs`` (oldest first): a restart resets a leak."""
    if not obs or obs[-1].memory_current is None:
        return None
    run, start = obs[-1].invocation_id, len(obs) - 1
    while start > 0 and (not run or obs[start - 1].invocation_id == run):
        start -= 1
    points = [(o.at, o.memory_current) for o in obs[start:] if o.memory_current is not None]
    return MemoryRun.of(points, points[0][0])


def _memory(
    unit: str, run: MemoryRun | None, current: int | None, now: float, th: Thresholds
) -> Finding | None:
    if run is None or current is None or run.samples < th.memory_min_samples:
        return None
    span = run.last_at - run.first_at
    fit = run.fit() if span >= th.memory_min_span_sec else None
    if fit is None:
        return None
    per_hour, r2 = fit[0] * 3600, fit[1]
    if per_hour < th.memory_min_slope_bytes_per_hour or r2 < th.memory_min_r2:
        return None
    summary = (
        f"{unit} memory grows {_mib(per_hour)}/h over {_span(span)} "
        f"(r² {r2:.2f}, {run.samples} samples); now {_mib(current)}"
    )
    evidence: Evidence = dict(slope_bytes_per_hour=round(per_hour, 1), r2=round(r2, 4))
    evidence.update(samples=run.samples, span_sec=round(span, 3), memory_current=current)
    return Finding("memory_growth", unit, "warning", summary, evidence, now)


def _anomaly(
    unit: str,
    crashes: list[Event],
    evs: list[Event],
    obs: list[Observation],
    now: float,
    th: Thresholds,
) -> Finding | None:
    cut = now - th.anomaly_recent_sec
    recent = sum(e.at > cut for e in crashes)
    if recent < th.anomaly_min_events:
        return None
    first = min([e.at for e in evs[:1]] + [o.at for o in obs[:1]])
    first = max(first, now - th.history_days * DAY)
    baseline_sec = cut - first
    if baseline_sec < th.anomaly_min_baseline_days * DAY:
        return None
    before = sum(first <= e.at <= cut for e in crashes)
    usual = max(before, 1) / baseline_sec * 3600
    rate = recent / th.anomaly_recent_sec * 3600
    if rate < th.anomaly_factor * usual:
        return None
    summary = (
        f"{unit} crashed {recent} times in the last {_span(th.anomaly_recent_sec)}: "
        f"{rate / usual:.0f}x its usual {usual:.2f}/h over {_span(baseline_sec)}"
    )
    evidence: Evidence = dict(recent_count=recent, recent_rate_per_hour=round(rate, 4))
    evidence.update(baseline_rate_per_hour=round(usual, 4), factor=round(rate / usual, 2))
    evidence.update(baseline_days=round(baseline_sec / DAY, 2))
    return Finding("restart_anomaly", unit, "warning", summary, evidence, now)


HELD_KINDS = frozenset({"crash_loop", "flapping"})


def hold(
    finding: Finding,
    last_seen: float,
    now: float,
    th: Thresholds,
    *,
    unhealthy_at: float | None = None,
    healthy: bool = True,
) -> bool:
    """Whether an open finding no longer detected stays open (see the module docstring).

    ``last_seen``: when it was last detected; ``unhealthy_at``: when the unit last crashed
    or was last seen failed; ``healthy``: the unit's latest look is neither failed nor
    awaiting a restart. A restart by a sync or rollback is no proof of health: the new run
    must stay healthy for ``hold_down_sec`` too (issue 12: one bad commit, one finding).
    """
    if finding.kind not in HELD_KINDS:
        return False
    if not healthy:
        return True
    quiet_since = max(last_seen, unhealthy_at if unhealthy_at is not None else last_seen)
    return now - quiet_since < th.hold_down_sec


def detect_missed_run(
    timer: str,
    last_trigger_at: float | None,
    next_elapse_at: float | None,
    interval_sec: float | None,
    now: float,
    th: Thresholds,
) -> Finding | None:
    """A timer whose run is overdue: ``last_trigger + interval`` or its next elapse is past.

    ``interval_sec`` is the longest gap its schedule allows (fold ``RandomizedDelaySec`` in);
    None when unknown. A next elapse no later than the last trigger is stale and ignored.
    """
    due: list[float] = []
    if last_trigger_at is not None and interval_sec is not None:
        due.append(last_trigger_at + interval_sec)
    if next_elapse_at is not None and (last_trigger_at is None or next_elapse_at > last_trigger_at):
        due.append(next_elapse_at)
    if not due or now <= min(due) + th.missed_run_grace_sec:
        return None
    overdue = now - min(due)
    evidence: Evidence = {"due_at": min(due), "overdue_sec": round(overdue, 3)}
    if last_trigger_at is None:
        summary = f"{timer} never ran although a run was due {_span(overdue)} ago"
    else:
        summary = f"{timer} last ran {_span(now - last_trigger_at)} ago; a run is {_span(overdue)}"
        summary += f" overdue (every {_span(interval_sec)})" if interval_sec else " overdue"
        evidence["last_trigger_at"] = last_trigger_at
    if interval_sec is not None:
        evidence["interval_sec"] = interval_sec
    return Finding("missed_run", timer, "warning", summary, evidence, now)


def impact(
    unit: str, reverse_deps: Mapping[str, Sequence[str]], depth: int = 3
) -> list[tuple[str, int, bool]]:
    """Units hit when ``unit`` fails: (name, distance, high impact), nearest first.

    ``reverse_deps`` maps a unit to the units that need it (systemd's RequiredBy, WantedBy,
    BoundBy, ConsistsOf); container runtimes are high impact. Cycles end at a seen unit.
    """
    if depth < 0:
        raise ValueError(f"cannot walk dependencies of '{unit}': depth {depth} is negative")
    seen, frontier = {unit: 0}, [unit]
    for level in range(1, depth + 1):
        frontier = list(dict.fromkeys(d for u in frontier for d in reverse_deps.get(u, ())))
        frontier = [d for d in frontier if d not in seen]
        seen.update((d, level) for d in frontier)
    hits = [(u, d, is_container_runtime(u)) for u, d in seen.items() if u != unit]
    return sorted(hits, key=lambda hit: (hit[1], hit[0]))


def is_container_runtime(name: str) -> bool:
    """``docker.service``, ``containerd.service``, ``kubelet.service``, ``crio.socket``, ..."""
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return stem.split("@", 1)[0] in CONTAINER_RUNTIMES


def _span(sec: float) -> str:
    """``4m12s``, ``5m``, ``1h30m``, ``2d3h``, ``1.1s``: two units at most."""
    if sec < 59.5:
        return f"{sec:.1f}s" if sec < 9.95 and sec != int(sec) else f"{sec:.0f}s"
    rest, parts = round(sec), []
    for name, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{name}")
    return "".join(parts[:2])


def _clock(sec_of_day: float) -> str:
    minutes = int(sec_of_day % DAY) // 60
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"
