"""The state database (talks to SQLite): sync history, owned-file manifest, bad revisions.

One file under the state dir (0600, parent 0700), WAL so readers never wait for the sync.
The schema is versioned with ``PRAGMA user_version`` (``db.migrate``): ``MIGRATIONS[i]``
takes version ``i`` to ``i + 1``. To change the schema, append a script to ``MIGRATIONS``;
never edit or reorder a shipped one. A corrupted file is moved aside to
``<name>.corrupt-<timestamp>`` with a warning and a fresh one is created: never silently
lost. A database locked past ``busy_timeout`` is a ``StateError``, never a hang.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.errors import ReconcilerError, StateError
from reconciler.model import DesiredFile, DesiredUnit
from reconciler.store import db

log = logging.getLogger("reconciler")

# Results that leave the host at the recorded revision.
GOOD_RESULTS = ("applied", "noop", "success")

MIGRATIONS: list[str] = [
    """
    CREATE TABLE sync (
        id INTEGER PRIMARY KEY,
        revision TEXT NOT NULL,
        started_at REAL NOT NULL,
        duration_sec REAL NOT NULL,
        result TEXT NOT NULL,
        actions TEXT NOT NULL,          -- JSON list of one-line descriptions
        error TEXT,
        trigger TEXT NOT NULL,
        summary TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX sync_by_result ON sync (result, id);
    CREATE TABLE owned (name TEXT PRIMARY KEY) WITHOUT ROWID;
    CREATE TABLE bad_revision (
        revision TEXT PRIMARY KEY, reason TEXT NOT NULL, marked_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE suspension (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        reason TEXT NOT NULL, by TEXT NOT NULL, since REAL NOT NULL
    );
    CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    """,
    # 2: the monitor's tables (queries in reconciler/store/finding_store.py)
    """
    CREATE TABLE monitor_observation (
        id INTEGER PRIMARY KEY,
        unit TEXT NOT NULL,
        at REAL NOT NULL,
        active_state TEXT NOT NULL,
        sub_state TEXT NOT NULL,
        result TEXT NOT NULL,
        n_restarts INTEGER NOT NULL,
        invocation_id TEXT NOT NULL,
        exec_main_code INTEGER NOT NULL,
        exec_main_status INTEGER NOT NULL,
        memory_current INTEGER,
        exec_main_exit_at REAL
    );
    CREATE INDEX monitor_observation_by_unit ON monitor_observation (unit, at);
    CREATE INDEX monitor_observation_by_time ON monitor_observation (at);
    CREATE TABLE monitor_event (
        id INTEGER PRIMARY KEY,
        unit TEXT NOT NULL,
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        exit_code INTEGER,
        signal TEXT,
        estimated INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX monitor_event_by_unit ON monitor_event (unit, id);
    CREATE INDEX monitor_event_by_time ON monitor_event (at);
    CREATE TABLE monitor_counters (
        unit TEXT PRIMARY KEY,
        first_seen REAL NOT NULL,
        data TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE monitor_finding (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        unit TEXT NOT NULL,
        severity TEXT NOT NULL,
        summary TEXT NOT NULL,
        evidence TEXT NOT NULL,
        impact TEXT NOT NULL DEFAULT '[]',
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        resolved_at REAL,
        bundle TEXT
    );
    CREATE UNIQUE INDEX monitor_finding_open ON monitor_finding (kind, unit)
        WHERE resolved_at IS NULL;
    CREATE INDEX monitor_finding_by_resolved ON monitor_finding (resolved_at);
    CREATE TABLE monitor_kv (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    """,
    # 3: who started or stopped a unit (``reconciler events``): the jobs the reconciler ran
    """
    ALTER TABLE monitor_event ADD COLUMN actor TEXT NOT NULL DEFAULT '';
    CREATE TABLE monitor_action (
        id INTEGER PRIMARY KEY,
        unit TEXT NOT NULL,
        at REAL NOT NULL,
        verb TEXT NOT NULL,
        actor TEXT NOT NULL
    );
    CREATE INDEX monitor_action_by_unit ON monitor_action (unit, at);
    """,
    # 4: when those jobs were done (an event in between is the job's, whatever looks came)
    """
    ALTER TABLE monitor_action ADD COLUMN done_at REAL;
    """,
    # 5: the memory trend at 10,000 units. Looks kept only for their memory sample (the
    # state unchanged) are marked, so they go once older than the trend's window (one a
    # unit a pass would otherwise fill the table for a week); each run's samples indexed in
    # the order the trend sums them, so SQLite sums them from the index alone
    """
    ALTER TABLE monitor_observation ADD COLUMN memory_only INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX monitor_observation_memory
        ON monitor_observation (unit, invocation_id, at, memory_current)
        WHERE memory_current IS NOT NULL;
    """,
    # 6: the memory trend summed as it is recorded: each run's samples in buckets (an hour
    # here; detect_window_sec / 6 from then on) of least-squares sums, x in seconds after
    # the bucket's start. A pass sums a few buckets a run instead of every sample
    # (10,000 units, 6 h of 5-minute samples: 720,000 rows, 0.4 s). The samples move in;
    # looks kept only for their sample go.
    """
    CREATE TABLE monitor_memory (
        unit TEXT NOT NULL,
        run TEXT NOT NULL,
        bucket REAL NOT NULL,
        samples INTEGER NOT NULL,
        first_at REAL NOT NULL,
        last_at REAL NOT NULL,
        sx REAL NOT NULL,
        sy REAL NOT NULL,
        sxx REAL NOT NULL,
        syy REAL NOT NULL,
        sxy REAL NOT NULL,
        PRIMARY KEY (unit, run, bucket)
    ) WITHOUT ROWID;
    CREATE INDEX monitor_memory_by_bucket ON monitor_memory (bucket);
    INSERT INTO monitor_memory
        SELECT unit, invocation_id, bucket, count(*), min(at), max(at), sum(x), sum(y),
               sum(x * x), sum(y * y), sum(x * y)
        FROM (SELECT unit, invocation_id, at, CAST(at / 3600 AS INTEGER) * 3600.0 AS bucket,
                     at - CAST(at / 3600 AS INTEGER) * 3600.0 AS x,
                     CAST(memory_current AS REAL) AS y
              FROM monitor_observation WHERE memory_current IS NOT NULL)
        GROUP BY unit, invocation_id, bucket;
    DELETE FROM monitor_observation WHERE memory_only;
    DROP INDEX monitor_observation_memory;
    """,
    # 7: the counters as columns, not one JSON text a unit: a pass reads and writes every
    # unit's row (10,000 units: 0.18 s of JSON parsed, and each steady unit's
    # last_seen_at rewritten inside its text)
    """
    CREATE TABLE monitor_counters_7 (
        unit TEXT PRIMARY KEY,
        first_seen REAL NOT NULL,
        starts INTEGER NOT NULL DEFAULT 0,
        stops INTEGER NOT NULL DEFAULT 0,
        crashes INTEGER NOT NULL DEFAULT 0,
        last_exit_code INTEGER,
        last_signal TEXT,
        last_result TEXT,
        last_state TEXT NOT NULL DEFAULT '',
        last_change_at REAL,
        last_invocation_id TEXT NOT NULL DEFAULT '',
        last_n_restarts INTEGER NOT NULL DEFAULT 0,
        last_sub_state TEXT NOT NULL DEFAULT '',
        last_seen_at REAL,
        prev_invocation_id TEXT NOT NULL DEFAULT '',
        acted_at REAL,
        seen_result TEXT,
        seen_n_restarts INTEGER NOT NULL DEFAULT 0,
        seen_exec_main_code INTEGER NOT NULL DEFAULT 0,
        seen_exec_main_status INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    INSERT INTO monitor_counters_7
        SELECT unit, first_seen,
               coalesce(json_extract(data, '$.starts'), 0),
               coalesce(json_extract(data, '$.stops'), 0),
               coalesce(json_extract(data, '$.crashes'), 0),
               json_extract(data, '$.last_exit_code'),
               json_extract(data, '$.last_signal'),
               json_extract(data, '$.last_result'),
               coalesce(json_extract(data, '$.last_state'), ''),
               json_extract(data, '$.last_change_at'),
               coalesce(json_extract(data, '$.last_invocation_id'), ''),
               coalesce(json_extract(data, '$.last_n_restarts'), 0),
               coalesce(json_extract(data, '$.last_sub_state'), ''),
               json_extract(data, '$.last_seen_at'),
               coalesce(json_extract(data, '$.prev_invocation_id'), ''),
               json_extract(data, '$.acted_at'),
               json_extract(data, '$.seen_result'),
               coalesce(json_extract(data, '$.seen_n_restarts'), 0),
               coalesce(json_extract(data, '$.seen_exec_main_code'), 0),
               coalesce(json_extract(data, '$.seen_exec_main_status'), 0)
        FROM monitor_counters;
    DROP TABLE monitor_counters;
    ALTER TABLE monitor_counters_7 RENAME TO monitor_counters;
    """,
]


@dataclass(frozen=True)
class SyncRecord:
    id: int
    revision: str
    started_at: float
    duration_sec: float
    result: str
    actions: tuple[str, ...]
    error: str | None
    trigger: str
    summary: str = ""


@dataclass(frozen=True)
class SuspendInfo:
    reason: str
    by: str
    since: float


class Store(db.Database):
    """The open state database. Not shared between threads (sqlite3's default check)."""

    def __init__(self, path: Path, conn: sqlite3.Connection, busy_timeout: float) -> None:
        super().__init__(path, conn)
        self._busy_timeout = busy_timeout
        self._inode = os.stat(path).st_ino

    @classmethod
    def open(cls, path: Path, *, busy_timeout: float = 10.0) -> Store:
        """Open (or create) and migrate; a corrupted file is moved aside and started afresh."""
        try:
            try:
                return cls(path, _connect(path, busy_timeout), busy_timeout)
            except sqlite3.DatabaseError as exc:
                if not _is_corruption(exc):
                    raise
                aside = _move_aside(path, exc)
                log.warning(
                    "state database '%s' was corrupted (%s); moved aside to '%s', starting afresh",
                    path,
                    db.cause(exc),
                    aside,
                )
            return cls(path, _connect(path, busy_timeout), busy_timeout)
        except sqlite3.Error as exc:
            raise db.translate(exc, f"state database '{path}'", "open") from None
        except OSError as exc:
            raise StateError(
                f"cannot open state database '{path}': {exc.strerror}",
                hint="check the state directory exists and is writable by root",
            ) from None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- history ---------------------------------------------------------------------

    def record_sync(
        self,
        revision: str,
        started_at: float,
        duration_sec: float,
        result: str,
        actions: list[str],
        error: str | None,
        trigger: str,
        *,
        summary: str = "",
    ) -> int:
        with self.transaction(), self._errors("record sync in"):
            cur = self._conn.execute(
                "INSERT INTO sync (revision, started_at, duration_sec, result, actions, error,"
                " trigger, summary) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (revision, started_at, duration_sec, result, json.dumps(actions))
                + (error, trigger, summary),
            )
            return int(cur.lastrowid or 0)

    def history(self, limit: int = 20) -> list[SyncRecord]:
        """The newest syncs first."""
        rows = self._rows(
            "SELECT id, revision, started_at, duration_sec, result, actions, error, trigger,"
            " summary FROM sync ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [
            SyncRecord(r[0], r[1], r[2], r[3], r[4], tuple(json.loads(r[5])), r[6], r[7], r[8])
            for r in rows
        ]

    def applied_revision(self) -> str | None:
        """The revision on the host now: the newest sync that left the host at its revision."""
        return self._one(
            "SELECT revision FROM sync WHERE result IN (?, ?, ?) ORDER BY id DESC LIMIT 1",
            GOOD_RESULTS,
        )

    def last_good(self) -> str | None:
        """The newest revision that synced well and was not marked bad since: rollback target."""
        return self._one(
            "SELECT revision FROM sync WHERE result IN (?, ?, ?) AND revision NOT IN"
            " (SELECT revision FROM bad_revision) ORDER BY id DESC LIMIT 1",
            GOOD_RESULTS,
        )

    # --- manifest of owned unit files --------------------------------------------------

    def owned(self) -> frozenset[str]:
        return frozenset(row[0] for row in self._rows("SELECT name FROM owned"))

    def set_owned(self, names: Iterable[str]) -> None:
        """Replace the whole manifest (join ``transaction()`` to record it with a sync)."""
        with self.transaction(), self._errors("write manifest to"):
            self._conn.execute("DELETE FROM owned")
            self._conn.executemany(
                "INSERT INTO owned (name) VALUES (?)", ((n,) for n in sorted(set(names)))
            )

    # --- bad revisions -----------------------------------------------------------------

    def mark_bad(self, revision: str, reason: str, *, now: float | None = None) -> None:
        with self.transaction(), self._errors("mark bad revision in"):
            self._conn.execute(
                "INSERT OR REPLACE INTO bad_revision (revision, reason, marked_at)"
                " VALUES (?, ?, ?)",
                (revision, reason, time.time() if now is None else now),
            )

    def clear_bad(self, revision: str) -> None:
        with self.transaction(), self._errors("clear bad revision in"):
            self._conn.execute("DELETE FROM bad_revision WHERE revision = ?", (revision,))

    def is_bad(self, revision: str) -> bool:
        return bool(self._rows("SELECT 1 FROM bad_revision WHERE revision = ?", (revision,)))

    def bad_revisions(self, limit: int = 3) -> list[dict[str, Any]]:
        """The latest revisions marked bad, newest first: revision, reason, marked_at."""
        rows = self._rows(
            "SELECT revision, reason, marked_at FROM bad_revision ORDER BY marked_at DESC LIMIT ?",
            (limit,),
        )
        return [{"revision": r, "reason": why, "marked_at": at} for r, why, at in rows]

    def bad_reason(self, revision: str) -> str | None:
        return self._one("SELECT reason FROM bad_revision WHERE revision = ?", (revision,))

    # --- suspension --------------------------------------------------------------------

    def suspend(self, reason: str, by: str, *, now: float | None = None) -> None:
        with self.transaction(), self._errors("suspend syncs in"):
            self._conn.execute(
                "INSERT OR REPLACE INTO suspension (id, reason, by, since) VALUES (1, ?, ?, ?)",
                (reason, by, time.time() if now is None else now),
            )

    def resume(self) -> None:
        with self.transaction(), self._errors("resume syncs in"):
            self._conn.execute("DELETE FROM suspension")

    def suspended(self) -> SuspendInfo | None:
        rows = self._rows("SELECT reason, by, since FROM suspension")
        return SuspendInfo(*rows[0]) if rows else None

    # --- small values ------------------------------------------------------------------

    def kv_get(self, key: str) -> str | None:
        return self._one("SELECT value FROM kv WHERE key = ?", (key,))

    def kv_set(self, key: str, value: str | None) -> None:
        """Set ``key``; ``None`` deletes it."""
        with self.transaction(), self._errors("write value to"):
            if value is None:
                self._conn.execute("DELETE FROM kv WHERE key = ?", (key,))
            else:
                self._conn.execute(
                    "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, value)
                )

    def kv_json(self, key: str) -> dict[str, Any]:
        """A kv value holding a JSON object ({} when absent or unreadable)."""
        text = self.kv_get(key)
        try:
            value = json.loads(text) if text else {}
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def kv_update(self, key: str, **changes: Any) -> dict[str, Any]:
        """Merge ``changes`` into the JSON object under ``key``, in one transaction."""
        with self.transaction():
            value = {**self.kv_json(key), **changes}
            self.kv_set(key, json.dumps(value, sort_keys=True))
        return value

    def last_success(self) -> float | None:
        """When the newest sync that left the host at its revision ended (unix time)."""
        rows = self._rows(
            "SELECT started_at + duration_sec FROM sync WHERE result IN (?, ?, ?)"
            " ORDER BY id DESC LIMIT 1",
            GOOD_RESULTS,
        )
        return float(rows[0][0]) if rows else None

    # --- internals ---------------------------------------------------------------------

    def _what(self) -> str:
        return f"state database '{self.path}'"

    def _before_transaction(self) -> None:
        self._reopen_if_replaced()

    def _translate(self, exc: sqlite3.Error, verb: str) -> ReconcilerError:
        """As the base does, but a corrupted file is moved aside at once."""
        if isinstance(exc, sqlite3.DatabaseError) and _is_corruption(exc):
            self._conn.close()
            aside = _move_aside(self.path, exc)
            log.warning("state database '%s' corrupted; moved aside to '%s'", self.path, aside)
            return StateError(
                f"cannot {verb} state database '{self.path}': corrupted ({db.cause(exc)})",
                hint=f"moved aside to '{aside}'; the next run starts with a fresh database",
            )
        return super()._translate(exc, verb)

    def _reopen_if_replaced(self) -> None:
        """A database deleted (or replaced) under an open store: reopen, never write to a ghost."""
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            inode = -1
        if inode == self._inode:
            return
        log.warning("state database '%s' was deleted or replaced; reopening it", self.path)
        self._conn.close()
        with self._errors("reopen"):
            self._conn = _connect(self.path, self._busy_timeout)
        self._inode = os.stat(self.path).st_ino


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """Connect (the file 0600, WAL), check for damage, then migrate."""
    conn = db.connect(path, busy_timeout=busy_timeout)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        whole = _check(conn)
        db.migrate(conn, MIGRATIONS, f"state database '{path}'")
        if whole:
            with conn:
                conn.execute(
                    "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)",
                    (CHECKED_KEY, repr(time.time())),
                )
    except BaseException:
        conn.close()
        raise
    return conn


CHECKED_KEY = "checked_at"  # kv: when the whole file was last checked (quick_check)
CHECK_ALL_EVERY_SEC = 3600.0
# The monitor's looks and memory sums: most of the file on a big host (10,000 units with
# 6 h of memory samples: 0.32 s of the whole check's 0.49 s; the rest together ~15 ms).
BULKY_TABLES = frozenset({"monitor_observation", "monitor_memory"})


def _check(conn: sqlite3.Connection) -> bool:
    """Find damage before the sync touches the host, not when it records the result: every
    table but the bulky looks at each open, the whole file when its last whole check is
    over an hour old (True: note the time). Damage in the looks meanwhile is found when a
    read reaches it (the monitor's pass fails in one line) and moved aside by the next
    whole check, within the hour."""
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    checked = None
    if "kv" in tables:
        row = conn.execute("SELECT value FROM kv WHERE key = ?", (CHECKED_KEY,)).fetchone()
        with contextlib.suppress(TypeError, ValueError):
            checked = float(row[0])
    fresh = checked is not None and 0 <= time.time() - checked < CHECK_ALL_EVERY_SEC
    if not fresh or sqlite3.sqlite_version_info < (3, 33):  # quick_check(TABLE): 3.33
        _expect_ok(conn.execute("PRAGMA quick_check(1)").fetchall())
        return True
    for table in tables:
        if table not in BULKY_TABLES:
            _expect_ok(conn.execute(f"PRAGMA quick_check({table})").fetchall())
    return False


def _expect_ok(problems: list[tuple[object, ...]]) -> None:
    if problems != [("ok",)]:
        raise sqlite3.DatabaseError(f"database disk image is malformed: {problems[0][0]}")


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text or "corrupt" in text


def _move_aside(path: Path, exc: Exception) -> Path:
    """Rename the file (and its WAL, which belongs to it) to ``<name>.corrupt-<timestamp>``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    try:
        os.rename(path, aside)
        wal = Path(f"{path}-wal")
        if wal.exists():
            os.rename(wal, f"{aside}-wal")
        Path(f"{path}-shm").unlink(missing_ok=True)  # derived from the WAL; rebuilt
    except OSError as err:
        raise StateError(
            f"cannot move corrupted state database '{path}' aside: {err.strerror} "
            f"({db.cause(exc)})",
            hint="move or remove the file by hand",
        ) from None
    return aside


DESIRED_KEY = "applied_units"  # kv key: the units of the applied revision, as JSON
RELOADS_KEY = "reloads"  # systemd.unit_files.Reloads: files systemd loaded as they are
CGROUPS_KEY = "control_groups"  # monitor: unit -> [run, ControlGroup] of unaccounted services
INSTALLED_KEY = "install_owned"  # kv key: the own units 'reconciler install' wrote (names)
# Own units install writes but never enables: the promoter's timer runs on ONE machine of a
# fleet, where an operator enables it (systemctl enable --now reconciler-promote.timer).
OPT_IN_UNITS = frozenset({"reconciler-promote.timer"})
SYNC_UNIT = "gitops-sync.service"  # the sync's own unit (install writes it; the monitor
# resolves its failed runs by the history)
# kv key, a JSON object: the host's place in a rollout and its record there, for the fleet's
# metrics (wave and the applied revision it was found for, wave_at; target, polled_at,
# joined_at, failed_target, healthy_revision, healthy_since, rollbacks, health_gate_failures)
FLEET_KEY = "fleet"


def encode_desired(desired: Iterable[DesiredUnit]) -> str:
    return json.dumps([u.__dict__ for u in desired], sort_keys=True)


def decode_desired(text: str | None) -> list[DesiredUnit]:
    return [DesiredUnit(**item) for item in json.loads(text)] if text else []


def encode_files(files: Iterable[DesiredFile]) -> str:
    """Config files as JSON (content in base64: a ``source`` may be binary)."""
    return json.dumps(
        [{**f.__dict__, "content": base64.b64encode(f.content).decode()} for f in files],
        sort_keys=True,
    )


def decode_files(text: str | None) -> list[DesiredFile]:
    out = []
    for item in json.loads(text) if text else []:
        item["content"] = base64.b64decode(item["content"])
        item["restart"], item["reload"] = tuple(item["restart"]), tuple(item["reload"])
        out.append(DesiredFile(**item))
    return out
