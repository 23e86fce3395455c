"""A sync's health gate not yet finished, noted before its apply (talks to the store, ledger).

A revision is good (a rollback target) only once its gate passed: ``history`` takes an
``applied`` or ``noop`` row for that. A sync killed after its apply left no row, and the
host then matches its revision, so the next sync planned nothing and recorded ``noop``:
the gate was skipped and the crash-looping revision became the last good one. So every
applying sync notes first which revision it is taking the host to and which units it
must gate (``note``), in the state database and in ``ledger.json`` (a lost database must
not undo it); the record step clears the note. A sync that finds a note of another sync
(``take_over``) records that sync as ``interrupted`` and gates the noted units itself,
rolling back if they fail, as the killed sync would have.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.host import journal
from reconciler.store.ledger import FILE_NAME as LEDGER_FILE
from reconciler.store.ledger import UNVERIFIED_KEY, Ledger

if TYPE_CHECKING:
    from reconciler.store.sync_store import Store

INTERRUPTED = "interrupted"  # history's result of a sync killed before it was recorded

Checks = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Note:
    """A sync under way: the revision it takes the host to, the units it must gate."""

    sync: str  # which sync wrote it (a random id): a sync's own note is not "interrupted"
    revision: str
    checks: Checks
    started_at: float
    trigger: str
    actions: tuple[str, ...] = ()

    def encode(self) -> dict[str, Any]:
        return {
            "sync": self.sync,
            "revision": self.revision,
            "checks": [list(c) for c in self.checks],
            "started_at": self.started_at,
            "trigger": self.trigger,
            "actions": list(self.actions),
        }

    @classmethod
    def decode(cls, data: dict[str, Any]) -> Note | None:
        """None for a note that is not one (hand-edited, from another version)."""
        try:
            checks = tuple((str(u), float(t)) for u, t in data["checks"])
            return cls(
                str(data["sync"]),
                str(data["revision"]),
                checks,
                float(data["started_at"]),
                str(data.get("trigger", "")),
                tuple(str(a) for a in data.get("actions", ())),
            )
        except (KeyError, TypeError, ValueError):
            return None


def new_id() -> str:
    return os.urandom(6).hex()


def load(store: Store) -> Note | None:
    return Note.decode(store.kv_json(UNVERIFIED_KEY))


def merge(first: Checks, more: Checks) -> Checks:
    """``first`` and the checks of ``more`` on units not in it."""
    seen = {u for u, _ in first}
    return first + tuple(c for c in more if c[0] not in seen)


def note(store: Store, state_dir: Path, note: Note) -> None:
    """Before the apply: the revision and its gate, in the ledger, then the database."""
    ledger = Ledger.load(state_dir / LEDGER_FILE)
    ledger.unverified = note.encode()
    ledger.save()
    store.kv_set(UNVERIFIED_KEY, json.dumps(note.encode(), sort_keys=True))


def take_over(store: Store, state_dir: Path, sync: str, revision: str) -> Checks:
    """Record another sync's note as ``interrupted``; the checks it left for ``revision``.

    The note stays until this sync writes its own (``note``) or is recorded (``clear``),
    so a kill before that leaves it to the next sync again.
    """
    found = load(store)
    if found is None or found.sync == sync:
        return () if found is None or found.revision != revision else found.checks
    reason = (
        f"killed before its health gate finished ({len(found.checks)} units to gate)"
        if found.checks
        else "killed before it was recorded"
    )
    with store.transaction():
        store.record_sync(
            found.revision,
            found.started_at,
            0.0,
            INTERRUPTED,
            list(found.actions),
            reason,
            found.trigger,
            summary="recorded by the next sync",
        )
        # the row is written: the note is this sync's now (a kill re-records only it)
        store.kv_set(UNVERIFIED_KEY, json.dumps({**found.encode(), "sync": sync}))
    journal.event(
        "sync.interrupted",
        f"the sync of revision {found.revision[:12]} started "
        f"{time.strftime('%H:%M:%S', time.localtime(found.started_at))} was {reason}"
        + ("; its gate runs now" if found.checks and found.revision == revision else ""),
        priority=4,
        revision=found.revision,
    )
    return found.checks if found.revision == revision else ()


def clear(store: Store, state_dir: Path, sync: str) -> None:
    """The sync is recorded: its note goes, from the ledger first (a database without the
    note gets it back from the ledger, never the reverse)."""
    found = load(store)
    if found is not None and found.sync != sync:
        return  # another sync's: recorded as interrupted by the sync that takes it over
    ledger = Ledger.load(state_dir / LEDGER_FILE)
    if ledger.unverified is not None:
        ledger.unverified = None
        ledger.save()
    if found is not None:
        store.kv_set(UNVERIFIED_KEY, None)
