"""The monitor's tables in the state database (talks to SQLite): history, counters, findings.

The tables are created by the monitor's migration in ``sync_store.MIGRATIONS`` (the second
script); this module holds every query on them. It opens its own connection to the state
file (WAL: the sync's connection and the watch daemon's never block readers), so the SQL
stays here and ``sync_store.Store`` stays the sync's; both stand on ``db.Database``.

- ``monitor_observation``: one row per look at a unit (a pass, a watch event). Bounded:
  older than ``observation_days`` or beyond ``observations_per_unit`` rows are pruned
  (at most hourly; the cut is indexed).
- ``monitor_memory``: the memory samples of each unit's run as least-squares sums, one
  row a run and bucket (``Retention.memory_bucket_sec``); pruned a bucket at a time past
  the trend's window.
- ``monitor_event``: starts, stops and crashes from ``counters.update_counters``; kept
  ``event_days`` (patterns look back up to 28 days) and at most ``events_per_unit`` rows.
- ``monitor_action``: the start/restart/stop jobs the reconciler itself ran (written before
  them), so that an event can say it was the sync's and not an operator's; kept as events.
- ``monitor_counters``: one row per unit (``Counters``, a column a field) plus when it was
  first seen.
- ``monitor_finding``: open findings (``resolved_at IS NULL``; one per kind and unit, by a
  partial unique index) and resolved ones, with evidence and impact as JSON.

Counting is safe against two monitors at once (the sync's pass and the watch daemon):
``record`` reads the counters, folds the observations in and writes them back inside one
``BEGIN IMMEDIATE`` transaction, and ``update_counters`` ignores a look older than the last.
"""

from __future__ import annotations

import json
import operator
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from reconciler.core.counters import Action, Counters, Event, Observation, never_ran
from reconciler.core.patterns import Finding, MemoryRun
from reconciler.errors import StateError
from reconciler.store import db

_OBS_COLUMNS = (
    "unit, at, active_state, sub_state, result, n_restarts, invocation_id, exec_main_code,"
    " exec_main_status, memory_current, exec_main_exit_at"
)
_FINDING_COLUMNS = (
    "id, kind, unit, severity, summary, evidence, impact, first_seen, last_seen, resolved_at,"
    " bundle"
)
PRUNE_EVERY_SEC = 3600.0


@dataclass(frozen=True)
class Retention:
    observation_days: float = 7.0
    observations_per_unit: int = 2000
    event_days: float = 35.0
    events_per_unit: int = 5000
    resolved_days: float = 90.0
    memory_sample_sec: float = 6 * 3600.0  # memory samples: the trend's window

    @property
    def memory_bucket_sec(self) -> float:
        """The span of one bucket of memory sums: a sixth of the trend's window (a window
        read back reaches at most one bucket further back than asked)."""
        return max(self.memory_sample_sec / 6, 1.0)


@dataclass(frozen=True)
class Impacted:
    unit: str
    distance: int
    high: bool  # a container runtime: everything on it goes down too

    def to_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "distance": self.distance, "high_impact": self.high}


@dataclass(frozen=True)
class StoredFinding:
    """A finding with its life in the store."""

    finding: Finding
    last_seen: float
    id: int = 0
    impact: tuple[Impacted, ...] = ()
    resolved_at: float | None = None
    bundle: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.finding.key

    def to_dict(self) -> dict[str, Any]:
        f = self.finding
        return {
            "id": self.id,
            "kind": f.kind,
            "unit": f.unit,
            "severity": f.severity,
            "summary": f.summary,
            "evidence": dict(f.evidence),
            "first_seen": f.first_seen,
            "last_seen": self.last_seen,
            "resolved_at": self.resolved_at,
            "impact": [i.to_dict() for i in self.impact],
            "bundle": self.bundle,
        }


SQL_FILTER_MAX = 500  # units asked for: up to this many filtered by SQLite, more in Python


_COUNTER_FIELDS = tuple(f.name for f in fields(Counters))  # the columns: Counters(*row)
_COUNTER_COLUMNS = ", ".join(_COUNTER_FIELDS)
_COUNTER_MARKS = ", ".join("?" * len(_COUNTER_FIELDS))
_COUNTER_SET = ", ".join(f"{n} = excluded.{n}" for n in _COUNTER_FIELDS[1:])
_COUNTER_VALUES = operator.attrgetter(*_COUNTER_FIELDS)


def _only(units: set[str]) -> tuple[str, tuple[str, ...]]:
    """`` AND unit IN (...)`` and its parameter for a few units (a watch batch's, a slice of
    a re-read's): their rows only, not every unit's history fetched to be dropped here
    (~1 MB for a moment at 1,000 units, at each batch). Nothing for more (a pass asks for
    all its units: one scan, kept as it was)."""
    if len(units) > SQL_FILTER_MAX:
        return "", ()
    return " AND unit IN (SELECT value FROM json_each(?))", (json.dumps(sorted(units)),)


@dataclass
class Loaded:
    """The history ``detect`` needs, grouped by unit."""

    observations: dict[str, list[Observation]] = field(default_factory=dict)
    events: dict[str, list[Event]] = field(default_factory=dict)
    first_seen: dict[str, float] = field(default_factory=dict)
    memory: dict[tuple[str, str], MemoryRun] = field(default_factory=dict)  # (unit, run)


class FindingStore(db.Database):
    """The monitor's view of the state database. One per thread (sqlite3's rule)."""

    def __init__(
        self, path: Path, *, retention: Retention | None = None, busy_timeout: float = 10.0
    ) -> None:
        self.retention = retention or Retention()
        try:  # the sync store created and migrated the file; the monitor's writes may lag
            conn = db.connect(path, busy_timeout=busy_timeout, synchronous="NORMAL", create=False)
        except sqlite3.Error as exc:
            raise StateError(f"cannot open state database '{path}': {exc}") from None
        super().__init__(path, conn)
        # the last read (unit -> Counters), and the data_version at which it held every
        # unit's row: while no other connection committed and this one wrote no counters,
        # it is served as it is
        self._counters_read: dict[str, Counters] = {}
        self._counters_whole: int | None = None

    def _what(self) -> str:
        return f"monitor tables in '{self.path}'"

    # -- counters ------------------------------------------------------------------------

    def counters(self, units: Iterable[str] | None = None) -> dict[str, Counters]:
        """The counters of ``units`` (None: all). Only their rows are read: the watch asks
        for a batch's few units, not every unit's row at each batch. A whole read is served
        again while the file is unchanged (a pass reads the counters twice: view, record)."""
        version = self.data_version()
        if self._counters_whole == version:
            read = self._counters_read
            if units is None:
                return dict(read)
            return {u: read[u] for u in dict.fromkeys(units) if u in read}
        if units is None:
            rows = self._rows(f"SELECT {_COUNTER_COLUMNS} FROM monitor_counters")
        else:
            rows = self._rows(
                f"SELECT {_COUNTER_COLUMNS} FROM monitor_counters"
                " WHERE unit IN (SELECT value FROM json_each(?))",
                (json.dumps(sorted(set(units))),),
            )
        read = {row[0]: Counters(*row) for row in rows}
        self._counters_read = read
        self._counters_whole = version if units is None else None
        return dict(read)

    def acted(self, units: Iterable[str]) -> dict[str, float | None]:
        """``Counters.acted_at`` of ``units``: the field alone, read by SQLite."""
        wanted = set(units)
        only, names = _only(wanted)
        rows = self._rows(
            f"SELECT unit, acted_at FROM monitor_counters WHERE 1{only}",
            names,
        )
        return {u: at for u, at in rows if u in wanted}

    def save_counters(
        self, counters: Iterable[Counters], now: float, *, seen: Mapping[str, float] | None = None
    ) -> None:
        """Write ``counters`` whole, and ``seen`` units' ``last_seen_at`` alone (stored
        units: only that field moved)."""
        self._counters_whole = None  # this connection's own writes leave data_version as is
        with self.transaction(), self._errors("write counters to"):
            self._conn.executemany(
                f"INSERT INTO monitor_counters (first_seen, {_COUNTER_COLUMNS})"
                f" VALUES (?, {_COUNTER_MARKS}) ON CONFLICT (unit) DO UPDATE SET {_COUNTER_SET}",
                ((now, *_COUNTER_VALUES(c)) for c in counters),
            )
            self._conn.executemany(
                "UPDATE monitor_counters SET last_seen_at = ? WHERE unit = ?",
                ((at, unit) for unit, at in (seen or {}).items()),
            )

    def mark_acted(self, units: Iterable[str], at: float) -> None:
        """The reconciler starts, restarts or stops ``units`` at ``at`` (``Counters.acted_at``);
        a unit never looked at gets a never-ran look, so its first run is counted."""
        names = sorted(set(units))
        if not names:
            return
        with self.transaction():
            known = self.counters(names)
            self.save_counters(
                (replace(known[n], acted_at=at) if n in known else never_ran(n, at) for n in names),
                at,
            )

    # -- observations and events ---------------------------------------------------------

    def add(
        self,
        observations: Sequence[Observation],
        events: Sequence[Event],
        samples: Sequence[Observation] = (),
    ) -> None:
        """Store looks and events, and the memory samples of both the looks and ``samples``
        (looks that said nothing else) added to their run's bucket."""
        width = self.retention.memory_bucket_sec
        with self.transaction(), self._errors("record observations in"):
            self._conn.executemany(
                f"INSERT INTO monitor_observation ({_OBS_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    (o.unit, o.at, o.active_state, o.sub_state, o.result, o.n_restarts)
                    + (o.invocation_id, o.exec_main_code, o.exec_main_status)
                    + (o.memory_current, o.exec_main_exit_at)
                    for o in observations
                ),
            )
            self._conn.executemany(
                "INSERT INTO monitor_memory VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (unit, run, bucket) DO UPDATE SET"
                " samples = samples + 1, first_at = min(first_at, excluded.first_at),"
                " last_at = max(last_at, excluded.last_at), sx = sx + excluded.sx,"
                " sy = sy + excluded.sy, sxx = sxx + excluded.sxx, syy = syy + excluded.syy,"
                " sxy = sxy + excluded.sxy",
                (
                    _memory_row(o, o.memory_current, width)
                    for group in (observations, samples)
                    for o in group
                    if o.memory_current is not None
                ),
            )
            self._conn.executemany(
                "INSERT INTO monitor_event (unit, at, kind, exit_code, signal, estimated, actor)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    (e.unit, e.at, e.kind, e.exit_code, e.signal, int(e.estimated), e.by)
                    for e in events
                ),
            )
            for unit in {e.unit for e in events}:  # a crash loop can infer thousands
                self._conn.execute(
                    "DELETE FROM monitor_event WHERE unit = ? AND id <= (SELECT id FROM"
                    " monitor_event WHERE unit = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (unit, unit, self.retention.events_per_unit),
                )

    def set_exits(self, crashes: Sequence[Event]) -> None:
        """Crashes stored without an exit get it (the watch reads unseen runs' exits later)."""
        with self.transaction(), self._errors("record exits in"):
            self._conn.executemany(
                "UPDATE monitor_event SET exit_code = ?, signal = ? WHERE unit = ? AND at = ?"
                " AND kind = 'crash' AND exit_code IS NULL AND signal IS NULL",
                ((e.exit_code, e.signal, e.unit, e.at) for e in crashes),
            )

    def events(self, since: float, unit: str | None = None) -> list[Event]:
        """The kept starts, stops and crashes since ``since`` (of ``unit``), oldest first."""
        params: tuple[object, ...] = (since,) if unit is None else (since, unit)
        where = "at > ?" if unit is None else "at > ? AND unit = ?"
        return [
            Event(u, at, kind, code, sig, bool(est), by)
            for u, at, kind, code, sig, est, by in self._rows(
                "SELECT unit, at, kind, exit_code, signal, estimated, actor FROM monitor_event"
                f" WHERE {where} ORDER BY at, id",
                params,
            )
        ]

    def add_actions(self, actions: Sequence[Action]) -> None:
        with self.transaction(), self._errors("record actions in"):
            self._conn.executemany(
                "INSERT INTO monitor_action (unit, at, verb, actor) VALUES (?, ?, ?, ?)",
                ((a.unit, a.at, a.verb, a.by) for a in actions),
            )

    def finish_actions(self, at: float, done_at: float) -> None:
        """The jobs recorded at ``at`` (one apply's) were done by ``done_at``."""
        with self.transaction(), self._errors("record actions in"):
            self._conn.execute(
                "UPDATE monitor_action SET done_at = ? WHERE at = ? AND done_at IS NULL",
                (done_at, at),
            )

    def actions(self, units: Iterable[str], since: float) -> list[Action]:
        """The reconciler's own jobs on ``units`` since ``since``, oldest first."""
        wanted = set(units)
        rows = self._rows(
            "SELECT unit, at, verb, actor, done_at FROM monitor_action WHERE at > ?"
            " ORDER BY at, id",
            (since,),
        )
        return [Action(*row) for row in rows if row[0] in wanted]

    def reset_counters(self, units: Iterable[str] | None) -> list[str]:
        """Zero the totals and last exit of ``units`` (None: all); returns the units reset.

        What the next look needs (last run, state, ``NRestarts``) is kept: nothing that
        happened before the reset is counted again after it. The event log is history and
        stays.
        """
        with self.transaction():
            current = self.counters(units)
            reset = [
                replace(
                    c,
                    starts=0,
                    stops=0,
                    crashes=0,
                    last_exit_code=None,
                    last_signal=None,
                    last_result=None,  # all three: LAST EXIT showed the old crash's Result
                )
                for c in current.values()
            ]
            self.save_counters(reset, 0.0)
        return sorted(current)

    def load(
        self,
        units: Sequence[str],
        *,
        observations_since: float,
        memory_since: float,
        events_since: float,
    ) -> Loaded:
        """Observations and events of ``units`` in their windows, oldest first.

        Looks since ``observations_since`` (flapping, start limit), and the memory samples
        since ``memory_since`` (a longer window, for the memory trend) summed by run from
        the buckets that reach into it (the oldest may hold samples up to one bucket
        earlier), x in seconds after ``memory_since``.
        """
        wanted = set(units)
        only, names = _only(wanted)
        out = Loaded()
        for row in self._rows(
            f"SELECT {_OBS_COLUMNS} FROM monitor_observation WHERE at > ?{only} ORDER BY at, id",
            (observations_since, *names),
        ):
            if row[0] in wanted:
                out.observations.setdefault(row[0], []).append(Observation(*row))
        for unit, run, *sums in self._rows(
            # a bucket's x moved by d (its start after memory_since): x + d, (x + d)^2, (x + d)y
            "SELECT unit, run, sum(samples), min(first_at), max(last_at),"
            " sum(sx + samples * d), sum(sy), sum(sxx + 2 * d * sx + samples * d * d),"
            " sum(syy), sum(sxy + d * sy) FROM (SELECT *, bucket - ? AS d FROM monitor_memory"
            f" WHERE bucket > ?{only}) GROUP BY unit, run",
            (memory_since, memory_since - self.retention.memory_bucket_sec, *names),
        ):
            if unit in wanted:
                out.memory[unit, run] = MemoryRun(*sums)
        for unit, at, kind, code, sig, est, by in self._rows(
            "SELECT unit, at, kind, exit_code, signal, estimated, actor FROM monitor_event"
            f" WHERE at > ?{only} ORDER BY at, id",
            (events_since, *names),
        ):
            if unit in wanted:
                event = Event(unit, at, kind, code, sig, bool(est), by)
                out.events.setdefault(unit, []).append(event)
        out.first_seen = {
            u: float(t)
            for u, t in self._rows(
                f"SELECT unit, first_seen FROM monitor_counters WHERE 1{only}", names
            )
            if u in wanted
        }
        return out

    def prune(self, now: float, *, force: bool = False) -> bool:
        """Apply retention (at most every PRUNE_EVERY_SEC unless forced); True if it ran."""
        r = self.retention
        last = self.kv_get("pruned_at")
        if not force and last is not None and now - float(last) < PRUNE_EVERY_SEC:
            return False
        with self.transaction(), self._errors("prune"):
            self._conn.execute(
                "DELETE FROM monitor_observation WHERE at < ?", (now - r.observation_days * 86400,)
            )
            self._conn.execute(
                "DELETE FROM monitor_memory WHERE bucket <= ?",
                (now - r.memory_sample_sec - r.memory_bucket_sec,),
            )
            for table in ("monitor_event", "monitor_action"):
                self._conn.execute(
                    f"DELETE FROM {table} WHERE at < ?", (now - r.event_days * 86400,)
                )
            over = self._conn.execute(
                "SELECT unit FROM monitor_observation GROUP BY unit HAVING count(*) > ?",
                (r.observations_per_unit,),
            ).fetchall()
            for (unit,) in over:
                self._conn.execute(
                    "DELETE FROM monitor_observation WHERE unit = ? AND at <= (SELECT at FROM"
                    " monitor_observation WHERE unit = ? ORDER BY at DESC LIMIT 1 OFFSET ?)",
                    (unit, unit, r.observations_per_unit),
                )
            self._conn.execute(
                "DELETE FROM monitor_finding WHERE resolved_at < ?",
                (now - r.resolved_days * 86400,),
            )
            self.kv_set("pruned_at", repr(now))
        return True

    # -- findings ------------------------------------------------------------------------

    def open_findings(self) -> dict[tuple[str, str], StoredFinding]:
        rows = self._rows(
            f"SELECT {_FINDING_COLUMNS} FROM monitor_finding WHERE resolved_at IS NULL"
            " ORDER BY first_seen, id"
        )
        found = (_stored(r) for r in rows)
        return {f.key: f for f in found}

    def resolved_findings(self, limit: int = 50) -> list[StoredFinding]:
        rows = self._rows(
            f"SELECT {_FINDING_COLUMNS} FROM monitor_finding WHERE resolved_at IS NOT NULL"
            " ORDER BY resolved_at DESC, id DESC LIMIT ?",
            (limit,),
        )
        return [_stored(r) for r in rows]

    def open(self, finding: Finding, impact: Sequence[Impacted], now: float) -> StoredFinding:
        with self.transaction(), self._errors("record finding in"):
            cur = self._conn.execute(
                "INSERT INTO monitor_finding (kind, unit, severity, summary, evidence, impact,"
                " first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (finding.kind, finding.unit, finding.severity, finding.summary)
                + (json.dumps(finding.evidence, sort_keys=True), _impact_json(impact))
                + (finding.first_seen or now, now),
            )
        first = finding.first_seen or now
        return StoredFinding(
            replace(finding, first_seen=first), now, int(cur.lastrowid or 0), tuple(impact)
        )

    def update(
        self, stored: StoredFinding, finding: Finding, impact: Sequence[Impacted] | None, now: float
    ) -> StoredFinding:
        """A finding still open: new evidence and summary, same first_seen."""
        impact_t = stored.impact if impact is None else tuple(impact)
        with self.transaction(), self._errors("update finding in"):
            self._conn.execute(
                "UPDATE monitor_finding SET severity = ?, summary = ?, evidence = ?, impact = ?,"
                " last_seen = ? WHERE id = ?",
                (finding.severity, finding.summary, json.dumps(finding.evidence, sort_keys=True))
                + (_impact_json(impact_t), now, stored.id),
            )
        kept = replace(finding, first_seen=stored.finding.first_seen)
        return replace(stored, finding=kept, last_seen=now, impact=impact_t)

    def resolve(self, stored: StoredFinding, now: float) -> StoredFinding:
        with self.transaction(), self._errors("resolve finding in"):
            self._conn.execute(
                "UPDATE monitor_finding SET resolved_at = ? WHERE id = ?", (now, stored.id)
            )
        return replace(stored, resolved_at=now)

    def set_bundle(self, finding_id: int, bundle: str) -> None:
        with self.transaction(), self._errors("record bundle in"):
            self._conn.execute(
                "UPDATE monitor_finding SET bundle = ? WHERE id = ?", (bundle, finding_id)
            )

    def data_version(self) -> int:
        """Changes when another connection commits (``PRAGMA data_version``): how a
        long-running reader (the watch daemon) notices a sync's writes for microseconds."""
        return int(self._rows("PRAGMA data_version")[0][0])

    # -- small values --------------------------------------------------------------------

    def kv_get(self, key: str) -> str | None:
        rows = self._rows("SELECT value FROM monitor_kv WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def kv_set(self, key: str, value: str) -> None:
        with self.transaction(), self._errors("write to"):
            self._conn.execute(
                "INSERT OR REPLACE INTO monitor_kv (key, value) VALUES (?, ?)", (key, value)
            )


def _memory_row(o: Observation, memory: int, width: float) -> tuple[object, ...]:
    """One sample as ``monitor_memory``'s row of its run and bucket: x after the bucket's
    start, y in bytes (REAL: bytes squared overflow SQLite's integers)."""
    bucket = (o.at // width) * width
    x, y = o.at - bucket, float(memory)
    return (o.unit, o.invocation_id, bucket, o.at, o.at, x, y, x * x, y * y, x * y)


def _impact_json(impact: Iterable[Impacted]) -> str:
    return json.dumps([i.to_dict() for i in impact])


def _stored(row: Sequence[Any]) -> StoredFinding:
    fid, kind, unit, severity, summary, evidence, impact, first, last, resolved, bundle = row
    finding = Finding(kind, unit, severity, summary, json.loads(evidence), first)
    hits = tuple(
        Impacted(i["unit"], int(i["distance"]), bool(i["high_impact"])) for i in json.loads(impact)
    )
    return StoredFinding(finding, last, fid, hits, resolved, bundle)
