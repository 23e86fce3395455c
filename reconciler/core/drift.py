"""Drift: a managed unit as it is against the applied revision (pure: no I/O, no clock).

The adapter (``unitstate``) reads a ``UnitState`` per desired unit; :func:`check` compares
it with the ``DesiredUnit`` and says what differs, one ``DriftItem`` per aspect:

- ``file``: the unit file is missing, or its content is not what was rendered (edited by
  hand);
- ``masked``: masked by hand (the sync leaves masked units alone);
- ``load``: systemd cannot load the unit (``bad-setting``, ``error``);
- ``reload``: ``NeedDaemonReload``, or a file systemd never loaded;
- ``enablement``: enabled/disabled against ``enable`` (static, indirect and generated units
  cannot be enabled and are fine);
- ``active``: should run (``start``) but is inactive, or is failed (any unit, also one run
  by a timer). A oneshot that finished with success is not "inactive". For the reconciler's
  own units a failed run is not drift but :func:`failed_run`;
- ``dropin``: a drop-in of ours missing or edited by hand, or a foreign one in ``UNIT.d/``;
- ``timer``: an active timer with a repeating schedule but no next elapse, while the unit
  it triggers does not run (during a run systemd has no next elapse: a long job is not
  drift).

:func:`drift_finding` folds a unit's items into one ``Finding`` of kind ``drift``, and
:func:`missed_run` asks ``patterns.detect_missed_run`` about a timer with the longest gap
its schedule allows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from reconciler.core.patterns import Finding, Thresholds, detect_missed_run
from reconciler.model import DesiredUnit, LiveUnit, ManagedFile

if TYPE_CHECKING:  # core.files imports the inventory (pydantic): not the monitor's to load
    from reconciler.core.files import HostFile

ENABLED = frozenset({"enabled", "enabled-runtime"})
NOT_ENABLEABLE = frozenset({"static", "indirect", "generated", "transient", "alias"})
MASKED = frozenset({"masked", "masked-runtime"})
RUNNING = frozenset({"active", "activating", "deactivating", "reloading", "refreshing"})
REPEATING = frozenset({"OnUnitActiveUSec", "OnUnitInactiveUSec"})
LOAD_ERRORS = frozenset({"error", "bad-setting"})


@dataclass(frozen=True)
class TimerInfo:
    """A timer's schedule and its last and next runs, in unix seconds (None: never/unset)."""

    last_trigger_at: float | None = None
    next_elapse_at: float | None = None
    monotonic: tuple[tuple[str, float], ...] = ()  # ("OnUnitActiveUSec", seconds), ...
    calendar: tuple[str, ...] = ()  # OnCalendar specs, normalised by systemd
    randomized_delay_sec: float = 0.0
    accuracy_sec: float = 0.0
    job_running: bool = False  # the unit it triggers runs now: no next elapse until it ends

    @property
    def repeats(self) -> bool:
        return bool(self.calendar) or any(base in REPEATING for base, _ in self.monotonic)


@dataclass(frozen=True)
class UnitState:
    """One managed unit as the host has it now."""

    live: LiveUnit
    file: str | None  # the unit file's content on disk; None: missing
    exec_main_exit_at: float | None = None
    memory: int | None = None  # MemoryCurrent, else the cgroup's RSS
    memory_source: str = ""  # "MemoryCurrent" | "cgroup-rss" | ""
    control_group: str = ""
    restart_policy: str = ""  # Restart= of a service that is not running ("" when unread)
    timer: TimerInfo | None = None
    extra: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class DriftItem:
    unit: str
    aspect: str  # file | masked | load | reload | enablement | active | timer | dropin | config
    want: str
    have: str
    severity: str = "warning"  # critical for a failed or unloadable unit

    def text(self) -> str:
        return f"{self.aspect}: {self.have} (want {self.want})"

    def to_dict(self) -> dict[str, str]:
        return {
            "unit": self.unit,
            "aspect": self.aspect,
            "want": self.want,
            "have": self.have,
            "severity": self.severity,
        }


def file_status(desired: DesiredUnit, state: UnitState) -> str:
    """``matches``, ``drifted`` (edited by hand) or ``missing``. A Quadlet-generated unit
    has no file of ours: its Quadlet file is checked as a config file."""
    if desired.generated_from:
        return "matches"
    if state.file is None:
        return "missing"
    return "matches" if state.file == desired.content else "drifted"


def check(desired: DesiredUnit, state: UnitState) -> list[DriftItem]:
    """Everything in which the unit differs from ``desired``; [] when it matches."""
    live, name = state.live, desired.name
    items: list[DriftItem] = []

    def add(aspect: str, want: str, have: str, severity: str = "warning") -> None:
        items.append(DriftItem(name, aspect, want, have, severity))

    status = file_status(desired, state)
    if status == "missing":
        add("file", "present", "missing")
    elif status == "drifted":
        add("file", "as rendered", "edited by hand")
    if live.load_state == "masked" or live.unit_file_state in MASKED:
        add("masked", "not masked", "masked by hand")
        return items  # nothing else about a masked unit means anything
    if live.load_state in LOAD_ERRORS:
        add("load", "loaded", live.load_state, "critical")
    if live.need_daemon_reload or (state.file is not None and live.load_state == "not-found"):
        add("reload", "loaded as on disk", "changed on disk since the last daemon-reload")
    ufs = live.unit_file_state
    if desired.enable and ufs not in ENABLED | NOT_ENABLEABLE:
        add("enablement", "enabled", ufs or "unknown")
    elif not desired.enable and ufs in ENABLED:
        add("enablement", "disabled", ufs)
    if live.active_state == "failed":
        add(
            "active",
            "running" if desired.start else "not failed",
            f"failed ({live.result or 'unknown'})",
            "critical",
        )
    elif desired.start and live.active_state == "inactive" and not _finished_oneshot(live):
        add("active", "running", "inactive")
    timer = state.timer
    if (
        timer is not None
        and desired.start
        and live.active_state == "active"
        and timer.repeats
        and timer.next_elapse_at is None
        and not timer.job_running
    ):
        add("timer", "next run scheduled", "no next elapse")
    return items


def dropin_items(unit: str, ours: Mapping[str, str], on_disk: Mapping[str, str]) -> list[DriftItem]:
    """A managed unit's drop-ins (file name -> content) against the applied revision's: ours
    missing or edited by hand, and any other drop-in (put there by hand: reported, never
    removed)."""
    items = []
    for name in sorted(ours):
        have = on_disk.get(name)
        if have != ours[name]:
            what = "missing" if have is None else "edited by hand"
            items.append(DriftItem(unit, "dropin", f"{name} as rendered", f"{name} {what}"))
    for name in sorted(set(on_disk) - set(ours)):
        items.append(DriftItem(unit, "dropin", "only the reconciler's drop-ins", f"{name} foreign"))
    return items


def config_file_items(entry: ManagedFile, have: HostFile) -> list[DriftItem]:
    """A managed config file against what the sync wrote: content, mode and owner changed
    by hand (reported; only the next sync with a changed entry rewrites it)."""
    path = entry.path

    def item(want: str, got: str) -> DriftItem:
        return DriftItem(path, "config", want, got)

    if have.blocked:
        return [item("a regular file", f"{have.blocked} is a symlink or not a directory")]
    if have.kind != "file" or have.meta is None:
        return [item("a regular file", "missing" if have.kind == "absent" else have.kind)]
    items = []
    import hashlib  # OpenSSL's libcrypto: ~3.6 MB a monitor need not map without config files

    if hashlib.sha256(have.meta.content).hexdigest() != entry.sha256:
        items.append(item("content as rendered", "content edited by hand"))
    if have.meta.mode != entry.mode:
        items.append(item(f"mode {entry.mode:04o}", f"mode {have.meta.mode:04o}"))
    if (have.meta.uid, have.meta.gid) != (entry.uid, entry.gid):
        want, got = f"{entry.uid}:{entry.gid}", f"{have.meta.uid}:{have.meta.gid}"
        items.append(item(f"owner {want}", f"owner {got}"))
    return items


def _finished_oneshot(live: LiveUnit) -> bool:
    return live.service_type == "oneshot" and live.result in ("success", "")


# Restart= policy -> the Results it restarts on (systemd.service(5), "Restart=").
_RESTARTS_ON = {
    "always": frozenset({"exit-code", "signal", "core-dump", "timeout", "watchdog", "success"}),
    "on-failure": frozenset({"exit-code", "signal", "core-dump", "timeout", "watchdog"}),
    "on-abnormal": frozenset({"signal", "core-dump", "timeout", "watchdog"}),
    "on-abort": frozenset({"signal", "core-dump"}),
    "on-watchdog": frozenset({"watchdog"}),
    "on-success": frozenset({"success"}),
}


def effective_result(state: UnitState) -> str:
    """``Result``, or ``start-limit-hit`` where systemd refused the automatic restart.

    systemd (252 at least) keeps a failed run's Result (``exit-code``...) when the restart
    after it hits the start limit: only a unit whose last result was ``success`` shows
    ``start-limit-hit``. A service that is *failed* although its ``Restart=`` policy restarts
    on that result, after automatic restarts, was stopped by its start limit.
    (RestartPreventExitStatus= can also stop it; that case is reported the same way.)
    """
    live = state.live
    if (
        live.active_state == "failed"
        and live.n_restarts > 0
        and live.result in _RESTARTS_ON.get(state.restart_policy, frozenset())
    ):
        return "start-limit-hit"
    return live.result


def drift_finding(unit: str, items: Sequence[DriftItem], now: float) -> Finding | None:
    """One ``drift`` finding for the unit's items (None when there are none)."""
    if not items:
        return None
    severity = "critical" if any(i.severity == "critical" for i in items) else "warning"
    evidence: dict[str, float | int | str] = {i.aspect: i.have for i in items}
    summary = f"{unit} drifted from the applied revision: " + "; ".join(i.text() for i in items)
    return Finding("drift", unit, severity, summary, evidence, now)


def is_failed_run(item: DriftItem) -> bool:
    """The ``active`` item of a unit whose last run failed (own units: a failed run)."""
    return item.aspect == "active" and item.have.startswith("failed")


def failed_run(
    unit: str,
    state: UnitState,
    failed_at: float | None,
    now: float,
    *,
    sync: bool = False,
    synced_at: float | None = None,
) -> Finding | None:
    """A failed run of one of the reconciler's own units or of a job a timer runs: an event,
    not drift (install decides the former, their timers start both, never a sync).
    ``sync``: the sync's own service, resolved by a good sync (any trigger) that started
    after the failure (``synced_at``: the newest)."""
    live = state.live
    if live.active_state != "failed":
        return None
    if sync and synced_at is not None and (failed_at is None or synced_at > failed_at):
        return None  # a later sync succeeded: the host is fine
    result = live.result or "unknown"
    summary = f"{unit}: its last run failed ({result})"
    if sync:
        summary += "; resolved by the next good sync ('reconciler history' says why it failed)"
    else:
        summary += f"; resolved by its next good run ('journalctl -u {unit}' says why)"
    evidence: dict[str, float | int | str] = {"result": result}
    if failed_at is not None:
        evidence["failed_at"] = failed_at
    return Finding("failed_run", unit, "warning", summary, evidence, now)


def schedule_interval(timer: TimerInfo, calendar_intervals: Mapping[str, float]) -> float | None:
    """The longest gap the schedule allows between runs (None: not a repeating schedule).

    Calendar specs' periods come from ``calendar_intervals`` (spec -> seconds, computed by
    the adapter); randomized delay and accuracy are added since systemd may use both.
    """
    gaps = [v for base, v in timer.monotonic if base in REPEATING and v > 0]
    gaps += [calendar_intervals[s] for s in timer.calendar if s in calendar_intervals]
    if not gaps:
        return None
    return max(gaps) + timer.randomized_delay_sec + timer.accuracy_sec


def missed_run(
    name: str,
    timer: TimerInfo,
    now: float,
    th: Thresholds,
    calendar_intervals: Mapping[str, float],
) -> Finding | None:
    if timer.job_running:
        return None  # the run is happening now; a hung one is the service's matter
    interval = schedule_interval(timer, calendar_intervals)
    return detect_missed_run(name, timer.last_trigger_at, timer.next_elapse_at, interval, now, th)


def specs_needing_interval(states: Mapping[str, UnitState]) -> list[str]:
    """Calendar specs of timers with no next elapse: only then is the period needed."""
    specs: list[str] = []
    for state in states.values():
        if state.timer is not None and state.timer.next_elapse_at is None:
            specs += state.timer.calendar
    return sorted(set(specs))
