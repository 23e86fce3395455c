"""Faults of the monitor's own making (issue 12): the reconciler's actions taken for incidents.

A crash-looping push of a new unit: the health gate fails, the rollback removes the unit. The
monitor must report the incident once, not leave the host degraded, resolve the finding at
the rollback's own pass, and stay quiet when the fix is redeployed.
"""

from __future__ import annotations

import json
import time

from tests.faults.conftest import FaultEnv, Report
from tests.integration.test_sync import base_files, service


def test_crash_looping_new_unit_rolled_back_then_fixed(
    fenv: FaultEnv, fault_report: Report
) -> None:
    keep, new = fenv.name("keep"), fenv.name("new")
    unit = f"{new}.service"
    fenv.repo.commit(base_files(fenv, service(keep, health=3)))
    fenv.sync()
    before = fenv.invocations(f"{keep}.service")
    started = time.monotonic()
    crashing = service(new, template="crasher.service.j2", health=3)
    fenv.repo.commit(base_files(fenv, service(keep, health=3), crashing), message="crash")
    proc = fenv.run("sync")
    assert proc.returncode == 1 and "rolled back" in proc.stderr, proc.stderr
    left = fenv.show(unit, "ActiveState")["ActiveState"]
    monitor = json.loads(fenv.run("monitor", "--json", repo=None, host=None).stdout)
    still_open = [f for f in monitor["findings"] if f["unit"] == unit]
    fenv.repo.commit(base_files(fenv, service(keep, health=3), service(new, health=3)), "fix")
    converge = fenv.converge(started)
    after = json.loads(fenv.run("monitor", "--json", repo=None, host=None).stdout)
    fenv.host.journal_sync()
    opened = fenv.host.journal(f"UNIT={unit}", "RECONCILER_EVENT=crash_loop")
    nothing_lost = fenv.invocations(f"{keep}.service") == before
    fault_report(
        "a crash-looping new unit, rolled back, then fixed",
        "rolled back; the removed unit's failed state reset (host not degraded); its crash "
        "loop reported once and resolved by the rollback's own pass; the fix redeployed opens "
        "nothing (what the removed incarnation did is not counted against it)",
        converge,
        nothing_lost,
    )
    assert left == "inactive", left
    assert still_open == [], still_open
    assert [f for f in after["findings"] if f["unit"] == unit] == []
    assert len(opened) == 1, opened
    assert nothing_lost
