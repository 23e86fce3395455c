"""``reconciler status``'s table: an unfinished sync and the revisions marked bad are said
(a user's trial: a sync killed in its gate and a host held at a good revision looked like
any other), and the lock it asks shows whether the sync still runs."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from reconciler.cli.status import render_table
from reconciler.host import lock

BASE = {
    "host": "h1", "revision": "a" * 40, "last_sync": None, "suspended": None,
    "automatic": {"on": True, "why": ""}, "units": [], "findings": [],
}  # fmt: skip


def test_an_interrupted_sync_and_a_bad_revision_are_said() -> None:
    bad = {"revision": "b" * 40, "reason": "health gate failed: web.service", "marked_at": 0.0}
    data = {**BASE, "unfinished_sync": {"revision": "b" * 40, "running": False, "gated": 2}}
    text = render_table({**data, "bad_revisions": [bad]})
    assert (
        f"sync of {'b' * 12}: interrupted (killed before it was recorded); the next sync "
        "takes it over and runs its health gate (2 units; a rollback if unhealthy)" in text
    )
    assert f"marked bad: {'b' * 12} at " in text and "health gate failed: web.service" in text
    unfinished = {"revision": "b" * 40, "running": True, "gated": 0}
    running = render_table({**BASE, "unfinished_sync": unfinished})
    assert f"sync of {'b' * 12}: under way" in running
    assert "sync of" not in render_table(BASE) and "marked bad" not in render_table(BASE)


def test_busy_tells_a_held_lock_from_a_free_one(tmp_path: Path) -> None:
    path = tmp_path / "sync.lock"
    assert not lock.busy(path)  # never made
    with lock.hold(path, timeout=1):  # busy opens the file anew: another open file
        assert lock.busy(path)
    assert not lock.busy(path)
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert lock.busy(path)
    finally:
        os.close(fd)
