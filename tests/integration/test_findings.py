"""Findings an operator can trust (issue 12): no crying wolf, no forgotten evidence.

Against the disposable systemd, with the monitoring pass run in this process (``now``
passed in where the hold-down matters) and the watch daemon where it is the subject.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from reconciler.store.finding_store import FindingStore
from tests.integration import test_monitor, test_sync, test_watch
from tests.integration.test_monitor import CRASH_FIVE_TIMES, Mon, finding, wait_for
from tests.integration.test_sync import Env, base_files, service

pytestmark = pytest.mark.host
mon = test_monitor.mon  # the fixture: own state dir, fast thresholds, the host's journal
env = test_sync.env  # the fixture: a config repository, syncs by the CLI


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


def test_a_failed_run_of_a_timer_job_is_a_failed_run_not_drift(mon: Mon, make_unit) -> None:  # type: ignore[no-untyped-def]
    """A user's trial: an inventory job its timer runs exited 4 and the monitor said
    "critical drift ... active: failed (want not failed)" while plan said nothing to do (a
    sync does not start a timer's job). It is a failed run, resolved by its next good run."""
    job = "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'test -e /run/tick-ok || exit 4'\n"
    svc = make_unit("tick.service", job)
    timer = svc.removesuffix(".service") + ".timer"
    (mon.host.unit_dir / timer).write_text("[Timer]\nOnCalendar=daily\n")
    try:
        mon.host.systemctl("daemon-reload")
        mon.desire(mon.unit(svc, start=False), mon.unit(timer))
        mon.host.systemctl("start", timer)
        mon.host.systemctl("start", svc, check=False)
        settle(mon, svc, {"ActiveState": "failed"}, 10)
        result = mon.run()
        found = [(f.finding.kind, f.finding.severity) for f in result.open if f.finding.unit == svc]
        assert found == [("failed_run", "warning")], found
        assert not [d for d in result.drift if d.unit == svc]
        (mon.host.root / "run/tick-ok").touch()
        mon.host.systemctl("start", svc)  # its next run is good
        assert [f for f in mon.run().open if f.finding.unit == svc] == []
    finally:
        mon.host.systemctl("stop", timer, svc, check=False)
        (mon.host.unit_dir / timer).unlink(missing_ok=True)
        (mon.host.root / "run/tick-ok").unlink(missing_ok=True)
        mon.host.systemctl("daemon-reload", check=False)


def monitor_json(env: Env, *config: str) -> dict[str, Any]:
    """``reconciler monitor --json``; ``config``: lines of a config file for this run."""
    argv = [test_sync.RECONCILER, "monitor", "--json", "--state-dir", str(env.state)]
    argv += ["--unit-dir", str(env.host.unit_dir), "--bus", env.host.bus_address]
    if config:
        path = env.state / "monitor-run.toml"
        path.write_text("\n".join(config) + "\n")
        argv += ["--config", str(path)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env.env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def open_keys(data: dict[str, Any], *units: str) -> set[tuple[str, str]]:
    return {(f["kind"], f["unit"]) for f in data["findings"] if f["unit"] in units}


def test_the_reconcilers_own_actions_are_not_incidents(env: Env) -> None:
    """A crash-looping push rolled back: the new unit it added is removed (its finding with
    it) and not left failed; the existing unit's crash loop stays one finding until the
    rolled-back run has been healthy for the hold-down (issue 12), also through the fix;
    the removed incarnation's crashes stay quiet."""
    web, new = env.name("web"), env.name("newbie")
    web_unit, new_unit = f"{web}.service", f"{new}.service"
    env.repo.commit(base_files(env, service(web, health=3)))
    env.sync()
    crashing = [service(u, template="crasher.service.j2", health=3) for u in (web, new)]
    env.repo.commit(base_files(env, *crashing), message="crash")
    proc = env.reconciler("sync", check=False)
    assert proc.returncode != 0 and "rolled back" in proc.stderr, proc.stderr
    env.host.journal_sync()
    opened = env.host.journal(f"UNIT={web_unit}", "RECONCILER_EVENT=crash_loop")
    assert len(opened) == 1, "the bad revision's crash loop is reported (once)"

    assert env.show(new_unit, "ActiveState")["ActiveState"] == "inactive"  # reset, not failed
    assert env.show(web_unit, "ActiveState")["ActiveState"] == "active"
    data = monitor_json(env)
    assert open_keys(data, web_unit, new_unit) == {("crash_loop", web_unit)}  # held open
    first_seen = [f["first_seen"] for f in data["findings"] if f["unit"] == web_unit]

    env.repo.commit(base_files(env, service(web, health=3), service(new, health=3)), "fix")
    fixed = env.sync()
    assert fixed["result"] == "applied"
    data = monitor_json(env)
    assert open_keys(data, web_unit, new_unit) == {("crash_loop", web_unit)}
    assert [f["first_seen"] for f in data["findings"] if f["unit"] == web_unit] == first_seen
    time.sleep(1.0)  # healthy for a 1 s hold-down now: it resolves, once
    data = monitor_json(env, "[monitor]", "hold_down_sec = 1")
    assert open_keys(data, web_unit, new_unit) == set()
    assert [f["kind"] for f in data["resolved"] if f["unit"] == web_unit] == ["crash_loop"]
    env.host.journal_sync()
    assert len(env.host.journal(f"UNIT={web_unit}", "RECONCILER_EVENT=crash_loop")) == 1
    assert len(env.host.journal(f"UNIT={new_unit}", "RECONCILER_EVENT=crash_loop")) == 1


def test_rollback_ends_with_a_monitoring_pass(env: Env) -> None:
    web = env.name("web")
    first = env.repo.commit(base_files(env, service(web, greeting="one")))
    env.sync()
    env.repo.commit(base_files(env, service(web, greeting="two")))
    env.sync()
    textfile = env.state / "reconciler.prom"  # rewritten by every monitoring pass
    before = textfile.stat().st_mtime
    time.sleep(0.05)
    assert "rolled back" in env.reconciler("rollback", first[:8]).stdout
    assert textfile.stat().st_mtime > before


STEADY_CRASHER = """\
[Unit]
StartLimitIntervalSec=0

[Service]
ExecStart=/bin/sh -c 'sleep 2.3; exit 3'
Restart=always
RestartSec=200ms
"""


def test_a_steady_crash_loop_near_the_threshold_is_one_finding(mon: Mon, make_unit) -> None:  # type: ignore[no-untyped-def]
    """A crash every ~2.5 s against 3 in 6 s: the count crosses the threshold every cycle."""
    mon.config.write_text(
        mon.config.read_text().replace("restart_window_sec = 120", "restart_window_sec = 6")
    )
    name = make_unit("steady-crasher.service", STEADY_CRASHER)
    mon.host.systemctl("daemon-reload")
    mon.desire(mon.unit(name))
    mon.run()
    mon.host.systemctl("start", name)
    opened: list[float] = []
    first_seen = set()
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline:
        result = mon.run()
        opened += [f.finding.first_seen for f in result.opened if f.key[0] == "crash_loop"]
        first_seen |= {f.finding.first_seen for f in result.open if f.key[0] == "crash_loop"}
        assert not [f for f in result.resolved if f.key[0] == "crash_loop"]
        time.sleep(0.4)
    assert len(opened) == 1, opened
    assert first_seen == set(opened)  # kept while it stays open


class Watch:
    """``reconciler watch`` from outside over the host's bus, on the sync's state dir."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.proc: subprocess.Popen[str] | None = None

    def entries(self, event: str, after: float) -> list[dict[str, Any]]:
        self.env.host.journal_sync()
        found = self.env.host.journal(f"RECONCILER_EVENT={event}")
        found = [e for e in found if int(e["__REALTIME_TIMESTAMP"]) / 1e6 >= after]
        return sorted(found, key=lambda e: int(e["__REALTIME_TIMESTAMP"]))

    def start(self) -> dict[str, Any]:
        env = {k: v for k, v in self.env.env().items() if k not in ("NOTIFY_SOCKET",)}
        argv = [test_sync.RECONCILER, "watch", "--state-dir", str(self.env.state)]
        argv += ["--unit-dir", str(self.env.host.unit_dir), "--bus", self.env.host.bus_address]
        argv += ["--config", str(self.env.state / "none.toml")]
        before = time.time()
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        wait_for(lambda: self.entries("watch.started", before), 20, "watch.started")
        return self.entries("watch.started", before)[0]

    def stop(self) -> None:
        if self.proc is not None:
            test_watch.stop(self.proc)
            self.proc = None


def test_a_crash_looping_revision_of_a_running_unit_is_one_finding_under_the_watch(
    env: Env,
) -> None:
    """Issue 12, a first user's trial: an existing unit's new revision crash-loops under the
    watch daemon; the sync's restart, the rollback's and a forced second sync's restarts are
    no proof of health: one crash_loop entry, not resolved (not yet healthy for the
    hold-down). Before: resolved at each restart by the reconciler, then opened again."""
    web = env.name("web")
    unit = f"{web}.service"
    env.repo.commit(base_files(env, service(web, health=3)))
    env.sync()
    watch = Watch(env)
    try:
        watch.start()
        before = time.time()
        crashing = service(web, template="crasher.service.j2", health=3)
        bad = env.repo.commit(base_files(env, crashing), message="crash")
        for argv in (("sync",), ("sync", "--force")):  # a second sync while it is bad
            proc = env.reconciler(*argv, check=False)
            assert proc.returncode != 0 and "rolled back" in proc.stderr, proc.stderr
        time.sleep(1.5)  # the watch's looks at the rolled-back run
        opened = [e for e in watch.entries("crash_loop", before) if e.get("UNIT") == unit]
        resolved = [
            e
            for e in watch.entries("finding.resolved", before)
            if e["MESSAGE"].startswith(f"resolved: crash_loop on {unit} ")
        ]
    finally:
        watch.stop()
    assert len(opened) == 1, [e["MESSAGE"] for e in opened]
    assert opened[0]["RECONCILER_REVISION"] == bad  # the revision being applied, not the last
    assert resolved == [], [e["MESSAGE"] for e in resolved]
    assert open_keys(monitor_json(env), unit) == {("crash_loop", unit)}  # first_seen kept


def test_the_watch_daemon_sees_what_a_sync_just_pushed(env: Env) -> None:
    """Units a sync adds are watched within 1 s of the sync's end, counted from their first
    start; after a restart STATUS= names the findings open. Prints the median latency."""
    steady = [env.name(f"pushed{i}") for i in range(5)]
    env.repo.commit(base_files(env, service(steady[0])))
    env.sync()
    watch = Watch(env)
    latencies: list[float] = []
    try:
        watch.start()
        for i in range(1, len(steady)):
            env.repo.commit(base_files(env, *(service(s) for s in steady[: i + 1])), f"add {i}")
            before = time.time()
            env.sync("--no-monitor")
            ended = time.time()
            wait_for(lambda b=before: watch.entries("watch.units", b), 10, "watch.units")  # type: ignore[misc]
            entry = watch.entries("watch.units", before)[-1]
            latencies.append(max(0.0, int(entry["__REALTIME_TIMESTAMP"]) / 1e6 - ended))
        assert max(latencies) < 1.0, latencies
        print(f"\nsync end -> unit watched: median {statistics.median(latencies):.3f}s {latencies}")

        crasher = env.name("pushed-crasher")  # no health gate: it stays, crashes to its limit
        files = base_files(
            env, *(service(s) for s in steady), service(crasher, "crasher.service.j2")
        )
        env.repo.commit(files, "a crasher")
        env.sync("--no-monitor")
        unit = f"{crasher}.service"
        wait_for(lambda: env.show(unit, "ActiveState")["ActiveState"] == "failed", 20, "limit")
        n_restarts = int(env.show(unit, "NRestarts")["NRestarts"])
        db = FindingStore(env.state / "state.db")
        try:
            wait_for(lambda: db.counters([unit])[unit].last_state == "failed", 10, "the look")
            assert db.counters([unit])[unit].crashes == n_restarts >= 3
            open_now = len(db.open_findings())
        finally:
            db.close()
        assert open_now >= 1
        watch.stop()
        started = watch.start()
        said = f"{open_now} finding{'s' * (open_now != 1)} open"
        assert said in started["MESSAGE"], started["MESSAGE"]
    finally:
        watch.stop()


CRASH_THREE_TIMES = """\
[Unit]
StartLimitIntervalSec=0

[Service]
ExecStart=/bin/sh -c 'n=$(cat /run/{tag}.count 2>/dev/null || echo 0); \\
  echo $((n+1)) > /run/{tag}.count; [ "$n" -ge 3 ] && exec sleep infinity; exit 3'
Restart=always
RestartSec=100ms
"""
WATCHDOG = """\
[Service]
Type=notify
NotifyAccess=all
ExecStart=/bin/sh -c 'systemd-notify --ready; exec sleep infinity'
WatchdogSec=1
Restart=on-watchdog
RestartSec=100ms
"""


def test_counters_describe_the_last_crash_even_unseen(mon: Mon, make_unit) -> None:  # type: ignore[no-untyped-def]
    """Crashes only the next read sees (the unit already runs again) keep their exit."""
    from reconciler.store.finding_store import FindingStore

    name = make_unit("exit3.service", CRASH_THREE_TIMES.format(tag=uuid.uuid4().hex[:8]))
    dog = make_unit("watchdog.service", WATCHDOG)
    mon.host.systemctl("daemon-reload")
    mon.desire(mon.unit(name), mon.unit(dog))
    mon.run()  # the baselines
    mon.host.systemctl("start", name)
    settle(mon, name, {"NRestarts": "3", "SubState": "running"}, 20)
    mon.run()
    counts = mon.counters(name)
    assert (counts["crashes"], counts["last_exit_code"], counts["last_signal"]) == (3, 3, None)
    db = FindingStore(mon.state / "state.db")
    try:
        events = db.load([name], observations_since=0, memory_since=0, events_since=0).events
    finally:
        db.close()
    assert [e.exit_code for e in events[name] if e.kind == "crash"] == [3, 3, 3]

    mon.host.systemctl("kill", "-s", "SEGV", name)  # seen crash, then two unseen SIGKILLs
    settle(mon, name, {"NRestarts": "4", "SubState": "running"}, 10)
    mon.run()
    assert mon.counters(name)["last_signal"] == "SIGSEGV"
    for n in (5, 6):
        mon.host.systemctl("kill", "-s", "KILL", name)
        settle(mon, name, {"NRestarts": str(n), "SubState": "running"}, 10)
    mon.run()
    counts = mon.counters(name)
    assert (counts["crashes"], counts["last_signal"], counts["last_exit_code"]) == (
        6,
        "SIGKILL",
        None,
    )

    mon.host.systemctl("start", dog)  # never pets its watchdog: killed after 1 s, restarted
    settle(mon, dog, {"NRestarts": "1", "SubState": "running"}, 10)
    mon.run()
    counts = mon.counters(dog)
    assert (counts["crashes"], counts["last_signal"], counts["last_result"]) == (
        1,
        "SIGABRT",
        "watchdog",
    )


OWN_TIMER = """\
[Timer]
OnActiveSec=1s
OnUnitActiveSec=1s
AccuracySec=100ms
"""


def test_the_reconcilers_own_timers_are_monitored(mon: Mon, make_unit) -> None:  # type: ignore[no-untyped-def]
    """Units ``install`` wrote (its manifest, not the inventory): missed and failed runs."""
    from reconciler.store.sync_store import Store

    sync = make_unit("gitops-sync.service", "[Service]\nType=oneshot\nExecStart=/bin/true\n")
    sync_timer = make_unit("gitops-sync.timer", OWN_TIMER)
    backup = make_unit("volume-backup.service", "[Service]\nType=oneshot\nExecStart=/bin/false\n")
    backup_timer = make_unit("volume-backup.timer", "[Timer]\nOnCalendar=daily\n")
    mon.host.systemctl("daemon-reload")
    mon.desire()  # the inventory manages nothing here
    with Store.open(mon.state / "state.db") as store:
        owned = [sync, sync_timer, backup, backup_timer]
        store.kv_set("install_owned", json.dumps(sorted(owned)))  # install's manifest
    mon.host.systemctl("start", sync_timer, backup_timer)
    wait_for(lambda: mon.show(sync_timer, "LastTriggerUSec")["LastTriggerUSec"] != "", 10, "run")
    healthy = mon.run()
    assert [f.key for f in healthy.open if f.finding.unit in owned] == []
    assert {u.unit for u in healthy.units} >= set(owned)

    mon.host.systemctl("start", backup, check=False)  # a failed run of an own job
    # and someone breaks the sync's service by hand: its timer stops triggering it
    (mon.host.unit_dir / sync).write_text("[Service]\nType=oneshot\nExecStart=relative/true\n")
    mon.host.systemctl("daemon-reload")
    wait_for(lambda: mon.show(sync_timer, "ActiveState")["ActiveState"] == "failed", 10, "fail")
    time.sleep(2.5)
    result = mon.run()
    assert finding(result, "failed_run", backup)["evidence"]["result"] == "exit-code"
    assert not [f for f in result.open if f.key == ("drift", backup)]  # a run, not drift
    assert finding(result, "missed_run", sync_timer)["evidence"]["overdue_sec"] > 1
