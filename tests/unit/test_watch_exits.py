"""The watch's deferred exits (``monitor.exits``): crashes of unseen runs are counted at
once and get their exit codes from one later journal read, in the stored events and the
counters; a gap journald has not stored yet waits for the next read (real SQLite; the
journal's answers as a table)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from reconciler import config, monitor
from reconciler.core.counters import Exit, Observation
from reconciler.monitor import exits as exits_mod
from reconciler.store.finding_store import FindingStore
from reconciler.store.sync_store import Store

UNIT = "loop.service"
T0 = 1_700_000_000.0


def recorder(tmp_path: Path, journal: dict[str, list[Exit]]) -> monitor.Recorder:
    conf = tmp_path / "config.toml"
    conf.write_text("")
    settings = config.load(conf, {"state_dir": str(tmp_path)})
    Store.open(tmp_path / "state.db").close()

    def read(units: Collection[str], lo: float, hi: float) -> Mapping[str, Sequence[Exit]]:
        return {u: [e for e in journal.get(u, []) if lo <= e.at <= hi + 1] for u in units}

    db = FindingStore(tmp_path / "state.db")
    return monitor.Recorder(db, monitor.load_config(settings), read, defer=True)


def looks(n_restarts: int, at: float, invocation: str) -> Observation:
    return Observation(UNIT, at, "active", "running", "success", n_restarts, invocation)


def crash_codes(rec: monitor.Recorder) -> list[int | None]:
    return [e.exit_code for e in rec.db.events(0, UNIT) if e.kind == "crash"]


def test_unseen_crashes_are_counted_at_once_and_take_their_exits_later(tmp_path: Path) -> None:
    journal: dict[str, list[Exit]] = {}
    rec = recorder(tmp_path, journal)
    rec.record([looks(0, T0, "a")])
    rec.record([looks(3, T0 + 10, "d")])  # three crashes no look saw
    assert rec.db.counters([UNIT])[UNIT].crashes == 3  # counted before any journal read
    assert crash_codes(rec) == [None, None, None] and rec.pending_units() == {UNIT}
    # journald has stored two of them so far: kept for the next read (no wait)
    journal[UNIT] = [Exit(T0 + 2, 3), Exit(T0 + 5, 4)]
    assert rec.pending is not None
    rec.pending.settle(rec.db, now=lambda: T0 + 11)  # a second after the look
    assert rec.pending_units() == {UNIT} and crash_codes(rec) == [None, None, None]
    journal[UNIT].append(Exit(T0 + 8, 5, None, "exit-code"))
    assert rec.settle() == {
        UNIT
    }  # now: long after the look, nothing is kept and rec.pending_units() == set()
    assert crash_codes(rec) == [3, 4, 5]
    counters = rec.db.counters([UNIT])[UNIT]
    assert (counters.last_exit_code, counters.last_result) == (5, "exit-code")


def test_a_later_crash_keeps_its_own_exit_as_the_last(tmp_path: Path) -> None:
    journal = {UNIT: [Exit(T0 + 2, 3)]}
    rec = recorder(tmp_path, journal)
    rec.record([looks(0, T0, "a")])
    rec.record([looks(1, T0 + 4, "b")])  # one unseen crash (exit 3 in the journal)
    seen = Observation(UNIT, T0 + 6, "failed", "failed", "exit-code", 1, "b", 1, 9)
    rec.record([seen])  # a crash seen with its exit (CLD_EXITED, 9)
    assert rec.settle() == {UNIT}
    assert crash_codes(rec) == [3, 9]
    assert rec.db.counters([UNIT])[UNIT].last_exit_code == 9  # not the older unseen one


def test_a_gap_the_journal_never_explains_stays_unknown(tmp_path: Path) -> None:
    rec = recorder(tmp_path, {})
    rec.record([looks(0, T0, "a")])
    rec.record([looks(1, T0 + 4, "b")])
    assert rec.pending is not None
    rec.pending.settle(rec.db, now=lambda: T0 + 4 + exits_mod.GIVE_UP_SEC + 1)
    assert rec.pending_units() == set() and crash_codes(rec) == [None]
