"""What the watch daemon keeps per unit and how a signal changes it (pure: no I/O, no clock).

systemd sends every ``PropertiesChanged`` of a unit with the whole set of properties that
emit changes on that interface (``Unit``: ActiveState, SubState, InvocationID, Job, ...;
``Service``: Result, NRestarts, ExecMain*, ...), twice or more per transition. The daemon
folds each one into a :class:`UnitView` (the last ``LiveUnit`` plus what a look needs) with
:func:`merge`, which says whether anything a counter or a pattern looks at moved. Bursts
are coalesced: a drained batch of signals is merged first, then each unit that moved gives
**one** ``Observation`` (:func:`observation`).

A unit between two states is not looked at (:func:`settled`): when a start job runs, systemd
first shows the new ``InvocationID`` with ``inactive``/``dead`` and only then ``active``;
counting that look would count a stop that never happened. The next signal (the job ends)
always comes, and counters are built for gaps anyway (``NRestarts``, ``InvocationID``).

Also here: which units to watch (``--include``/``--exclude``, fnmatch over unit names), the
``[monitor] watch_*`` settings, and the ``STATUS=`` line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import Any

from reconciler.config import Monitor, read_section
from reconciler.core.counters import Observation
from reconciler.core.drift import UnitState, effective_result
from reconciler.core.words import count
from reconciler.model import LiveUnit

# D-Bus property -> LiveUnit field, for the properties a look is made of.
FIELDS: dict[str, str] = {
    "ActiveState": "active_state",
    "SubState": "sub_state",
    "InvocationID": "invocation_id",
    "NRestarts": "n_restarts",
    "Result": "result",
    "ExecMainCode": "exec_main_code",
    "ExecMainStatus": "exec_main_status",
    "LoadState": "load_state",
}
QUEUED = "auto-restart-queued"  # systemd 257: the automatic restart's job is running
WANTED = (*FIELDS, "ExecMainExitTimestamp", "Job")  # what a signal is read down to
WATCH_KEYS = frozenset(
    {
        "watch_include",
        "watch_exclude",
        "watch_reread_sec",
        "watch_memory_sec",
        "watch_pass_sec",
        "watch_queue_size",
    }
)


@dataclass(slots=True)
class UnitView:
    """One watched unit as the signals left it (mutable: updated in place per signal)."""

    live: LiveUnit
    exit_at: float | None = None  # ExecMainExitTimestamp in unix seconds; None: unset
    job: bool = False  # a job is queued or running for the unit
    restart_policy: str | None = None  # Restart= of a service (None: not read)
    dirty: bool = False  # moved since the last look was recorded
    changed_at: float = 0.0  # wall time of the last relevant change
    read_at: float = 0.0  # monotonic time of the last whole read: older signals are stale
    came_from: str = ""  # SubState of the last settled state before this one ("": a read)
    looked_run: str = ""  # InvocationID of the last look taken


def _usec(value: object) -> float | None:
    if not isinstance(value, int) or value <= 0 or value >= 2**64 - 1:
        return None
    return value / 1e6


def _field_value(name: str, value: object) -> object:
    if name == "invocation_id":
        return bytes(value).hex() if isinstance(value, bytes | bytearray) else str(value)
    if name in ("n_restarts", "exec_main_code", "exec_main_status"):
        return int(value) if isinstance(value, int) else 0
    return str(value)


def merge(view: UnitView, changed: Mapping[str, object], at: float) -> bool:
    """Fold one signal's properties into ``view``; True when a look would differ.

    Only the properties of a look are kept (bounded memory whatever systemd sends).
    """
    updates: dict[str, Any] = {}
    live = view.live
    for prop, raw in changed.items():
        name = FIELDS.get(prop)
        if name is not None:
            value = _field_value(name, raw)
            if value != getattr(live, name):
                updates[name] = value
    if "ExecMainExitTimestamp" in changed:
        view.exit_at = _usec(changed["ExecMainExitTimestamp"])
    if ("active_state" in updates or "sub_state" in updates) and settled(view):
        view.came_from = live.sub_state
    job = changed.get("Job")
    if isinstance(job, tuple | list) and job:
        view.job = job[0] != 0
    if not updates:
        return False
    view.live = replace(live, **updates)
    view.dirty = True
    view.changed_at = at
    return True


def limit_possible(view: UnitView) -> bool:
    """Whether a failed state may be the start limit's: failed straight after a run is a
    crash about to be restarted (systemd shows ``failed`` for an instant before
    ``auto-restart``); the limit refuses a restart, so it fails coming from ``auto-restart``
    (257: from ``auto-restart-queued``, the restart job's state, when that was looked at).
    Unknown after a read: the monitor pass's rule (``drift.effective_result``) applies."""
    return view.came_from in ("", "auto-restart", QUEUED)


def restarts_on(policy: str, result: str) -> bool:
    """Whether ``Restart=policy`` restarts a run that ended with ``result`` (the monitor's
    table, through its start-limit rule: a failed unit whose policy restarts it)."""
    live = LiveUnit("x.service", "loaded", "failed", "failed", result=result, n_restarts=1)
    return effective_result(UnitState(live, None, restart_policy=policy)) == "start-limit-hit"


def due(view: UnitView, *, end_of_batch: bool) -> bool:
    """Whether to take a look now: at the end of a batch when the unit moved, and within a
    batch when a new run is first seen settled. One look per run (not per signal) keeps
    what the counters need: a burst that hid a run's first state would make its bumped
    ``NRestarts`` count a restart that a ``stop`` then cancelled."""
    if not view.dirty or not settled(view):
        return False
    return end_of_batch or view.live.invocation_id != view.looked_run


def look(view: UnitView, at: float, memory: int | None = None) -> Observation:
    """:func:`observation`, marking the view looked at."""
    view.dirty = False
    view.looked_run = view.live.invocation_id
    return observation(view, at, memory)


def settled(view: UnitView) -> bool:
    """Not in the middle of a transition; two of systemd's are not looks:

    - a start job shows the new run's ``InvocationID`` with ``inactive``/``dead`` first;
    - a stop or restart job shows ``deactivating`` first: a look there would move the last
      look past the job (a sync's restart then looked like an operator's, ``attribute``);
    - a run that ended and will be restarted shows ``failed`` for an instant before
      ``auto-restart`` (257 names it: ``failed-before-auto-restart``). Counting it as "dead
      for good" would make the next run look manually started, its ``NRestarts`` runs
      unseen ones.

    systemd 257 runs the automatic restart's job in a state of its own, ``activating`` /
    ``auto-restart-queued``, and shows the new run's ``InvocationID`` there (252: with
    ``inactive``/``dead``), then ``running``, or ``failed`` when the start limit refuses it.
    """
    live = view.live
    if view.job and (live.active_state in ("inactive", "deactivating") or live.sub_state == QUEUED):
        return False  # a stop, start or restart job under way: its end is the look
    if live.sub_state == "failed-before-auto-restart":
        return False
    return not (
        live.active_state == "failed"
        and not limit_possible(view)
        and restarts_on(view.restart_policy or "", live.result)
    )


def observation(view: UnitView, at: float, memory: int | None = None) -> Observation:
    """The look at ``view`` (``memory``: only from a fresh read, never a stale sample)."""
    live = view.live
    result = live.result
    if limit_possible(view):
        result = effective_result(UnitState(live, None, restart_policy=view.restart_policy or ""))
    return Observation(
        unit=live.name,
        at=at,
        active_state=live.active_state,
        sub_state=live.sub_state,
        result=result,
        n_restarts=live.n_restarts,
        invocation_id=live.invocation_id,
        exec_main_code=live.exec_main_code,
        exec_main_status=live.exec_main_status,
        memory_current=memory,
        exec_main_exit_at=view.exit_at,
    )


# -- which units ------------------------------------------------------------------------


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


def select(
    desired: Iterable[str],
    loaded: Iterable[str],
    include: Sequence[str],
    exclude: Sequence[str],
) -> list[str]:
    """The units to watch: the desired ones, or with ``include`` those of ``desired`` and
    ``loaded`` matching it; minus those matching ``exclude``. Sorted, unique."""
    pool = {n for n in (*desired, *loaded) if matches(n, include)} if include else set(desired)
    return sorted(n for n in pool if not matches(n, exclude))


# -- settings and status ----------------------------------------------------------------


@dataclass(frozen=True)
class WatchConfig:
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    reread_sec: float = 60.0  # NeedDaemonReload, Restart=: never signalled
    memory_sec: float = 300.0  # a MemoryCurrent sample per running service (never signalled)
    pass_sec: float = 300.0  # a whole monitoring pass, the safety net
    queue_size: int = 4096  # signals waiting to be handled; more are dropped (counted)


def from_section(section: Monitor) -> WatchConfig:
    """The ``watch_*`` keys of ``[monitor]`` (read and checked by ``config``)."""
    return WatchConfig(
        include=section.watch_include,
        exclude=section.watch_exclude,
        reread_sec=section.watch_reread_sec,
        memory_sec=section.watch_memory_sec,
        pass_sec=section.watch_pass_sec,
        queue_size=section.watch_queue_size,
    )


def parse_config(section: Mapping[str, object]) -> WatchConfig:
    """``[monitor]`` from a plain table (the config reader's checks, then ``from_section``)."""
    return from_section(read_section(Monitor, section, "monitor"))


def without_watch_keys(section: Mapping[str, object]) -> dict[str, object]:
    """``[monitor]`` as the monitoring pass reads it."""
    return {k: v for k, v in section.items() if k not in WATCH_KEYS}


def status_line(units: int, findings: int, events: int, dropped: int) -> str:
    """What ``systemctl status reconciler-watch`` shows (``STATUS=``), in plain English."""
    return (
        f"watching {count(units, 'unit')}, {count(findings, 'finding')} open, "
        f"{count(events, 'event')}, {dropped} dropped"
    )


@dataclass
class Throttle:
    """At most one report per ``every`` seconds (drops go to the journal once per interval)."""

    every: float
    last: float | None = None

    def due(self, now: float) -> bool:
        if self.last is not None and now - self.last < self.every:
            return False
        self.last = now
        return True
