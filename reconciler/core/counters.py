"""What the monitor carries from one look to the next: counters and open findings (pure).

The monitor looks at a unit every pass and on every watch event (an ``Observation``) and
folds each look into the unit's persistent ``Counters`` with ``update_counters``, which also
returns the ``Event`` s it inferred. Passes can be minutes apart, so the rules lean on what
systemd keeps for us rather than on seeing every transition:

- ``InvocationID`` changes on every start, so a new one means at least one start.
- ``NRestarts`` counts automatic (``Restart=``) restarts since the last start that was not
  automatic; that start (``systemctl start/restart``, a timer, a dependency, a boot) resets
  it. A new run counts as a *manual* start when the last look saw the unit dead for good
  (inactive/failed, no restart pending), when ``NRestarts`` went down, or when it did not
  grow although the unit was running; the automatic restarts since are then ``NRestarts``
  itself, otherwise its growth (at least one after a look that saw a restart pending).
- Every run that ended ends in a ``stop`` or a ``crash``. A **crash** is a run that ended on
  its own: with a non-success ``Result``, or followed by an automatic restart (systemd only
  restarts runs that ended by themselves). A successful oneshot or a requested stop is a
  ``stop``. Exit details come from ``ExecMainCode``/``ExecMainStatus`` (CLD_EXITED: exit
  code; CLD_KILLED/CLD_DUMPED: signal).
- Runs nobody saw (only known from ``NRestarts``) are spread evenly over the gap between the
  two looks and marked ``estimated``: counts and rates stay right, their times are guesses.
- The first look at a unit is a baseline and counts nothing. A look older than the last one
  (a stale read racing a newer one, up to ``STALE_SEC``) is ignored; a larger step back is
  taken as a clock change and accepted. Feeding the same look twice changes nothing. A look
  at the run before the last one seen is ignored too, whatever its time: a run never comes
  back, so it is a late delivery (the watch receives a signal after a sync read the next
  run), and counting it as a new run would count that run and the next one again.

Findings (made by ``patterns``) are carried the same way: ``reconcile_findings`` folds a new
result into the open ones, so a finding is alerted when it opens and when it resolves, not
on every pass. Every type here is a flat dataclass that ``to_dict``/``from_dict`` maps to a
JSON object or an SQLite row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Self

from reconciler.model import LiveUnit

CLD_EXITED, CLD_KILLED, CLD_DUMPED = 1, 2, 3
STALE_SEC = 300.0
# A look of an ended run "running" this soon after its end is a late signal or a read torn by
# the restart (a run never runs again under its own InvocationID); after it, such a look is
# believed (a torn read that ended a run which in fact kept running is then mended).
REVIVE_SEC = 5.0
_RUNNING = frozenset({"active", "activating", "deactivating", "reloading", "refreshing"})
_SIGNALS = (  # Linux numbering (x86, arm, most others); index = signal number
    "", "SIGHUP", "SIGINT", "SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS", "SIGFPE",
    "SIGKILL", "SIGUSR1", "SIGSEGV", "SIGUSR2", "SIGPIPE", "SIGALRM", "SIGTERM", "SIGSTKFLT",
    "SIGCHLD", "SIGCONT", "SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGURG", "SIGXCPU",
    "SIGXFSZ", "SIGVTALRM", "SIGPROF", "SIGWINCH", "SIGIO", "SIGPWR", "SIGSYS",
)  # fmt: skip
_SIGRTMIN, _SIGRTMAX = 34, 64  # as glibc and systemd name them
Evidence = dict[str, float | int | str]


def signal_name(number: int) -> str:
    """``9`` -> ``"SIGKILL"``, ``37`` -> ``"SIGRTMIN+3"``; unknown numbers -> ``"SIG<n>"``."""
    if 0 < number < len(_SIGNALS):
        return _SIGNALS[number]
    if _SIGRTMIN <= number <= _SIGRTMAX:
        return "SIGRTMIN" if number == _SIGRTMIN else f"SIGRTMIN+{number - _SIGRTMIN}"
    return f"SIG{number}"


def is_running(active_state: str, sub_state: str) -> bool:
    """A run is in progress (a unit waiting for its automatic restart is not running)."""
    return active_state in _RUNNING and "auto-restart" not in sub_state


class Record:
    """Plain rows: ``to_dict`` gives JSON/SQLite-ready values, ``from_dict`` reads them back."""

    __slots__ = ()  # subclasses are slotted dataclasses: one per unit in the watch daemon
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """The fields as they are (no deep copy, unlike ``to_dict``): for flat records."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Unknown keys are ignored and missing ones take their defaults (older rows load)."""
        names = cls.__dataclass_fields__
        if names.keys() >= data.keys():  # the usual row: no filtered copy
            return cls(**data)
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True, slots=True)
class Observation(Record):
    """One look at a unit: what ``LiveUnit`` says plus when it was read."""

    unit: str
    at: float
    active_state: str
    sub_state: str
    result: str
    n_restarts: int
    invocation_id: str
    exec_main_code: int = 0
    exec_main_status: int = 0
    memory_current: int | None = None
    exec_main_exit_at: float | None = None  # ExecMainExitTimestamp in seconds; None if unset

    @classmethod
    def from_live(
        cls,
        live: LiveUnit,
        at: float,
        exec_main_exit_at: float | None = None,
        *,
        result: str | None = None,
        memory: int | None = None,
    ) -> Observation:
        """A look at ``live``; ``result`` and ``memory`` in place of systemd's (the pass's
        effective result, memory measured by the cgroup): one construction, not a
        ``replace`` after it (10,000 units: ~0.1 s)."""
        return cls(
            unit=live.name,
            at=at,
            active_state=live.active_state,
            sub_state=live.sub_state,
            result=live.result if result is None else result,
            n_restarts=live.n_restarts,
            invocation_id=live.invocation_id,
            exec_main_code=live.exec_main_code,
            exec_main_status=live.exec_main_status,
            memory_current=live.memory_current if memory is None else memory,
            exec_main_exit_at=exec_main_exit_at or None,
        )

    @property
    def running(self) -> bool:
        return is_running(self.active_state, self.sub_state)

    @property
    def failed(self) -> bool:
        """The run seen here ended on its own (only meaningful when not ``running``)."""
        return (
            self.active_state == "failed"
            or self.result not in ("", "success")
            or "auto-restart" in self.sub_state
        )

    @property
    def exit(self) -> tuple[int | None, str | None]:
        """(exit code, signal name) of the main process, (None, None) when unknown."""
        if self.exec_main_code == CLD_EXITED:
            return self.exec_main_status, None
        if self.exec_main_code in (CLD_KILLED, CLD_DUMPED):
            return None, signal_name(self.exec_main_status)
        return None, None


@dataclass(frozen=True, slots=True)
class Event(Record):
    unit: str
    at: float
    kind: str  # start | stop | crash
    exit_code: int | None = None
    signal: str | None = None
    estimated: bool = False  # inferred from NRestarts: the count is sure, the time is not
    by: str = ""  # who started or stopped it: systemd | sync | timer | operator ("": itself)


@dataclass(frozen=True, slots=True)
class Counters(Record):
    """Per-unit totals kept across monitor runs and reboots, plus what the next look needs."""

    unit: str
    starts: int = 0
    stops: int = 0
    crashes: int = 0
    last_exit_code: int | None = None  # of the last crash (None: unknown, or a signal)
    last_signal: str | None = None  # e.g. "SIGKILL"
    last_result: str | None = None  # systemd's Result of the last crash, e.g. "watchdog"
    last_state: str = ""  # ActiveState at the last look
    last_change_at: float | None = None
    last_invocation_id: str = ""
    last_n_restarts: int = 0
    last_sub_state: str = ""
    last_seen_at: float | None = None
    prev_invocation_id: str = ""  # the run before the last one: a look at it is late
    # When the reconciler last started, restarted or stopped the unit (a sync, a rollback):
    # what the unit did before is the old incarnation's, not an incident now (patterns).
    acted_at: float | None = None
    # The last look's per-run properties as read (seen_result None: none recorded). systemd
    # changes them only with the unit's state or run, so a pass that finds the same run in
    # the same settled state reuses them instead of asking again (``LiveUnit`` ``last``).
    seen_result: str | None = None
    seen_n_restarts: int = 0
    seen_exec_main_code: int = 0
    seen_exec_main_status: int = 0


def never_ran(unit: str, at: float) -> Counters:
    """Counters of a unit the reconciler is about to start for the first time: a look at it
    "inactive, never ran" at ``at``, so the first real look counts every run since (its
    ``NRestarts`` included) instead of being a baseline that counts nothing."""
    return Counters(
        unit=unit,
        last_state="inactive",
        last_sub_state="dead",
        last_change_at=at,
        last_seen_at=at,
        acted_at=at,
    )


def update_counters(prev: Counters | None, obs: Observation) -> tuple[Counters, list[Event]]:
    """Fold one observation into the counters; returns them and the events inferred."""
    if prev is None:
        code, sig = (None, None) if obs.running else obs.exit
        return Counters(
            unit=obs.unit,
            last_exit_code=code,
            last_signal=sig,
            last_state=obs.active_state,
            last_change_at=obs.at,
            last_invocation_id=obs.invocation_id,
            last_n_restarts=obs.n_restarts,
            last_sub_state=obs.sub_state,
            last_seen_at=obs.at,
            **_seen(obs),
        ), []
    if prev.unit != obs.unit:
        raise ValueError(f"counters of '{prev.unit}' fed an observation of '{obs.unit}'")
    if _late(prev, obs):
        return prev, []
    if _steady(prev, obs):  # what _fold answers then, without inferring (10,000 a pass)
        return replace(prev, last_seen_at=obs.at), []
    return _fold(prev, obs)


def steady_look(prev: Counters | None, obs: Observation) -> bool:
    """Whether ``update_counters(prev, obs)`` moves ``last_seen_at`` alone: what a steady
    unit's look does (10,000 a pass). The caller then writes that field alone, without
    building new counters."""
    return (
        prev is not None
        and prev.unit == obs.unit
        and prev.last_seen_at != obs.at
        and not _late(prev, obs)
        and _steady(prev, obs)
    )


def _late(prev: Counters, obs: Observation) -> bool:
    """A look older than the last one (a stale read, up to ``STALE_SEC``), at the run
    before the last one seen, or at the last run running again just after it was seen
    ending (``REVIVE_SEC``): ``update_counters`` leaves the counters as they are."""
    if prev.last_seen_at is not None and 0 < prev.last_seen_at - obs.at <= STALE_SEC:
        return True
    if not obs.invocation_id:
        return False
    if obs.invocation_id == prev.prev_invocation_id:
        return True
    return (  # the last run, seen ended, running again just after: see REVIVE_SEC
        obs.invocation_id == prev.last_invocation_id
        and obs.running
        and not is_running(prev.last_state, prev.last_sub_state)
        and prev.last_change_at is not None
        and obs.at - prev.last_change_at <= REVIVE_SEC
    )


def _steady(prev: Counters, obs: Observation) -> bool:
    """The look shows what the last one did: the same run in the same state, with the same
    per-run properties (``NRestarts`` not below the counted one). Nothing happened, and
    nothing but ``last_seen_at`` moves."""
    return (
        (not obs.invocation_id or obs.invocation_id == prev.last_invocation_id)
        and obs.active_state == prev.last_state
        and obs.sub_state == prev.last_sub_state
        and obs.result == prev.seen_result
        and obs.n_restarts == prev.seen_n_restarts
        and obs.n_restarts >= prev.last_n_restarts
        and obs.exec_main_code == prev.seen_exec_main_code
        and obs.exec_main_status == prev.seen_exec_main_status
    )


def _fold(prev: Counters, obs: Observation) -> tuple[Counters, list[Event]]:
    """``update_counters`` past its early answers: the events inferred and folded in."""
    new_run = bool(obs.invocation_id) and obs.invocation_id != prev.last_invocation_id
    events = _infer_events(prev, obs, new_run)
    crashes = [e for e in events if e.kind == "crash"]
    # A crash's Result is never "success" (nor ""): such a look shows the next run's reset
    # properties (the watch merged its Service signal before the Unit's left auto-restart).
    seen_end = bool(crashes) and crashes[-1].at == _end_at(prev, obs) and not obs.running
    seen_end = seen_end and obs.result not in ("", "success")
    moved = events or (obs.active_state, obs.sub_state) != (prev.last_state, prev.last_sub_state)
    keep_n = not new_run and obs.n_restarts >= prev.last_n_restarts  # see _infer_events
    return replace(
        prev,
        starts=prev.starts + sum(e.kind == "start" for e in events),
        stops=prev.stops + sum(e.kind == "stop" for e in events),
        crashes=prev.crashes + sum(e.kind == "crash" for e in events),
        # The last crash, always: unknown (None) rather than an older crash's exit.
        last_exit_code=crashes[-1].exit_code if crashes else prev.last_exit_code,
        last_signal=crashes[-1].signal if crashes else prev.last_signal,
        last_result=(obs.result if seen_end else None) if crashes else prev.last_result,
        last_state=obs.active_state,
        last_sub_state=obs.sub_state,
        last_change_at=(events[-1].at if events else obs.at) if moved else prev.last_change_at,
        last_invocation_id=obs.invocation_id or prev.last_invocation_id,
        prev_invocation_id=prev.last_invocation_id if new_run else prev.prev_invocation_id,
        last_n_restarts=prev.last_n_restarts if keep_n else obs.n_restarts,
        last_seen_at=obs.at,
        **_seen(obs),
    ), events


def _seen(obs: Observation) -> dict[str, Any]:
    return {
        "seen_result": obs.result,
        "seen_n_restarts": obs.n_restarts,
        "seen_exec_main_code": obs.exec_main_code,
        "seen_exec_main_status": obs.exec_main_status,
    }


def last_look(counters: Counters) -> LiveUnit | None:
    """The unit as the last look saw it (states, run and per-run properties), for
    ``Systemd.read_units``' ``last``; None when that look's properties were not recorded."""
    if counters.seen_result is None:
        return None
    return LiveUnit(
        counters.unit,
        "loaded",
        counters.last_state,
        counters.last_sub_state,
        result=counters.seen_result,
        n_restarts=counters.seen_n_restarts,
        invocation_id=counters.last_invocation_id,
        exec_main_code=counters.seen_exec_main_code,
        exec_main_status=counters.seen_exec_main_status,
    )


def _end_at(prev: Counters, obs: Observation) -> float:
    """When the run seen ended: ``ExecMainExitTimestamp`` within the gap, else the look."""
    lo = prev.last_seen_at if prev.last_seen_at is not None else obs.at
    if obs.exec_main_exit_at is None:
        return obs.at
    return min(max(obs.exec_main_exit_at, min(lo, obs.at)), obs.at)


@dataclass(frozen=True)
class Exit(Record):
    """How one run's main process ended, as systemd logged it (``Main process exited``,
    ``Failed with result``): what a look misses once the unit runs again."""

    at: float
    exit_code: int | None = None
    signal: str | None = None
    result: str = ""  # systemd's Result, e.g. "watchdog"; "" when not logged


def unknown_exits(events: Sequence[Event]) -> int:
    """How many crashes in ``events`` say neither an exit code nor a signal."""
    return sum(e.kind == "crash" and e.exit_code is None and e.signal is None for e in events)


def apply_exits(
    counters: Counters, events: Sequence[Event], exits: Sequence[Exit]
) -> tuple[Counters, list[Event]]:
    """Crashes of unseen runs get their exit from systemd's log (``exits``, oldest first,
    covering the gap the events fill; matched from the latest back), so every crash says
    how it ended and ``last_exit_code``/``last_signal``/``last_result`` the last one's."""
    out = list(events)
    crashes = [i for i, e in enumerate(out) if e.kind == "crash"]
    filled: set[int] = set()
    for i, ex in zip(reversed(crashes), reversed(exits), strict=False):
        if out[i].exit_code is None and out[i].signal is None:
            out[i] = replace(out[i], exit_code=ex.exit_code, signal=ex.signal)
            filled.add(i)
    if not crashes or crashes[-1] not in filled:
        return counters, out
    last = exits[-1]
    return replace(
        counters,
        last_exit_code=last.exit_code,
        last_signal=last.signal,
        last_result=last.result or counters.last_result,
    ), out


def _infer_events(prev: Counters, obs: Observation, new_run: bool) -> list[Event]:
    """The starts and ends between the last look and this one, oldest first.

    ``last_n_restarts`` only moves with a new invocation (or down, on a visible reset): systemd
    bumps ``NRestarts`` just before the restarted run gets its new ``InvocationID``, and a look
    in between must not use up the increment.
    """
    was_up = is_running(prev.last_state, prev.last_sub_state)
    lo = prev.last_seen_at if prev.last_seen_at is not None else obs.at
    end_at = _end_at(prev, obs)
    code, sig = obs.exit

    def end(kind: str, at: float) -> Event:
        return Event(obs.unit, at, kind, code, sig)

    if not new_run:
        if was_up and not obs.running:
            return [end("crash" if obs.failed else "stop", end_at)]
        if not was_up and obs.running and not obs.invocation_id:  # units without invocations
            return [Event(obs.unit, obs.at, "start")]
        return []
    pending = "auto-restart" in prev.last_sub_state  # the previous run awaited its restart
    if was_up or pending:  # manual when the counter was reset (a running unit: or did not grow)
        n, last = obs.n_restarts, prev.last_n_restarts
        manual = n < last or (was_up and n == last)
    else:  # dead for good: only a job starts it again, and that resets NRestarts
        manual = True
    # A first look taken after the bump but before the new invocation: still one restart.
    automatic = obs.n_restarts if manual else max(obs.n_restarts - prev.last_n_restarts, 1)
    runs = automatic + manual  # new invocations, the one seen now included
    # Start limit: the last automatic restart was refused before it got an invocation.
    refused = obs.result == "start-limit-hit" and not obs.running and runs > 1
    runs -= refused
    unseen: list[str] = []  # kinds of what happened before the run seen now started
    if was_up:
        unseen.append("stop" if manual else "crash")
    unseen += ["start", "crash"] * (runs - 1)  # the starts here are Restart='s
    start_at = obs.at if obs.running else end_at
    events = []
    auto = "systemd"
    if runs == 1:
        events = [Event(obs.unit, start_at, kind) for kind in unseen]
    else:
        lo = min(lo, start_at)
        step = (start_at - lo) / (len(unseen) + 1)
        events = [
            Event(obs.unit, lo + step * (i + 1), kind, estimated=True, by=auto * (kind == "start"))
            for i, kind in enumerate(unseen)
        ]
    events.append(Event(obs.unit, start_at, "start", by="" if manual else auto))
    if not obs.running:
        events.append(end("crash" if obs.failed or refused else "stop", end_at))
    return events


@dataclass(frozen=True)
class Action(Record):
    """A job the reconciler itself asked systemd for (written before the job runs)."""

    unit: str
    at: float
    verb: str  # start | restart | stop
    by: str = "sync"
    done_at: float | None = None  # when the job had finished (None: not known yet)


JOB_SEC = 90.0  # a job whose end was not recorded (yet): what it may cause comes within this
DONE_SLACK_SEC = 1.0  # a signal of the job's own transition may be handled just after its end


def attribute(
    events: Sequence[Event],
    actions: Sequence[Action],
    since: Mapping[str, float | None],
    scheduled: Collection[str] = (),
) -> list[Event]:
    """Name who asked for the starts and stops ``update_counters`` could not attribute.

    Automatic restarts are already ``systemd``'s. Any other start or requested stop of a
    unit is the reconciler's when it recorded a job for that unit before it and the event
    came by the job's end (``done_at``) with no look since that end, or came first after
    the job (no look, ``since``, between them), else its
    timer's (a start of a timer-run service), else an operator's. A stop with an exit code
    is the process ending on its own (a oneshot's success), and a crash is nobody's: both
    keep ``by`` empty.
    """
    out = []
    for e in events:
        if e.by or e.kind == "crash" or (e.kind == "stop" and e.exit_code is not None):
            out.append(e)
            continue
        lo = since.get(e.unit)
        lo = e.at - STALE_SEC if lo is None else lo
        mine = [  # a job precedes what it causes, which comes by its end or after the last look
            a
            for a in actions
            if a.unit == e.unit and a.at <= e.at and (lo < a.at or _by_its_end(e.at, a, lo))
        ]
        if mine:
            by = mine[-1].by
        elif e.kind == "start" and e.unit in scheduled:
            by = "timer"
        else:
            by = "operator"
        out.append(replace(e, by=by))
    return out


def _by_its_end(at: float, action: Action, last_look: float) -> bool:
    """The event came by the job's end (with slack for the signal of its own transition),
    and no look since that end: a look after it has seen all the job did, so what it finds
    changed next (an operator's restart a second after the sync) is someone else's."""
    end = action.done_at or action.at + JOB_SEC
    return at <= end + DONE_SLACK_SEC and last_look < end


@dataclass(frozen=True)
class Finding(Record):
    kind: str
    unit: str
    severity: str  # critical | warning | info
    summary: str  # one line for an operator
    evidence: Evidence = field(default_factory=dict)
    first_seen: float = 0.0  # kept from the open finding by reconcile_findings

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.unit


def reconcile_findings(
    open_: Mapping[tuple[str, str], Finding],
    current: Sequence[Finding],
    units: Collection[str] | None = None,
) -> tuple[list[Finding], list[Finding], list[Finding]]:
    """(opened, still_open, resolved). Still-open findings keep their ``first_seen``.

    ``units``: the units ``current`` was computed for (a watch event looks at one); open
    findings of other units are left alone. None: every open finding was re-evaluated.
    """
    now = {f.key: f for f in current}
    opened = [f for k, f in now.items() if k not in open_]
    still = [replace(f, first_seen=open_[k].first_seen) for k, f in now.items() if k in open_]
    resolved = [f for k, f in open_.items() if k not in now and (units is None or f.unit in units)]
    return opened, still, resolved
