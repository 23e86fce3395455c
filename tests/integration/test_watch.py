"""``reconciler watch`` as a real ``Type=notify`` unit with ``WatchdogSec=`` inside the host.

The daemon runs inside the disposable host (its own state dir under /var/lib, the checkout
and venv bound at /opt), watching units that really crash. The desired state is written into
its store the way the last sync would have (as the monitor tests do). One more test runs the
CLI from outside against the host's bus, as a plain process without ``NOTIFY_SOCKET``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler.devtools import sandbox
from reconciler.model import DesiredUnit
from reconciler.store import sync_store
from reconciler.store.finding_store import FindingStore
from reconciler.store.sync_store import Store
from tests.conftest import ENV_INSIDE, PYTHON_INSIDE, UnitWriter
from tests.integration import test_monitor
from tests.integration.test_monitor import mon as mon

pytestmark = pytest.mark.host

RECONCILER = str(Path(sys.executable).parent / "reconciler")
CONFIG = """\
[monitor]
restart_threshold = 3
restart_window_sec = 120
watch_reread_sec = 30
"""
# Exits 1 every ~200 ms, restarted 100 ms later, forever.
CRASHER = """\
[Unit]
StartLimitIntervalSec=0

[Service]
ExecStart=/bin/sh -c 'sleep 0.2; exit 1'
Restart=always
RestartSec=100ms
"""
STEADY = "[Service]\nExecStart=/bin/sleep infinity\n"
DESIRE = """\
import json, sys
from pathlib import Path
from reconciler.store.sync_store import DESIRED_KEY, Store
with Store.open(Path(sys.argv[1])) as store:
    store.kv_set(DESIRED_KEY, sys.argv[2])
print("{}")
"""
COUNTERS = """\
import json, sys
from pathlib import Path
from reconciler.store.finding_store import FindingStore
db = FindingStore(Path(sys.argv[1]))
found = db.counters([sys.argv[2]])
print(json.dumps(found[sys.argv[2]].to_dict() if sys.argv[2] in found else {}))
"""
STATUS = re.compile(r"watching (\d+) units?, (\d+) findings? open, (\d+) events?, (\d+) dropped")
SYSTEMD_EXIT = "Main process exited"


@dataclass
class Daemon:
    host: sandbox.Host
    state: str  # inside the host
    config: str  # inside the host
    unit: str = ""

    def outside(self, path: str) -> Path:
        return self.host.root / path.lstrip("/")

    def python(self, code: str, *args: str) -> Any:
        """Run ``code`` inside the host (SQLite resolves /proc/PID/root to the outside /)."""
        argv = [PYTHON_INSIDE, "-c", code, *args]
        return json.loads(self.host.run(argv, env=ENV_INSIDE).stdout)

    def desire(self, *names: str) -> None:
        units = [
            DesiredUnit(n, (self.host.unit_dir / n).read_text(), n.rsplit(".", 1)[0]) for n in names
        ]
        self.python(DESIRE, f"{self.state}/state.db", sync_store.encode_desired(units))

    def write_unit(self, make_unit: UnitWriter) -> str:
        environment = " ".join(f"{k}={v}" for k, v in ENV_INSIDE.items())
        self.unit = make_unit(
            "watch.service",
            textwrap.dedent(
                f"""\
                [Service]
                Type=notify
                Environment={environment}
                ExecStart={PYTHON_INSIDE} -m reconciler watch --state-dir {self.state} \\
                  --config {self.config}
                ExecReload=/bin/kill -HUP $MAINPID
                WatchdogSec=3
                TimeoutStartSec=30
                TimeoutStopSec=30
                """
            ),
        )
        return self.unit

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.host.systemctl("show", "-p", ",".join(props), unit).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def status(self) -> tuple[int, ...]:
        text = self.show(self.unit, "StatusText")["StatusText"]
        match = STATUS.fullmatch(text)
        assert match, f"unexpected StatusText {text!r}"
        return tuple(int(g) for g in match.groups())

    def counters(self, unit: str) -> dict[str, Any]:
        found: dict[str, Any] = self.python(COUNTERS, f"{self.state}/state.db", unit)
        return found


@pytest.fixture
def daemon(host: sandbox.Host) -> Iterator[Daemon]:
    tag = uuid.uuid4().hex[:8]
    d = Daemon(host, f"/var/lib/watch-{tag}", f"/etc/reconciler-watch-{tag}.toml")
    d.outside(d.state).mkdir(parents=True)
    d.outside(d.config).write_text(CONFIG)
    yield d
    shutil.rmtree(d.outside(d.state), ignore_errors=True)
    d.outside(d.config).unlink(missing_ok=True)


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def journal(host: sandbox.Host, *match: str) -> list[dict[str, Any]]:
    host.journal_sync()
    return sorted(host.journal(*match), key=lambda e: int(e["__REALTIME_TIMESTAMP"]))


def crash_loop_latency(host: sandbox.Host, unit: str) -> float:
    """Seconds from the crash that crossed the threshold (the 3rd) to the finding's entry."""
    found = journal(host, "RECONCILER_EVENT=crash_loop", f"UNIT={unit}")
    assert len(found) == 1, found  # opened once, not re-alerted per crash
    at = int(found[0]["__REALTIME_TIMESTAMP"])
    systemd = journal(host, f"UNIT={unit}", "_PID=1")
    exits = [int(e["__REALTIME_TIMESTAMP"]) for e in systemd if SYSTEMD_EXIT in e["MESSAGE"]]
    assert len(exits) >= 3, exits
    return (at - exits[2]) / 1e6


def test_watch_daemon_notify_watchdog_crash_loop_reload_stop(
    host: sandbox.Host, make_unit: UnitWriter, daemon: Daemon
) -> None:
    crasher = make_unit("crasher.service", CRASHER)
    steady = make_unit("steady.service", STEADY)
    later = make_unit("later.service", CRASHER)
    watch = daemon.write_unit(make_unit)
    host.systemctl("daemon-reload")
    daemon.desire(crasher, steady)
    host.systemctl("start", steady)

    started = time.monotonic()
    host.systemctl("start", watch)  # returns once READY=1 came
    ready_sec = time.monotonic() - started
    first = daemon.show(watch, "ActiveState", "SubState", "MainPID", "WatchdogUSec")
    assert (first["ActiveState"], first["SubState"]) == ("active", "running"), first
    assert first["WatchdogUSec"] == "3s"
    assert daemon.status()[:2] == (2, 0)
    assert daemon.counters(steady)["last_state"] == "active"  # the baseline look

    # A crash loop from live signals, reported within a second of the crash crossing 3.
    host.systemctl("start", crasher)
    wait_for(
        lambda: journal(host, "RECONCILER_EVENT=crash_loop", f"UNIT={crasher}"),
        20,
        "the crash_loop finding in the journal",
    )
    host.systemctl("stop", crasher)
    latency = crash_loop_latency(host, crasher)
    print(
        f"\nwatch: READY after {ready_sec:.2f}s; crash loop in the journal {latency * 1000:.0f} ms"
        " after the 3rd crash (systemd's 'Main process exited')"
    )
    assert latency < 3.0, latency
    entry = journal(host, "RECONCILER_EVENT=crash_loop", f"UNIT={crasher}")[0]
    assert entry["MESSAGE_ID"] == "28fbbf3d64f5446ca3f7b18d5e9b6965"
    assert entry["PRIORITY"] == "2"
    wait_for(lambda: daemon.status()[1] >= 1, 5, "STATUS= to count the open finding")

    # Alive past several watchdog periods (3 s), same process, no watchdog kill.
    time.sleep(max(0.0, 10.0 - (time.monotonic() - started)))
    alive = daemon.show(watch, "ActiveState", "SubState", "MainPID", "NRestarts", "Result")
    assert (alive["ActiveState"], alive["SubState"]) == ("active", "running"), alive
    assert (alive["MainPID"], alive["NRestarts"]) == (first["MainPID"], "0")
    said = [e.get("MESSAGE", "") for e in journal(host, f"UNIT={watch}")]
    assert not [m for m in said if "atchdog timeout" in m]
    units, _open, events, dropped = daemon.status()
    assert (units, dropped) == (2, 0) and events > 10

    # SIGHUP (systemctl reload): the store's new desired unit is watched from now on.
    daemon.desire(crasher, steady, later)
    host.systemctl("reload", watch)
    wait_for(lambda: daemon.status()[0] == 3, 10, "STATUS= to show the third unit")
    host.systemctl("start", later)
    wait_for(
        lambda: journal(host, "RECONCILER_EVENT=crash_loop", f"UNIT={later}"),
        20,
        "the crash_loop finding of the unit added by the reload",
    )
    host.systemctl("stop", later)

    # SIGTERM (systemctl stop): STOPPING=1, a flush, a clean exit; counters readable after.
    host.systemctl("stop", watch)
    stopped = daemon.show(watch, "ActiveState", "Result", "ExecMainStatus")
    assert stopped == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
    pid = first["MainPID"]
    assert journal(host, "RECONCILER_EVENT=watch.stopped", f"_PID={pid}")
    assert journal(host, "RECONCILER_EVENT=watch.started", f"_PID={pid}")
    for unit in (crasher, later):
        counts = daemon.counters(unit)
        assert counts["crashes"] >= 3 and counts["starts"] >= 3, counts
        assert counts["last_state"] in ("inactive", "failed"), counts  # stopped, flushed
    assert daemon.counters(steady)["starts"] == 0  # running before the baseline: not counted


def run_outside(
    host: sandbox.Host, tmp_path: Path, units: list[str], config: str, *flags: str
) -> tuple[subprocess.Popen[str], Path]:
    """``reconciler watch`` from outside over the host's bus, as a plain process."""
    state = tmp_path / "state"
    path = tmp_path / "config.toml"
    path.write_text(config)
    with Store.open(state / "state.db") as store:
        desired = [
            DesiredUnit(u, (host.unit_dir / u).read_text(), u.removesuffix(".service"))
            for u in units
        ]
        store.kv_set(sync_store.DESIRED_KEY, sync_store.encode_desired(desired))
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env["RECONCILER_JOURNAL_SOCKET"] = str(host.journal_socket)
    argv = [RECONCILER, "watch", "--state-dir", str(state), "--unit-dir", str(host.unit_dir)]
    argv += ["--bus", host.bus_address, "--config", str(path), *flags]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    return proc, state


def starts(state: Path, units: list[str]) -> list[int]:
    """Starts counted per unit (-1: no counters yet)."""
    db = FindingStore(state / "state.db")
    try:
        found = db.counters(units)
    finally:
        db.close()
    return [found[u].starts if u in found else -1 for u in units]


def stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM; the process must exit 0 without a traceback. Returns its stderr."""
    try:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    return err


def test_watch_from_outside_exits_cleanly_on_sigterm(
    host: sandbox.Host, make_unit: UnitWriter, tmp_path: Path
) -> None:
    steady = make_unit("steady.service", STEADY)
    host.systemctl("daemon-reload")
    proc, state = run_outside(host, tmp_path, [steady], CONFIG)
    try:
        wait_for(lambda: starts(state, [steady]) == [0], 20, "the baseline look")
        host.systemctl("start", steady)  # a signal through dbus-daemon, seen from outside
        wait_for(lambda: starts(state, [steady]) == [1], 10, "the start counted from the signal")
    finally:
        stop(proc)


def test_watch_counts_drops_reports_them_once_and_catches_up(
    host: sandbox.Host, make_unit: UnitWriter, tmp_path: Path
) -> None:
    units = [make_unit(f"burst{i:02d}.service", STEADY) for i in range(60)]
    host.systemctl("daemon-reload")
    before = int(time.time() * 1e6)
    proc, state = run_outside(host, tmp_path, units, CONFIG + "watch_queue_size = 16\n")
    try:
        wait_for(lambda: set(starts(state, units)) == {0}, 20, "the baseline looks")
        proc.send_signal(signal.SIGSTOP)  # the daemon falls behind: dbus-daemon buffers ...
        host.systemctl("start", *units)
        proc.send_signal(signal.SIGCONT)  # ... ~300 signals, read at once, for a queue of 16
        wait_for(lambda: set(starts(state, units)) == {1}, 30, "every start, read again")
    finally:
        stop(proc)
    # the collector's figures reach the Prometheus textfile (written by the next pass)
    from tests.unit.test_textfile import parse

    subprocess.run(
        [RECONCILER, "monitor", "--state-dir", str(state), "--unit-dir", str(host.unit_dir),
         "--bus", host.bus_address, "--config", str(tmp_path / "config.toml")],
        check=True, capture_output=True, timeout=60,
        env={**os.environ, "RECONCILER_JOURNAL_SOCKET": str(host.journal_socket)},
    )  # fmt: skip
    figures = parse((state / "reconciler.prom").read_text())
    assert figures[("reconciler_watch_dropped_total", ())] > 0
    assert figures[("reconciler_watch_events_total", ())] > 0
    assert figures[("reconciler_watch_units", ())] == 60
    assert figures[("reconciler_watch_queue_size", ())] == 16
    assert ("reconciler_watch_queue_depth", ()) in figures
    assert ("reconciler_watch_events_per_second", ()) in figures
    assert figures[("reconciler_watch_up", ())] == 0  # stopped: said so, not stale figures
    host.journal_sync()
    dropped = [
        e
        for e in host.journal("RECONCILER_EVENT=watch.dropped")
        if int(e["__REALTIME_TIMESTAMP"]) >= before
    ]
    assert len(dropped) == 1, dropped  # once per interval, not per drop
    assert int(dropped[0]["RECONCILER_DROPPED"]) > 0
    assert dropped[0]["PRIORITY"] == "4"


def test_watch_include_and_exclude_patterns(
    host: sandbox.Host, make_unit: UnitWriter, tmp_path: Path
) -> None:
    wanted = make_unit("incl-a.service", STEADY)
    skipped = make_unit("incl-skip.service", STEADY)
    managed = make_unit("managed.service", STEADY)  # desired, but not matching --include
    tag = wanted.removesuffix(".service").rsplit("-", 1)[1]
    host.systemctl("daemon-reload")
    pattern = f"incl-*-{tag}.service"
    proc, state = run_outside(
        host, tmp_path, [managed], CONFIG, "--include", pattern, "--exclude", "*-skip-*"
    )
    try:
        wait_for(
            lambda: journal(
                host, "RECONCILER_EVENT=watch.started", f"RECONCILER_INCLUDE={pattern}"
            ),
            20,
            "READY (watch.started in the journal)",
        )
        # Not loaded when the daemon listed the units (inactive, unloaded): adopted on its
        # first signal, its start counted.
        host.systemctl("start", wanted, skipped, managed)
        wait_for(lambda: starts(state, [wanted]) == [1], 10, "the included unit's start")
        host.systemctl("restart", wanted)
        wait_for(lambda: starts(state, [wanted]) == [2], 10, "its restart")
        assert starts(state, [skipped, managed]) == [-1, -1]
    finally:
        stop(proc)


def test_watch_reread_takes_policies_reloads_and_samples_as_they_come(
    mon: test_monitor.Mon, make_unit: UnitWriter
) -> None:
    """``Watcher.reread`` (replies taken one by one, no dict a unit): Restart= of each
    service, NeedDaemonReload newly set (a pass is due) then unchanged, a memory sample of
    the running service (MemoryCurrent is unset in the host: its cgroup's processes)."""
    from reconciler.monitor.watch.handler import Watcher
    from reconciler.systemd.client import Systemd

    steady = make_unit("steady.service", STEADY + "Restart=on-failure\n")
    idle = make_unit("idle.service", "[Service]\nType=oneshot\nExecStart=/bin/true\n")
    mon.host.systemctl("daemon-reload")
    mon.host.systemctl("start", steady)
    mon.desire(mon.unit(steady), mon.unit(idle, start=False))
    store = Store.open(mon.state / "state.db")
    systemd = Systemd(mon.host.bus_address)
    watcher = Watcher(mon.settings(), store, systemd)
    try:
        watcher.start()
        assert watcher.recorder.latest[steady].memory_current is None  # a read: no sample
        assert watcher.reread(memory=True) is False
        assert watcher.views[steady].restart_policy == "on-failure"
        assert watcher.views[idle].restart_policy == "no"
        sample = watcher.recorder.latest[steady].memory_current
        assert sample is not None and sample > 0
        assert watcher.recorder.latest[idle].memory_current is None  # not running
        (mon.host.unit_dir / steady).write_text(STEADY + "Restart=always\n")  # no reload
        assert watcher.reread(memory=False) is True  # newly: drift, a pass is due
        assert watcher.views[steady].live.need_daemon_reload
        assert not watcher.views[idle].live.need_daemon_reload
        assert watcher.reread(memory=False) is False  # still, not newly
    finally:
        watcher.close()
        systemd.close()
        store.close()
        mon.host.systemctl("stop", steady)
