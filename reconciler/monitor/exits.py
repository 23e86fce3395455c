"""Unseen runs' exits, filled in after the fact (the watch daemon's way of reading them).

A look that infers crashes of runs no look saw has no exit code for them: systemd's journal
has it (``live.read_exits``). The pass and the sync read it at once, in their ``record``.
The watch daemon cannot afford that: one ``journalctl`` per batch (and a wait for journald
to store what PID 1 just sent) took its replayed handling from 30,000 to 2,200 signals/s.
So it records the crashes at once (counted, findings evaluated) and keeps their gaps here;
:meth:`PendingExits.settle` reads the journal once for all of them (every second, before a
finding of the unit opens, and at the end) and fills the stored events and counters in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from reconciler.core.counters import Counters, Event, Exit, apply_exits, unknown_exits
from reconciler.store.finding_store import FindingStore

Run = dict[str, object]  # one run's end (``live.read_exit_runs``)
# (units, since, until) -> {unit: its exits, oldest first}
ExitReader = Callable[[Collection[str], float, float], Mapping[str, Sequence[Exit]]]
EXITS_RETRY_SEC = 0.3  # journald stores PID 1's messages asynchronously: a moment to do so
GIVE_UP_SEC = 5.0  # a gap the journal still cannot explain this late stays unknown
PENDING_MAX = 10_000  # gaps kept waiting; beyond, settled at once (bounded memory)


@dataclass(frozen=True, slots=True)
class Gap:
    """One look's crashes with no exit: the events it inferred over ``lo``..``until``."""

    unit: str
    lo: float
    until: float
    events: tuple[Event, ...]
    crashes_after: int  # the unit's crash count after this look (is its last crash ours?)


class PendingExits:
    """Gaps waiting for their exits, settled in one journal read."""

    def __init__(self, reader: ExitReader) -> None:
        self.reader = reader
        self.gaps: list[Gap] = []
        self.reads = 0  # journal reads (for the benchmark)

    def add(
        self, unit: str, lo: float, until: float, events: Sequence[Event], crashes: int
    ) -> None:
        self.gaps.append(Gap(unit, lo, until, tuple(events), crashes))

    def units(self) -> set[str]:
        return {g.unit for g in self.gaps}

    def settle(
        self,
        db: FindingStore,
        units: Collection[str] | None = None,
        *,
        wait: bool = False,
        now: Callable[[], float] | None = None,
    ) -> dict[str, Counters]:
        """Read the exits of the gaps (of ``units``; all by default) once and store them.
        A gap the journal cannot explain yet is kept for the next call (``wait``: the
        journal is given ``EXITS_RETRY_SEC`` after the newest look instead), until
        ``GIVE_UP_SEC``. Returns the counters that changed (their last crash's exit)."""
        now = now or (lambda: time.time())  # looked up at each call (a test's clock)
        todo = [g for g in self.gaps if units is None or g.unit in units]
        if not todo:
            return {}
        rest = [g for g in self.gaps if units is not None and g.unit not in units]
        lo, hi = min(g.lo for g in todo), max(g.until for g in todo)
        found = self._read(todo, lo, hi)
        if wait and any(_short(g, found) for g in todo):
            pause = hi + EXITS_RETRY_SEC - now()
            if pause > 0:
                time.sleep(pause)
                found = self._read(todo, lo, hi)
        at = now()
        filled: list[Event] = []
        changed: dict[str, Counters] = {}
        with db.transaction():
            current = db.counters({g.unit for g in todo})
            for g in todo:
                if not wait and _short(g, found) and at - g.until < GIVE_UP_SEC:
                    rest.append(g)  # journald has not stored them yet: next time
                    continue
                exits = [e for e in found.get(g.unit, ()) if g.lo <= e.at <= g.until + 1.0]
                cur = changed.get(g.unit) or current.get(g.unit)
                base = cur if cur is not None and cur.crashes == g.crashes_after else None
                new, events = apply_exits(base or Counters(g.unit), g.events, exits)
                filled += [e for e, old in zip(events, g.events, strict=True) if e != old]
                if base is not None and new != base:
                    changed[g.unit] = new
            db.set_exits(filled)
            if changed:
                db.save_counters(changed.values(), at)
        self.gaps = rest
        forget = getattr(self.reader, "forget", None)  # JournalExits: keep what gaps need
        if callable(forget):
            forget(min((g.lo for g in rest), default=at) - GIVE_UP_SEC)
        return changed

    def _read(self, todo: Sequence[Gap], lo: float, hi: float) -> Mapping[str, Sequence[Exit]]:
        self.reads += 1
        return self.reader({g.unit for g in todo}, lo, hi)


def _short(gap: Gap, found: Mapping[str, Sequence[Exit]]) -> bool:
    """Fewer exits in the journal than the gap's crashes without one."""
    have = sum(gap.lo <= e.at <= gap.until + 1.0 for e in found.get(gap.unit, ()))
    return have < unknown_exits(gap.events)


class JournalExits:
    """An ``ExitReader`` over systemd's journal that reads each entry once: the first call
    reads from the oldest gap's start, later calls only what came after the last entry read
    (``--after-cursor``), for every unit (a unit asked about later finds its exits too).
    Runs are kept only while a gap may need them (``forget``; ``PER_UNIT`` at most a unit):
    a gap older than what is kept has that older stretch read (``--until``)."""

    PER_UNIT = 1024

    def __init__(self, command: Sequence[str]) -> None:
        self.command = list(command)
        self.runs: dict[str, dict[str, Run]] = {}  # unit -> invocation -> its end
        self.since: float | None = None  # kept from here on
        self.cursor: str | None = None

    def __call__(
        self, units: Collection[str], since: float, until: float
    ) -> Mapping[str, Sequence[Exit]]:
        from reconciler.monitor.live import read_exit_runs

        if self.since is None or self.cursor is None:
            runs, self.cursor = read_exit_runs(self.command, None, since=since)
            self.since = since
        else:
            if since < self.since:  # older than what is kept: that stretch only
                old, _ = read_exit_runs(self.command, None, since=since, until=self.since)
                self._keep(old)
                self.since = since
            runs, cursor = read_exit_runs(self.command, None, cursor=self.cursor)
            self.cursor = cursor or self.cursor
        self._keep(runs)
        return _exits_of(self.runs, units, since, until)

    def _keep(self, runs: Mapping[tuple[str, str], Run]) -> None:
        for (unit, inv), run in runs.items():
            kept = self.runs.setdefault(unit, {})
            kept[inv] = {**kept.get(inv, {}), **run}
            if len(kept) > self.PER_UNIT:
                del kept[next(iter(kept))]

    def forget(self, before: float) -> None:
        """Runs that ended before ``before`` are no longer kept (no gap waits for them)."""
        if self.since is None or self.since >= before:
            return
        self.since = before
        for unit in list(self.runs):
            kept = {k: r for k, r in self.runs[unit].items() if float(r["at"]) >= before}  # type: ignore[arg-type]
            if kept:
                self.runs[unit] = kept
            else:
                del self.runs[unit]


def _exits_of(
    runs: Mapping[str, Mapping[str, Run]], units: Collection[str], since: float, until: float
) -> dict[str, list[Exit]]:
    from reconciler.monitor.live import exits_of

    return exits_of(
        {(u, inv): r for u in units for inv, r in runs.get(u, {}).items()}, units, since, until
    )
