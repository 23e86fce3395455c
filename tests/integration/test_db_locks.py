"""store.db against real SQLite and the kernel's lock table: opening twice keeps the locks.

A sync opens the state database more than once in one process (the own-units step, the
sync, the monitoring pass). Closing any fd of the file drops every POSIX lock the process
holds on it, SQLite's included; another process then takes the database for unused,
checkpoints and truncates under a live reader, whose next check reads "unable to get the
page" and moves a healthy database aside (seen in test_two_syncs_at_once).
"""

from __future__ import annotations

import os
from pathlib import Path

from reconciler.store.sync_store import Store


def locks_on(path: Path) -> list[str]:
    """Lines of /proc/locks held by this process on ``path``'s inode."""
    st = path.stat()
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    lines = Path("/proc/locks").read_text().splitlines()
    return [ln for ln in lines if f" {os.getpid()} " in ln and f" {dev} " in ln]


def test_a_second_open_keeps_the_first_connections_locks(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with Store.open(db) as first:
        first.record_sync("r1", 1.0, 0.1, "applied", [], None, "timer")
        held = locks_on(db)
        assert held, "SQLite holds a shared lock on a WAL database while it is open"
        with Store.open(db) as second:
            assert second.applied_revision() == "r1"
            assert len(locks_on(db)) >= len(held), "the first connection lost its lock"
        assert first.applied_revision() == "r1"
