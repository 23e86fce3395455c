"""``FindingStore.counters``: only the rows of the units asked for are read, and a row
unchanged since the last read is not parsed again (real SQLite)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from reconciler.core.counters import Counters
from reconciler.store.finding_store import FindingStore
from reconciler.store.sync_store import Store


def test_counters_of_the_units_asked_for_parsed_once_while_unchanged(tmp_path: Path) -> None:
    Store.open(tmp_path / "state.db").close()
    db = FindingStore(tmp_path / "state.db")
    try:
        db.save_counters([Counters(u, starts=i) for i, u in enumerate("abc")], 1.0)
        first = db.counters(["a", "b", "x"])  # x: no row
        assert {u: c.starts for u, c in first.items()} == {"a": 0, "b": 1}
        assert {u: c.starts for u, c in db.counters().items()} == {"a": 0, "b": 1, "c": 2}
        db.save_counters([replace(first["a"], starts=5)], 2.0)
        again = db.counters(iter(["b", "a"]))
        assert again["a"].starts == 5  # changed: parsed again
        assert again["b"] is first["b"]  # unchanged: the same object, not parsed again
        assert db.counters([]) == {}
    finally:
        db.close()
