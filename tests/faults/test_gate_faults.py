"""A sync killed during its health gate: the next sync must gate, not take the host for good.

Before the fix the killed sync left no history row and the host matched its revision, so the
next sync planned nothing and recorded ``noop``: the crash-looping revision went ungated and
became the last good one (a later bad commit was "rolled back" to it). Now the next sync
records the killed one as ``interrupted``, runs its gate and rolls back to the revision
before it; with the state database lost after the kill too (the note is in ``ledger.json``).
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.faults.conftest import FaultEnv, Report
from tests.integration.test_sync import base_files, service, wait_for

pytestmark = pytest.mark.host

GATE_SEC = 4  # the crasher is "not healthy after 4 s": each gate of it costs that


def kv(state: Path, key: str) -> str | None:
    conn = sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
    finally:
        conn.close()
    return None if row is None else str(row[0])


def n_restarts(env: FaultEnv, unit: str) -> int:
    return int(env.show(unit, "NRestarts").get("NRestarts") or 0)


@pytest.mark.parametrize("database", ["kept", "deleted after the kill"])
def test_kill_9_during_the_health_gate(fenv: FaultEnv, fault_report: Report, database: str) -> None:
    pinger, keep = fenv.name("pinger"), fenv.name("keep")
    unit = f"{pinger}.service"
    good = fenv.repo.commit(base_files(fenv, service(keep), service(pinger, health=GATE_SEC)))
    fenv.sync()
    kept = fenv.invocations(f"{keep}.service")
    crashing = service(pinger, template="crasher.service.j2", health=GATE_SEC)
    bad = fenv.repo.commit(base_files(fenv, service(keep), crashing), message="crash loop")

    proc = subprocess.Popen(
        fenv.argv("sync"), env=fenv.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    # the apply is done (the crasher runs and has crashed) and the gate waits on it
    wait_for(lambda: "exit 1" in (fenv.host.unit_dir / unit).read_text(), 30)
    wait_for(lambda: n_restarts(fenv, unit) >= 2, 30)
    pending, note = kv(fenv.state, "pending_jobs"), kv(fenv.state, "unverified")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    killed_at = time.monotonic()
    in_gate = proc.returncode == -9 and pending == "[]"
    if database != "kept":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{fenv.state / 'state.db'}{suffix}").unlink(missing_ok=True)
    else:  # a user's trial: status showed the killed sync's host like any other
        status = fenv.run("status", repo=None, host=None).stdout
        assert f"sync of {bad[:12]}: interrupted (killed before it was recorded)" in status

    after = fenv.run("sync")  # gates the killed sync's units, rolls back
    converge = fenv.converge(killed_at)
    fenv.settled([unit, f"{keep}.service"])
    rows = fenv.history()
    mine = [(r["result"], r["revision"]) for r in rows if r["trigger"] != "ledger"]
    history_right = mine[:4] == [
        ("noop", good),  # converge: holding at the good revision
        ("applied", good),  # the rollback
        ("rolled-back", bad),  # the gate, run by the next sync
        ("interrupted", bad),  # the killed sync, recorded by the next
    ]
    if database == "kept":
        history_right = history_right and mine[4] == ("applied", good)
    rolled_back = after.returncode == 1 and f"rolled back to {good[:12]}" in after.stderr
    restored = "exec sleep infinity" in (fenv.host.unit_dir / unit).read_text()

    # a later bad commit rolls back to the good revision, never to the ungated one
    worse = service(pinger, template="crasher.service.j2", health=GATE_SEC, again="yes")
    later = fenv.repo.commit(base_files(fenv, service(keep), worse), message="crash again")
    again = fenv.run("sync")
    fenv.settled([unit])
    nothing_lost = (
        fenv.invocations(f"{keep}.service") == kept and history_right and restored and in_gate
    )
    fault_report(
        f"kill -9 during the health gate (a crash-looping unit), database {database}",
        "the sync notes its revision and the units to gate before it applies (state database "
        "and ledger.json); the next sync records the killed one 'interrupted', runs its gate "
        "and rolls back to the last good revision; the ungated revision is never good",
        converge,
        nothing_lost,
    )
    assert in_gate, (proc.returncode, pending, note)
    assert note and json.loads(note)["revision"] == bad, note
    assert rolled_back, after.stdout + after.stderr
    assert restored and active(fenv, unit) == "active"
    assert history_right, mine[:6]
    assert f"{later[:12]} failed its health gate" in again.stderr, again.stderr
    assert f"rolled back to {good[:12]}" in again.stderr, again.stderr
    assert nothing_lost


def active(env: FaultEnv, unit: str) -> str:
    return env.show(unit, "ActiveState")["ActiveState"]
