"""Findings an operator can trust (issue 12): no crying wolf, no forgotten evidence.

Against the disposable systemd, with the monitoring pass run in this process (``now``
passed in where the hold-down matters) and the watch daemon where it is the subject.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.integration import test_monitor
from tests.integration.test_monitor import CRASH_FIVE_TIMES, Mon, finding, wait_for

pytestmark = pytest.mark.host
mon = test_monitor.mon  # the fixture: own state dir, fast thresholds, the host's journal


def crash_five_times(mon: Mon, make_unit, stem: str) -> str:  # type: ignore[no-untyped-def]
    name: str = make_unit(f"{stem}.service", CRASH_FIVE_TIMES.format(tag=uuid.uuid4().hex[:8]))
    return name


def settle(mon: Mon, name: str, props: dict[str, str], timeout: float) -> None:
    wait_for(lambda: mon.show(name, *props) == props, timeout, f"{name}: {props}")


def test_every_open_findings_bundle_stays_on_disk(mon: Mon, make_unit) -> None:  # type: ignore[no-untyped-def]
    """No [diagnostics] limits: the defaults (256 MiB, 14 days) keep every bundle."""
    names = [crash_five_times(mon, make_unit, f"evidence{i}") for i in range(3)]
    mon.host.systemctl("daemon-reload")
    mon.desire(*(mon.unit(n) for n in names))
    mon.run()
    for name in names:
        mon.host.systemctl("start", name)
        settle(mon, name, {"NRestarts": "5", "SubState": "running"}, 20)
        finding(mon.run(), "crash_loop", name)
    result = mon.run()
    bundles = [f.bundle for f in result.open if f.finding.kind == "crash_loop"]
    assert len(bundles) == 3
    for path in bundles:
        assert path is not None and Path(path).exists(), path


LONG_JOB_TIMER = """\
[Timer]
OnActiveSec=1s
OnUnitActiveSec=1min
AccuracySec=100ms
"""


def test_a_long_timer_job_running_is_not_drift(mon: Mon, make_unit) -> None:  # type: ignore[no-untyped-def]
    """While its service runs a timer has no next elapse: that is a run, not drift."""
    svc = make_unit("backup.service", "[Service]\nType=oneshot\nExecStart=/bin/sleep 8\n")
    timer = svc.removesuffix(".service") + ".timer"
    (mon.host.unit_dir / timer).write_text(LONG_JOB_TIMER)
    try:
        mon.host.systemctl("daemon-reload")
        mon.desire(mon.unit(svc, start=False), mon.unit(timer))
        mon.host.systemctl("start", timer)
        settle(mon, svc, {"ActiveState": "activating"}, 10)
        assert mon.show(timer, "NextElapseUSecMonotonic")["NextElapseUSecMonotonic"] in (
            "",
            "0",
            "infinity",
        )
        result = mon.run()
        assert [f.key for f in result.open if f.finding.unit in (svc, timer)] == []
        assert not [d for d in result.drift if d.unit == timer]
    finally:
        mon.host.systemctl("stop", timer, svc, check=False)
        (mon.host.unit_dir / timer).unlink(missing_ok=True)
        mon.host.systemctl("daemon-reload", check=False)
