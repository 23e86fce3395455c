"""What must outlive the state database, in a small JSON file next to it (talks to the disk).

The database can be lost: deleted by hand, or moved aside as corrupt (which ``sync_store``
does itself). Ownership of unit files survives through the marker line in each file; this
ledger keeps the rest an operator relies on: the revision the host holds, the last good
revision (where a rollback goes), the bad-revision marks (which a host holding after a
rollback must not re-apply) and the note of a sync under way (``reconcile.interrupted``:
a revision whose health gate has not passed must not pass for good after a kill). It is
rewritten atomically (0600) only when one of them changes, and read back into a database
that has lost them (``restore``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reconciler.store.sync_store import Store

log = logging.getLogger("reconciler")
FILE_NAME = "ledger.json"
# the state database's kv key of the same note (reconcile.interrupted), JSON
UNVERIFIED_KEY = "unverified"
MAX_BAD = 100  # newest bad marks kept: a bound on the file and on restore's queries


@dataclass
class Ledger:
    path: Path
    applied: str | None = None
    last_good: str | None = None
    bad: dict[str, str] = field(default_factory=dict)  # revision -> reason, oldest first
    unverified: dict[str, Any] | None = None  # the note of a sync whose gate has not passed

    @classmethod
    def load(cls, path: Path) -> Ledger:
        """The ledger at ``path``; missing or unreadable: an empty one (with a warning)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            bad = {str(k): str(v) for k, v in dict(data.get("bad", {})).items()}
            note = data.get("unverified")
            return cls(
                path,
                _rev(data.get("applied")),
                _rev(data.get("last_good")),
                bad,
                note if isinstance(note, dict) else None,
            )
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("cannot read ledger '%s': %s; starting an empty one", path, exc)
            return cls(path)

    def save(self) -> None:
        """Write atomically (temp file, fsync, rename), mode 0600; a failure is a warning."""
        import tempfile  # only when something changed: every command loads the ledger

        data = {
            "applied": self.applied,
            "last_good": self.last_good,
            "bad": self.bad,
            "unverified": self.unverified,
        }
        tmp = ""
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{FILE_NAME}.", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                if tmp:
                    os.unlink(tmp)
            log.warning("cannot write ledger '%s': %s", self.path, exc.strerror or exc)

    def record(self, store: Store) -> None:
        """Copy the store's applied and last good revision; save if either changed."""
        applied, good = store.applied_revision(), store.last_good()
        if (applied, good) != (self.applied, self.last_good):
            self.applied, self.last_good = applied, good
            self.save()

    def mark_bad(self, revision: str, reason: str) -> None:
        self.bad.pop(revision, None)
        self.bad[revision] = reason
        self.bad = dict(list(self.bad.items())[-MAX_BAD:])
        self.save()


def _rev(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def restore(store: Store, ledger: Ledger) -> list[str]:
    """Put back into ``store`` what it lost and the ledger kept; returns what was restored."""
    done: list[str] = []
    for revision, reason in ledger.bad.items():
        if not store.is_bad(revision):
            store.mark_bad(revision, reason)
            done.append(f"bad mark of {revision[:12]}")
    if ledger.unverified is not None and store.kv_get(UNVERIFIED_KEY) is None:
        store.kv_set(UNVERIFIED_KEY, json.dumps(ledger.unverified, sort_keys=True))
        done.append("the note of a sync whose health gate had not finished")
    if store.applied_revision() is None:
        now = time.time()
        note = f"restored from {ledger.path.name}: the state database had lost it"
        for revision in dict.fromkeys(r for r in (ledger.last_good, ledger.applied) if r):
            store.record_sync(revision, now, 0.0, "applied", [], None, "ledger", summary=note)
            done.append(f"revision {revision[:12]}")
    if done:
        log.warning("state database had lost what %s kept: restored %s", ledger.path, done)
    return done
