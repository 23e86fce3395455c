"""store.db, the one SQLite base under every store, against real SQLite files."""

from __future__ import annotations

import random
import sqlite3
import stat
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.config import Settings
from reconciler.core.counters import Counters, Observation
from reconciler.core.patterns import Thresholds, detect, memory_run
from reconciler.errors import JobError, StateError
from reconciler.store import db, metric_store
from reconciler.store.finding_store import FindingStore, Retention
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


def test_memory_runs_summed_by_sqlite_find_what_the_looks_themselves_would(state: Path) -> None:
    """A pass sums each run's memory samples in SQLite (``FindingStore.load``) instead of
    loading hours of looks per unit: the trend, its evidence and the current run's cut (a
    restart resets a leak) are the same as from the looks, at 20 GB as at 300 MB."""
    mb, now = 2**20, 1_800_000_000.0
    rnd = random.Random(7)

    def noise(sigma: float) -> float:
        return rnd.gauss(0, sigma)

    series = {  # unit -> (run of each look, memory of each look), one look a minute
        "leak.service": (["a"] * 40, [300 * mb + 10 * mb * i + noise(3 * mb) for i in range(40)]),
        "big.service": (["b"] * 90, [20 * 2**30 + mb * i // 4 for i in range(90)]),
        "flat.service": (["c"] * 60, [300 * mb + noise(3 * mb) for _ in range(60)]),
        "restarted.service": (
            ["d"] * 50 + ["e"] * 40,
            [300 * mb + 10 * mb * i for i in range(50)] + [200 * mb + noise(mb) for _ in range(40)],
        ),
    }
    looks = {
        unit: [
            Observation(unit, now - (len(runs) - i) * 60, "active", "running", "success", 0, run,
                        memory_current=int(m))
            for i, (run, m) in enumerate(zip(runs, mems, strict=True))
        ]
        for unit, (runs, mems) in series.items()
    }  # fmt: skip
    store = FindingStore(state)
    try:
        store.add([o for obs in looks.values() for o in obs], [])
        th = Thresholds()
        loaded = store.load(
            list(looks), observations_since=now - 600, memory_since=now - 6 * 3600, events_since=0
        )
    finally:
        store.close()
    found = {}
    for unit, obs in looks.items():
        summed = loaded.memory[unit, obs[-1].invocation_id]
        assert summed.samples == memory_run(obs).samples  # type: ignore[union-attr]
        recent = [o for o in obs if o.at > now - 600]
        by_sqlite = detect(unit, [], recent, now, th, memory=summed)
        by_looks = detect(unit, [], obs, now, th)
        assert [f.kind for f in by_sqlite] == [f.kind for f in by_looks], unit
        for a, b in zip(by_sqlite, by_looks, strict=True):
            assert a.evidence.keys() == b.evidence.keys()
            for key, value in a.evidence.items():
                assert value == pytest.approx(b.evidence[key], rel=1e-6, abs=1e-4), (unit, key)
        found[unit] = {f.kind for f in by_sqlite}
    assert found == {
        "leak.service": {"memory_growth"},
        "big.service": {"memory_growth"},  # 15 MiB/h on 20 GiB
        "flat.service": set(),
        "restarted.service": set(),  # it leaked, and its new run does not
    }


def test_memory_samples_go_a_bucket_at_a_time_once_older_than_the_trend_window(
    state: Path,
) -> None:
    """One look a unit a pass, each with a memory sample, would fill the table for a week
    (10,000 units: millions of rows, and every open's integrity check reads them): looks
    that said nothing new but memory are not stored as looks, and every sample is summed
    into its run's bucket, pruned once the whole bucket is older than the trend's window;
    changes stay looks."""
    now, hour = 1_800_000_000.0, 3600.0  # a multiple of the 1 h buckets of a 6 h window

    def look(at: float, state_: str = "active") -> Observation:
        return Observation("a.service", at, state_, "running", "success", 0, "r1", 0, 0, 1000)

    store = FindingStore(state, retention=Retention(memory_sample_sec=6 * hour))
    try:
        assert store.retention.memory_bucket_sec == hour
        store.add([look(now - 9 * hour, "activating")], [], [look(now - 8 * hour)])
        store.add([], [], [look(now - 6.5 * hour), look(now - 5.8 * hour), look(now - hour)])
        store.add([], [], [look(now - hour + 60)])  # the same bucket: one row
        rows = store._rows("SELECT count(*) FROM monitor_memory")[0][0]
        assert store.prune(now, force=True)
        left = store.load(["a.service"], observations_since=0, memory_since=0, events_since=0)
        since = now - 5.5 * hour  # the bucket of -5.8 h reaches into this window
        window = store.load(["a.service"], observations_since=0, memory_since=since, events_since=0)
    finally:
        store.close()
    assert rows == 5  # the buckets of -9 h, -8 h, -6.5 h, -5.8 h, -1 h (and -59 min)
    assert [o.at for o in left.observations["a.service"]] == [now - 9 * hour]
    memory = left.memory["a.service", "r1"]
    assert (memory.samples, memory.first_at, memory.last_at) == (3, now - 5.8 * hour, now - 3540)
    got = window.memory["a.service", "r1"]
    assert (got.samples, got.first_at, got.last_at) == (3, now - 5.8 * hour, now - 3540)
    xs = [-0.3 * hour, 4.5 * hour, 4.5 * hour + 60]  # seconds after since
    assert (got.sx, got.sy, got.sxx, got.syy, got.sxy) == _sums(xs)


def _sums(xs: list[float], y: float = 1000.0) -> tuple[float, ...]:
    return (sum(xs), y * len(xs), sum(x * x for x in xs), y * y * len(xs), sum(x * y for x in xs))


def test_an_older_file_moves_its_memory_samples_into_buckets(state: Path) -> None:
    """Migration 6: the samples stored as looks (marked or not) are summed into hourly
    buckets, the marked looks go, and the trend reads the same sums."""
    import sqlite3

    from reconciler.store import sync_store

    now = 1_800_000_000.0
    path = state.parent / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript("".join(sync_store.MIGRATIONS[:5]) + "PRAGMA user_version = 5;")
    rows = [("a.service", now - 4000 + 300 * i, "r1", 1000 + 10 * i, int(i > 0)) for i in range(8)]
    conn.executemany(
        "INSERT INTO monitor_observation (unit, at, active_state, sub_state, result,"
        " n_restarts, invocation_id, exec_main_code, exec_main_status, memory_current,"
        " memory_only) VALUES (?, ?, 'active', 'running', 'success', 0, ?, 0, 0, ?, ?)",
        rows,
    )
    conn.commit()
    conn.close()
    Store.open(path).close()
    store = FindingStore(path)
    try:
        loaded = store.load(
            ["a.service"], observations_since=0, memory_since=now - 5000, events_since=0
        )
        left = store._rows("SELECT count(*) FROM monitor_observation")[0][0]
    finally:
        store.close()
    assert left == 1
    xs = [r[1] - (now - 5000) for r in rows]
    ys = [float(r[3]) for r in rows]
    got = loaded.memory["a.service", "r1"]
    assert (got.samples, got.first_at, got.last_at) == (8, rows[0][1], rows[-1][1])
    want = (sum(xs), sum(ys), sum(x * x for x in xs), sum(y * y for y in ys),
            sum(x * y for x, y in zip(xs, ys, strict=True)))  # fmt: skip
    assert (got.sx, got.sy, got.sxx, got.syy, got.sxy) == pytest.approx(want, rel=1e-12)


def test_a_steady_units_look_rewrites_its_last_seen_at_alone_and_exactly(state: Path) -> None:
    """10,000 steady units' pass moves only their last_seen_at: that column alone, to the
    last digit, every other field kept."""
    at = 1_765_000_000.1234567
    c = Counters(
        "a.service", starts=2, crashes=1, last_exit_code=3, last_state="active",
        last_sub_state="running", last_invocation_id="r1", last_seen_at=at - 300,
        seen_result="success",
    )  # fmt: skip
    store = FindingStore(state)
    try:
        store.save_counters([c, Counters("b.service", last_seen_at=1.0)], at - 300)
        store.save_counters([], at, seen={"a.service": at})
        assert store.counters() == {
            "a.service": replace(c, last_seen_at=at),
            "b.service": Counters("b.service", last_seen_at=1.0),
        }
    finally:
        store.close()


def test_an_older_file_moves_its_counters_from_json_into_columns(state: Path) -> None:
    """Migration 7: each unit's counters, stored as one JSON text, become columns; a key an
    older version did not write takes its default, one it wrote and no longer knows goes."""
    import json
    import sqlite3

    from reconciler.store import sync_store

    path = state.parent / "old.db"
    full = Counters(
        "a.service", starts=3, stops=1, crashes=2, last_exit_code=None, last_signal="SIGKILL",
        last_result="signal", last_state="active", last_change_at=1_765_000_000.1234567,
        last_invocation_id="r2", last_n_restarts=2, last_sub_state="running",
        last_seen_at=1_765_000_300.7654321, prev_invocation_id="r1", acted_at=1.5,
        seen_result="success", seen_n_restarts=2, seen_exec_main_code=2,
        seen_exec_main_status=9,
    )  # fmt: skip
    old = {"unit": "b.service", "starts": 1, "last_state": "failed", "gone_key": 7}
    conn = sqlite3.connect(path)
    conn.executescript("".join(sync_store.MIGRATIONS[:6]) + "PRAGMA user_version = 6;")
    conn.executemany(
        "INSERT INTO monitor_counters (unit, first_seen, data) VALUES (?, ?, ?)",
        [("a.service", 10.0, json.dumps(full.flat())), ("b.service", 20.0, json.dumps(old))],
    )
    conn.commit()
    conn.close()
    Store.open(path).close()
    store = FindingStore(path)
    try:
        got = store.counters()
        first = store.load(
            ["a.service", "b.service"], observations_since=0, memory_since=0, events_since=0
        ).first_seen
        acted = store.acted(["a.service", "b.service"])
    finally:
        store.close()
    assert got == {"a.service": full, "b.service": Counters("b.service", 1, last_state="failed")}
    assert first == {"a.service": 10.0, "b.service": 20.0}
    assert acted == {"a.service": 1.5, "b.service": None}
