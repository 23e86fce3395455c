"""``FindingStore``'s reads for a few units: only their rows are read (counters, history,
acted), and a whole read is served again while the file is unchanged (real SQLite)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from reconciler import config, monitor
from reconciler.core.counters import Counters, Observation
from reconciler.store import finding_store
from reconciler.store.finding_store import FindingStore
from reconciler.store.sync_store import Store

T0 = 1_700_000_000.0


def test_counters_of_the_units_asked_for(tmp_path: Path) -> None:
    Store.open(tmp_path / "state.db").close()
    db = FindingStore(tmp_path / "state.db")
    try:
        db.save_counters([Counters(u, starts=i) for i, u in enumerate("abc")], 1.0)
        first = db.counters(["a", "b", "x"])  # x: no row
        assert {u: c.starts for u, c in first.items()} == {"a": 0, "b": 1}
        assert {u: c.starts for u, c in db.counters().items()} == {"a": 0, "b": 1, "c": 2}
        db.save_counters([replace(first["a"], starts=5)], 2.0)
        again = db.counters(iter(["b", "a"]))
        assert again["a"].starts == 5 and again["b"] == first["b"]
        assert db.counters([]) == {}
    finally:
        db.close()


def test_history_of_a_few_units_filtered_by_sqlite_is_what_a_scan_gives(tmp_path: Path) -> None:
    conf = tmp_path / "config.toml"
    conf.write_text("")
    settings = config.load(conf, {"state_dir": str(tmp_path)})
    Store.open(tmp_path / "state.db").close()
    db = FindingStore(tmp_path / "state.db")
    rec = monitor.Recorder(db, monitor.load_config(settings))
    try:
        for i, unit in enumerate(("a.service", "b.service", "c.service")):
            rec.record([Observation(unit, T0, "active", "running", "success", 0, f"{unit}1")])
            for k in range(1, 4):  # crashes (events), and memory samples of the running run
                rec.record([Observation(unit, T0 + k, "active", "running", "success", k, f"r{k}")])
                rec.record([replace(rec.latest[unit], at=T0 + k + 0.5, memory_current=k * i)])
        few = ["a.service", "c.service"]
        many = few + [f"x{n}.service" for n in range(finding_store.SQL_FILTER_MAX)]
        windows = {"observations_since": T0 - 1, "memory_since": T0 - 1, "events_since": T0 - 1}
        filtered, scanned = db.load(few, **windows), db.load(many, **windows)
        assert filtered == scanned and set(filtered.observations) == set(few)
        assert len(filtered.events["a.service"]) >= 3 and filtered.memory
        assert db.acted(few) == db.acted(many) == {u: None for u in few}
    finally:
        db.close()


def test_a_whole_read_is_served_again_until_the_file_changes(tmp_path: Path) -> None:
    """A pass reads every unit's counters up to three times: the rows are fetched again
    only once another connection committed, or this one wrote counters."""
    Store.open(tmp_path / "state.db").close()
    db, other = FindingStore(tmp_path / "state.db"), FindingStore(tmp_path / "state.db")
    try:
        db.save_counters([Counters(u, starts=i) for i, u in enumerate("abc")], 1.0)
        whole = db.counters()
        fetched = []
        db._conn.set_trace_callback(fetched.append)
        assert db.counters() == whole and db.counters(["c", "x"]) == {"c": whole["c"]}
        assert not [q for q in fetched if "monitor_counters" in q]
        other.save_counters([Counters("b", starts=7)], 2.0)  # another connection commits
        assert db.counters()["b"].starts == 7
        db.save_counters([Counters("a", starts=9)], 3.0)  # this one writes
        assert db.counters(["a"])["a"].starts == 9 and db.counters()["a"].starts == 9
        db._conn.set_trace_callback(None)
    finally:
        db.close()
        other.close()
