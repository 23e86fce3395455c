"""store.ledger against real files and SQLite: what outlives a lost state database."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from reconciler.store.ledger import FILE_NAME, MAX_BAD, Ledger, restore
from reconciler.store.sync_store import Store


def test_missing_ledger_is_empty(tmp_path: Path) -> None:
    ledger = Ledger.load(tmp_path / FILE_NAME)
    assert (ledger.applied, ledger.last_good, ledger.bad) == (None, None, {})


def test_garbled_ledger_is_empty_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / FILE_NAME
    path.write_text("{not json")
    assert Ledger.load(path).bad == {}
    assert "cannot read ledger" in caplog.text


def test_ledger_follows_the_store_and_is_0600(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    with Store.open(tmp_path / "state.db") as store:
        store.record_sync("good1", 1.0, 0.1, "applied", [], None, "timer")
        store.record_sync("bad1", 2.0, 0.1, "applied", [], None, "timer")
        store.mark_bad("bad1", "web.service: failed")
        ledger = Ledger.load(path)
        ledger.record(store)
        ledger.mark_bad("bad1", "web.service: failed")
    again = Ledger.load(path)
    assert (again.applied, again.last_good) == ("bad1", "good1")
    assert again.bad == {"bad1": "web.service: failed"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_bad_marks_are_bounded(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / FILE_NAME)
    for i in range(MAX_BAD + 5):
        ledger.mark_bad(f"rev{i}", "x")
    assert len(Ledger.load(ledger.path).bad) == MAX_BAD
    assert "rev0" not in ledger.bad and f"rev{MAX_BAD + 4}" in ledger.bad


def test_restore_into_a_fresh_database(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / FILE_NAME, applied="bad1", last_good="good1", bad={"bad1": "r"})
    with Store.open(tmp_path / "state.db") as store:
        assert restore(store, ledger)
        assert store.is_bad("bad1")
        assert store.applied_revision() == "bad1" and store.last_good() == "good1"
        assert [r.trigger for r in store.history()] == ["ledger", "ledger"]
        assert restore(store, ledger) == []  # nothing lost any more: nothing written


def test_restore_leaves_a_database_that_has_its_history(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / FILE_NAME, applied="old", last_good="old")
    with Store.open(tmp_path / "state.db") as store:
        store.record_sync("new", 1.0, 0.1, "applied", [], None, "timer")
        assert restore(store, ledger) == []
        assert store.applied_revision() == "new"


def test_a_killed_syncs_note_is_taken_over_and_outlives_the_database(tmp_path: Path) -> None:
    """The note of a sync killed before its gate passed: in the ledger too, restored into a
    fresh database; the next sync records the killed one 'interrupted', gets its checks, and
    the revision is not the last good one."""
    from reconciler.reconcile import interrupted

    with Store.open(tmp_path / "state.db") as store:
        store.record_sync("good1", 1.0, 0.1, "applied", [], None, "timer")
        Ledger.load(tmp_path / FILE_NAME).record(store)  # as every recorded sync does
        note = interrupted.Note("killed", "bad1", (("pinger.service", 4.0),), 2.0, "timer", ("x",))
        interrupted.note(store, tmp_path, note)
    (tmp_path / "state.db").unlink()  # lost after the kill
    with Store.open(tmp_path / "state.db") as store:
        restore(store, Ledger.load(tmp_path / FILE_NAME))
        checks = interrupted.take_over(store, tmp_path, "next", "bad1")
        assert checks == (("pinger.service", 4.0),)
        assert [(r.revision, r.result) for r in store.history()][0] == ("bad1", "interrupted")
        assert store.last_good() == "good1"
        assert interrupted.take_over(store, tmp_path, "next", "bad1") == checks  # its own now
        assert len(store.history()) == 2  # recorded once
        interrupted.clear(store, tmp_path, "next")
        assert interrupted.load(store) is None
    assert Ledger.load(tmp_path / FILE_NAME).unverified is None
