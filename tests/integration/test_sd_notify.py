"""reconciler.host.sd_notify in a real ``Type=notify`` unit with ``WatchdogSec=`` on the host."""

from __future__ import annotations

import re
import textwrap
import time

import pytest

from reconciler.devtools import sandbox
from tests.conftest import ENV_INSIDE, UnitWriter
from tests.integration.test_journal import exec_python

pytestmark = pytest.mark.host

SERVICE = """\
import signal
import threading
from reconciler.host import sd_notify

stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
with sd_notify.Watchdog() as dog:
    assert dog.interval == 1.0, dog.interval
    sd_notify.ready("serving")
    while not stop.wait(0.5):
        sd_notify.status(f"serving, {dog.pings} watchdog pings")
    sd_notify.stopping()
"""

# Ready, then never pings: systemd must kill it. Proves the watchdog is really enforced here.
SILENT = """\
import time
from reconciler.host import sd_notify
sd_notify.ready("about to hang")
time.sleep(60)
"""

PROPERTIES = ("ActiveState", "SubState", "MainPID", "NRestarts", "Result", "StatusText")


def notify_unit(make_unit: UnitWriter, name: str, code: str, watchdog_sec: int) -> str:
    environment = " ".join(f"{k}={v}" for k, v in ENV_INSIDE.items())
    return make_unit(
        name,
        textwrap.dedent(
            f"""\
            [Service]
            Type=notify
            Environment={environment}
            ExecStart={exec_python(code)}
            WatchdogSec={watchdog_sec}
            Restart=on-failure
            RestartSec=100ms
            TimeoutStartSec=20
            """
        ),
    )


def show(host: sandbox.Host, unit: str) -> dict[str, str]:
    out = host.systemctl("show", "-p", ",".join(PROPERTIES), unit).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_notify_unit_with_watchdog_stays_alive(host: sandbox.Host, make_unit: UnitWriter) -> None:
    good = notify_unit(make_unit, "watchdog-good.service", SERVICE, watchdog_sec=2)
    silent = notify_unit(make_unit, "watchdog-silent.service", SILENT, watchdog_sec=1)
    host.systemctl("daemon-reload")
    host.systemctl("start", good, silent)  # returns once both sent READY=1

    first = show(host, good)
    assert (first["ActiveState"], first["SubState"]) == ("active", "running")
    assert first["StatusText"] == "serving"
    assert int(first["MainPID"]) > 0

    time.sleep(6.5)  # three watchdog periods of the good unit, six of the silent one

    later = show(host, good)
    assert (later["ActiveState"], later["SubState"]) == ("active", "running")
    assert later["MainPID"] == first["MainPID"]
    assert later["NRestarts"] == "0"
    assert later["Result"] == "success"
    match = re.fullmatch(r"serving, (\d+) watchdog pings", later["StatusText"])
    assert match, later["StatusText"]
    assert int(match.group(1)) >= 5  # one at start, then one a second
    messages = [e.get("MESSAGE", "") for e in host.journal(f"UNIT={good}")]
    assert not [m for m in messages if "atchdog timeout" in m]

    killed = show(host, silent)
    assert int(killed["NRestarts"]) >= 1 or killed["Result"] == "watchdog", killed
    silent_messages = [e.get("MESSAGE", "") for e in host.journal(f"UNIT={silent}")]
    assert [m for m in silent_messages if "atchdog timeout" in m]

    host.systemctl("stop", good)  # SIGTERM: STOPPING=1 and a clean exit
    stopped = show(host, good)
    assert (stopped["ActiveState"], stopped["Result"]) == ("inactive", "success")
