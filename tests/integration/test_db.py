"""store.db, the one SQLite base under every store, against real SQLite files."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.config import Settings
from reconciler.errors import JobError, StateError
from reconciler.store import db, metric_store
from reconciler.store.finding_store import FindingStore
from reconciler.store.sync_store import Store


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "state" / "state.db"
    Store.open(path).close()  # created and migrated by the sync store, as on a host
    yield path


def test_the_sync_and_finding_stores_share_one_base(state: Path) -> None:
    assert issubclass(Store, db.Database) and issubclass(FindingStore, db.Database)
    with Store.open(state) as s, s.transaction(), s.transaction():  # nested: joins the outer
        s.kv_set("a", "1")
    finding = FindingStore(state)
    try:
        with pytest.raises(RuntimeError), finding.transaction():
            finding.kv_set("b", "2")
            raise RuntimeError("half-way")
        assert finding.kv_get("b") is None  # rolled back
        finding.kv_set("b", "3")
        assert finding.kv_get("b") == "3"
    finally:
        finding.close()


def test_a_locked_file_is_one_state_error_with_a_hint_for_every_store(state: Path) -> None:
    holder = sqlite3.connect(state, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        finding = FindingStore(state, busy_timeout=0.2)
        try:
            with pytest.raises(StateError) as info:
                finding.kv_set("x", "1")
        finally:
            finding.close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert info.value.message == (
        f"cannot write monitor tables in '{state}': locked by another process"
    )
    assert info.value.hint == db.LOCKED_HINT


def test_the_metrics_file_is_created_by_the_same_base(tmp_path: Path) -> None:
    metric_store.open_store(Settings(state_dir=tmp_path / "state")).close()
    path = tmp_path / "state" / "metrics.db"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    finally:
        conn.close()


def test_migrate_runs_each_script_once_and_refuses_newer_with_the_callers_error(
    tmp_path: Path,
) -> None:
    conn = db.connect(tmp_path / "x.db", busy_timeout=1.0)
    try:
        scripts = ["CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('a;b');"]
        db.migrate(conn, scripts, "test file")
        db.migrate(conn, scripts, "test file")  # nothing to do
        scripts.append("INSERT INTO t VALUES ('c');")
        db.migrate(conn, scripts, "test file")
        assert conn.execute("SELECT v FROM t").fetchall() == [("a;b",), ("c",)]
        assert db.schema_version(conn) == 2
        with pytest.raises(JobError, match="cannot open test file: schema version 2 is newer"):
            db.migrate(conn, scripts[:1], "test file", error=JobError)
    finally:
        conn.close()
