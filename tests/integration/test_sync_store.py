"""sync_store.Store against real SQLite: schema, records, corruption, deletion, locks, modes."""

from __future__ import annotations

import json
import logging
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.errors import StateError
from reconciler.store import sync_store
from reconciler.store.sync_store import Store, SuspendInfo


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "var" / "reconciler" / "state.db"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    with Store.open(db) as s:
        yield s


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- schema ------------------------------------------------------------------------------


def test_fresh_database_is_migrated_to_the_latest_version(store: Store, db: Path) -> None:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(sync_store.MIGRATIONS)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()
    assert {"sync", "owned", "bad_revision", "suspension", "kv"} <= tables


def test_appended_migration_runs_once_and_keeps_data(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store.open(db) as s:
        s.kv_set("keep", "me")
    extra = "CREATE TABLE finding (id INTEGER PRIMARY KEY, text TEXT);\n"
    extra += "INSERT INTO finding (text) VALUES ('a;b');  -- a ';' inside a string\n"
    monkeypatch.setattr(sync_store, "MIGRATIONS", [*sync_store.MIGRATIONS, extra])
    for _ in range(2):  # the second open has nothing to do
        with Store.open(db) as s:
            assert s.kv_get("keep") == "me"
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT text FROM finding").fetchall() == [("a;b",)]
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(sync_store.MIGRATIONS)
    finally:
        conn.close()


def test_failed_migration_leaves_the_old_version(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Store.open(db).close()
    broken = "CREATE TABLE half (x INTEGER);\nTHIS IS NOT SQL;\n"
    monkeypatch.setattr(sync_store, "MIGRATIONS", [*sync_store.MIGRATIONS, broken])
    with pytest.raises(StateError, match="cannot open state database"):
        Store.open(db)
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(sync_store.MIGRATIONS) - 1
        assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name='half'").fetchall()
    finally:
        conn.close()


def test_database_newer_than_the_code_is_refused(db: Path) -> None:
    Store.open(db).close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StateError, match="schema version 99 is newer"):
        Store.open(db)


# --- records -----------------------------------------------------------------------------


def test_history_newest_first_with_limit(store: Store) -> None:
    first = store.record_sync("a" * 40, 100.0, 1.5, "applied", ["write web.service"], None, "timer")
    second = store.record_sync(
        "b" * 40, 200.0, 0.2, "failed", [], "cannot fetch", "webhook", summary="msg"
    )
    assert second > first
    records = store.history()
    assert [r.revision for r in records] == ["b" * 40, "a" * 40]
    assert records[0] == sync_store.SyncRecord(
        second, "b" * 40, 200.0, 0.2, "failed", (), "cannot fetch", "webhook", "msg"
    )
    assert records[1].actions == ("write web.service",)
    assert len(store.history(limit=1)) == 1


def test_last_good_and_applied_revision(store: Store) -> None:
    assert store.last_good() is None and store.applied_revision() is None
    store.record_sync("good1", 1.0, 1.0, "applied", ["x"], None, "timer")
    store.record_sync("good1", 2.0, 0.1, "noop", [], None, "timer")
    store.record_sync("bad2", 3.0, 5.0, "rolled-back", ["x"], "health", "timer")
    store.record_sync("good1", 3.5, 0.0, "applied", ["rollback"], None, "rollback")
    assert store.last_good() == store.applied_revision() == "good1"
    store.record_sync("good3", 4.0, 1.0, "applied", ["y"], None, "timer")
    assert store.last_good() == "good3"
    store.mark_bad("good3", "crash loop found later")
    assert store.applied_revision() == "good3"  # what the host runs
    assert store.last_good() == "good1"  # where a rollback goes


def test_manifest_replaced_as_a_whole(store: Store) -> None:
    assert store.owned() == frozenset()
    store.set_owned(["web.service", "backup.timer", "web.service"])
    assert store.owned() == {"web.service", "backup.timer"}
    store.set_owned(iter(["db.service"]))
    assert store.owned() == {"db.service"}


def test_transaction_is_all_or_nothing(store: Store) -> None:
    store.set_owned(["old.service"])
    with pytest.raises(RuntimeError), store.transaction():
        store.set_owned(["new.service"])
        store.record_sync("r", 1.0, 1.0, "applied", [], None, "timer")
        raise RuntimeError("killed half-way")
    assert store.owned() == {"old.service"}
    assert store.history() == []
    with store.transaction():
        store.set_owned(["new.service"])
        store.kv_set("pending", "[]")
    assert store.owned() == {"new.service"}


def test_bad_revisions(store: Store) -> None:
    assert not store.is_bad("r1")
    store.mark_bad("r1", "web.service: failed", now=10.0)
    store.mark_bad("r1", "web.service: failed again", now=11.0)
    assert store.is_bad("r1") and not store.is_bad("r2")
    assert store.bad_reason("r1") == "web.service: failed again"
    store.clear_bad("r1")
    assert not store.is_bad("r1")


def test_suspend_and_resume(store: Store) -> None:
    assert store.suspended() is None
    store.suspend("incident 42", "alice", now=1000.0)
    assert store.suspended() == SuspendInfo("incident 42", "alice", 1000.0)
    store.suspend("still investigating", "bob", now=1001.0)
    assert store.suspended() == SuspendInfo("still investigating", "bob", 1001.0)
    store.resume()
    assert store.suspended() is None
    store.resume()  # idempotent


def test_kv(store: Store) -> None:
    assert store.kv_get("k") is None
    store.kv_set("k", "v1")
    store.kv_set("k", "v2")
    assert store.kv_get("k") == "v2"
    store.kv_set("k", None)
    assert store.kv_get("k") is None


def test_data_survives_reopen(db: Path) -> None:
    with Store.open(db) as s:
        s.record_sync("r", 1.0, 1.0, "applied", ["a"], None, "timer")
        s.set_owned(["web.service"])
        s.suspend("x", "y", now=5.0)
    with Store.open(db) as s:
        assert [r.revision for r in s.history()] == ["r"]
        assert s.owned() == {"web.service"}
        assert s.suspended() == SuspendInfo("x", "y", 5.0)


# --- faults ------------------------------------------------------------------------------


def test_modes_0600_file_0700_parent(store: Store, db: Path) -> None:
    store.record_sync("r", 1.0, 1.0, "applied", [], None, "timer")
    assert mode(db.parent) == 0o700
    assert mode(db) == 0o600
    for suffix in ("-wal", "-shm"):
        side = Path(f"{db}{suffix}")
        assert side.exists() and mode(side) == 0o600


def test_loose_mode_is_tightened(db: Path) -> None:
    Store.open(db).close()
    db.chmod(0o644)
    Store.open(db).close()
    assert mode(db) == 0o600


def test_garbage_file_is_moved_aside_with_a_warning(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db.parent.mkdir(parents=True)
    garbage = b"this is not a database at all\n" * 200
    db.write_bytes(garbage)
    with caplog.at_level(logging.WARNING, logger="reconciler"), Store.open(db) as s:
        s.kv_set("fresh", "yes")
        assert s.kv_get("fresh") == "yes"
    aside = list(db.parent.glob("state.db.corrupt-*"))
    assert len(aside) == 1
    assert aside[0].read_bytes() == garbage  # kept for inspection, never silently lost
    assert any(
        "moved aside" in r.getMessage() and str(aside[0]) in r.getMessage() for r in caplog.records
    )


def test_damaged_pages_are_moved_aside(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Store.open(db) as s:
        for i in range(300):
            s.record_sync(f"rev{i}", float(i), 1.0, "applied", ["x" * 200], None, "timer")
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(db.read_bytes())
    page = 4096
    data[page : len(data)] = b"\xa5" * (len(data) - page)  # keep the header, ruin every page
    db.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="reconciler"), Store.open(db) as s:
        assert s.history() == []
    assert len(list(db.parent.glob("state.db.corrupt-*"))) == 1
    assert "moved aside" in caplog.text


def test_corruption_found_later_is_moved_aside(db: Path) -> None:
    with Store.open(db) as s:
        s.record_sync("r", 1.0, 1.0, "applied", [], None, "timer")
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        raw = bytearray(db.read_bytes())
        raw[4096 * 1 : 4096 * 2] = b"\xff" * 4096  # the sync table's root page
        db.write_bytes(bytes(raw))
        Path(f"{db}-shm").unlink(missing_ok=True)
        with pytest.raises(StateError) as info:
            for _ in range(3):
                s.history()
                s.owned()
        assert "corrupted" in info.value.message and info.value.hint
        assert "moved aside" in info.value.hint
        assert s.history() == []  # the store went on with a fresh file
    assert list(db.parent.glob("state.db.corrupt-*"))


def test_corruption_warning_is_one_line(db: Path) -> None:
    """A user's trial: SQLite's message for a bad page spans two lines, and so did the
    warning ``reconciler history`` printed when it moved the database aside."""
    with Store.open(db) as s:
        s.record_sync("r", 1.0, 1.0, "applied", [], None, "timer")
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    raw = bytearray(db.read_bytes())
    raw[4096 * 1 : 4096 * 2] = b"\xff" * 4096  # the sync table's root page
    db.write_bytes(bytes(raw))
    Path(f"{db}-shm").unlink(missing_ok=True)
    cli = str(Path(sys.executable).parent / "reconciler")
    proc = subprocess.run(
        [cli, "history", "--state-dir", str(db.parent)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "corrupted" in lines[0] and "moved aside" in lines[0], lines


def test_deleted_database_is_recreated(db: Path) -> None:
    with Store.open(db) as s:
        s.set_owned(["web.service"])
        for path in db.parent.iterdir():
            path.unlink()
        s.kv_set("after", "delete")  # goes to the new file, not to the deleted inode
        assert s.kv_get("after") == "delete"
    with Store.open(db) as s:
        assert s.kv_get("after") == "delete"
        assert s.owned() == frozenset()


def test_deleted_state_dir_is_recreated(db: Path) -> None:
    Store.open(db).close()
    for path in db.parent.iterdir():
        path.unlink()
    db.parent.rmdir()
    with Store.open(db) as s:
        assert s.history() == []


HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
conn.execute("INSERT INTO kv (key, value) VALUES ('held', 'yes')")
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def locker(db: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding an exclusive transaction on the database."""
    Store.open(db).close()
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout and proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        if proc.stdin:
            proc.stdin.close()
        if proc.stdout:
            proc.stdout.close()


def test_locked_database_gives_a_clear_error(db: Path, locker: subprocess.Popen[str]) -> None:
    with Store.open(db, busy_timeout=0.3) as s:
        assert s.kv_get("held") is None  # WAL: reading never waits for the writer
        started = time.monotonic()
        with pytest.raises(StateError) as info:
            s.record_sync("r", 1.0, 1.0, "applied", [], None, "timer")
        assert time.monotonic() - started < 3
    assert info.value.message == f"cannot write state database '{db}': locked by another process"
    assert info.value.hint
    assert not list(db.parent.glob("*.corrupt-*"))


def test_lock_released_then_writes_work(db: Path, locker: subprocess.Popen[str]) -> None:
    with Store.open(db, busy_timeout=5) as s:
        assert locker.stdin
        locker.stdin.close()  # the holder exits; its transaction rolls back
        s.kv_set("mine", "1")
        assert s.kv_get("mine") == "1"
        assert s.kv_get("held") is None


def test_the_monitor_wants_an_opt_in_own_unit_as_the_operator_left_it(
    store: Store, tmp_path: Path
) -> None:
    """The promoter's timer is installed on every host and enabled on one: where it is not
    enabled, the monitoring pass reported it drifted (a false alarm on every host)."""
    from reconciler.monitor import own_units

    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    names = ["gitops-sync.service", "gitops-sync.timer", "reconciler-promote.service",
             "reconciler-promote.timer"]  # fmt: skip
    for name in names:
        (unit_dir / name).write_text("[Unit]\n")
    store.kv_set(sync_store.INSTALLED_KEY, json.dumps(names))
    wanted = {u.name: (u.enable, u.start) for u in own_units(store, unit_dir, [])}
    assert wanted == {
        "gitops-sync.service": (False, False),  # run by its timer
        "gitops-sync.timer": (True, True),
        "reconciler-promote.service": (False, False),
    }
    wants = unit_dir / "timers.target.wants"
    wants.mkdir()
    (wants / "reconciler-promote.timer").symlink_to(unit_dir / "reconciler-promote.timer")
    wanted = {u.name: (u.enable, u.start) for u in own_units(store, unit_dir, [])}
    assert wanted["reconciler-promote.timer"] == (True, True)  # enabled here: monitored


def test_the_bulky_looks_are_checked_whole_once_an_hour(db: Path) -> None:
    """Every open checks the sync's tables; the monitor's looks (most of a big host's file:
    0.32 s of 0.49 s at 10,000 units) only with the whole file, once an hour. Damage in
    them is found by that check and moved aside like any other."""
    from reconciler.core.counters import Observation
    from reconciler.store.finding_store import FindingStore

    Store.open(db).close()  # new: checked whole, the time noted
    looks = FindingStore(db)
    looks.add([Observation(f"u{i}.service", float(i), "active", "running", "", 0, "r") for i in
               range(2000)], [])  # fmt: skip
    looks.close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (root,) = conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'monitor_observation'"
    ).fetchone()
    conn.close()
    raw = bytearray(db.read_bytes())
    raw[4096 * (root - 1) : 4096 * root] = b"\xff" * 4096
    db.write_bytes(bytes(raw))
    Path(f"{db}-shm").unlink(missing_ok=True)
    with Store.open(db) as s:  # within the hour: the sync's tables only, and they are fine
        s.record_sync("r", 1.0, 1.0, "applied", [], None, "timer")
        s.kv_set(sync_store.CHECKED_KEY, repr(time.time() - sync_store.CHECK_ALL_EVERY_SEC))
    assert not list(db.parent.glob("state.db.corrupt-*"))
    with Store.open(db) as s:  # an hour on: the whole file, the damage found, moved aside
        assert s.history() == []
        assert float(s.kv_get(sync_store.CHECKED_KEY) or 0) > time.time() - 60
    assert len([p for p in db.parent.glob("state.db.corrupt-*") if "-wal" not in p.name]) == 1


def test_bad_revisions_newest_first(db: Path) -> None:
    with Store.open(db) as s:
        for i, rev in enumerate(("r1", "r2", "r3", "r4")):
            s.mark_bad(rev, f"gate {i}", now=float(i))
        s.clear_bad("r4")
        assert [b["revision"] for b in s.bad_revisions()] == ["r3", "r2", "r1"]
        assert s.bad_revisions(1) == [{"revision": "r3", "reason": "gate 2", "marked_at": 2.0}]
