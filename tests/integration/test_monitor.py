"""Monitoring passes against the disposable systemd: real units that really crash, leak, miss runs.

Each test has its own state dir (its own SQLite, diagnostics and textfile) and uniquely named
units. The desired state is written into the store directly (as the last sync would have),
except for drift, which starts from a real sync of a real git repository. Passes run in this
process (``monitor.run_pass``, ``now`` passed in where time matters) and, where a new process
matters (counters surviving a restart), as the whole ``reconciler monitor`` CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler import config, monitor
from reconciler.devtools import sandbox
from reconciler.model import DesiredUnit
from reconciler.store import sync_store
from reconciler.store.finding_store import FindingStore
from reconciler.store.sync_store import Store
from tests.integration.gitrepo import ConfigRepo

pytestmark = pytest.mark.host

RECONCILER = str(Path(sys.executable).parent / "reconciler")
FAST = """
[monitor]
restart_threshold = 3
restart_window_sec = 120
memory_min_samples = 4
memory_min_span_sec = 2
memory_min_slope_bytes_per_hour = 10485760
memory_min_r2 = 0.8
missed_run_grace_sec = 1
"""


@dataclass
class Mon:
    host: sandbox.Host
    state: Path
    config: Path

    def settings(self) -> config.Settings:
        return config.load(
            self.config,
            {
                "state_dir": self.state,
                "unit_dir": self.host.unit_dir,
                "run_dir": self.state / "run",
                "bus": self.host.bus_address,
            },
        )

    def desire(self, *units: DesiredUnit) -> None:
        with Store.open(self.state / "state.db") as store:
            store.kv_set(sync_store.DESIRED_KEY, sync_store.encode_desired(list(units)))

    def unit(self, name: str, *, enable: bool = False, start: bool = True) -> DesiredUnit:
        content = (self.host.unit_dir / name).read_text()
        return DesiredUnit(name, content, name.rsplit(".", 1)[0], enable=enable, start=start)

    def run(self, now: float | None = None) -> monitor.PassResult:
        return monitor.run_pass(self.settings(), now=now)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [
            RECONCILER,
            *args,
            "--state-dir",
            str(self.state),
            "--unit-dir",
            str(self.host.unit_dir),
            "--bus",
            self.host.bus_address,
        ]
        env = {
            **os.environ,
            "RECONCILER_JOURNAL_SOCKET": str(self.host.journal_socket),
            "RECONCILER_CONFIG": str(self.config),
        }
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        return proc

    def counters(self, unit: str) -> dict[str, Any]:
        db = FindingStore(self.state / "state.db")
        try:
            return db.counters([unit])[unit].to_dict()
        finally:
            db.close()

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.host.systemctl("show", "-p", ",".join(props), unit).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@pytest.fixture
def mon(host: sandbox.Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mon]:
    state = tmp_path / "state"
    state.mkdir()
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        FAST + f'\n[diagnostics]\njournal_command = ["journalctl", "--root={host.root}"]\n'
    )
    monkeypatch.setenv("RECONCILER_JOURNAL_SOCKET", str(host.journal_socket))
    yield Mon(host, state, cfg)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def finding(result: monitor.PassResult, kind: str, unit: str) -> dict[str, Any]:
    for f in result.open:
        if f.key == (kind, unit):
            return f.to_dict()
    raise AssertionError(f"no open {kind} finding for {unit}: {[f.key for f in result.open]}")


def bundle_members(path: str) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {
            m.name.split("/", 1)[1]: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


CRASH_FIVE_TIMES = """\
[Unit]
StartLimitIntervalSec=0

[Service]
ExecStart=/bin/sh -c 'n=$(cat /run/{tag}.count 2>/dev/null || echo 0); \\
  echo $((n+1)) > /run/{tag}.count; echo "crash-test attempt $n"; \\
  [ "$n" -ge 5 ] && exec sleep infinity; exit 1'
Restart=always
RestartSec=100ms
"""


def test_crash_loop_counts_bundle_and_counters_survive_a_new_process(mon: Mon, make_unit) -> None:  # type: ignore[no-untyped-def]
    tag = uuid.uuid4().hex[:8]
    name = make_unit("crasher.service", CRASH_FIVE_TIMES.format(tag=tag))
    mon.host.systemctl("daemon-reload")
    mon.desire(mon.unit(name))
    first = mon.run()  # the baseline: the unit has not run yet
    assert not [f for f in first.open if f.finding.unit == name and f.finding.kind != "drift"]
    mon.host.systemctl("start", name)
    settled = {"NRestarts": "5", "SubState": "running"}
    wait_for(lambda: mon.show(name, *settled) == settled, 20, "five crashes, then running")

    second = mon.run()
    loop = finding(second, "crash_loop", name)
    assert loop["severity"] == "critical"
    assert loop["evidence"]["count"] == 5
    counts = mon.counters(name)
    assert (counts["crashes"], counts["starts"]) == (5, 6)
    assert loop["id"] in {f.id for f in second.opened}

    # the bundle holds the unit's own journal lines
    (bundle,) = [f.bundle for f in second.opened if f.key == ("crash_loop", name)]
    assert bundle is not None
    members = bundle_members(bundle)
    lines = [json.loads(line) for line in members["journal.json"].splitlines() if line]
    said = [e.get("MESSAGE") for e in lines]
    assert "crash-test attempt 0" in said and "crash-test attempt 4" in said
    assert json.loads(members["properties.json"])["Id"] == name
    assert f"unit/{name}" in members
    assert {"finding.json", "kernel.txt", "commands.txt"} <= set(members)

    # opened once: the next pass keeps it open and does not alert again
    third = mon.run()
    assert ("crash_loop", name) in {f.key for f in third.open}
    assert not [f for f in third.opened if f.finding.unit == name]

    # a new process (the CLI) reads the same counters and does not count again
    out = json.loads(mon.cli("monitor", "--json").stdout)
    assert [u["counters"]["crashes"] for u in out["units"] if u["unit"] == name] == [5]
    assert mon.counters(name)["crashes"] == 5

    # one more crash (killed, restarted before the next look): counted once
    mon.host.systemctl("kill", "-s", "KILL", name)
    settled = {"NRestarts": "6", "SubState": "running"}
    wait_for(lambda: mon.show(name, *settled) == settled, 10, "the restart")
    mon.cli("monitor")
    assert mon.counters(name)["crashes"] == 6
    mon.cli("monitor")
    assert mon.counters(name)["crashes"] == 6

    def logged() -> list[dict[str, Any]]:
        mon.host.journal_sync()
        return mon.host.journal(f"UNIT={name}", "RECONCILER_EVENT=crash_loop")

    # journald may make an entry readable a moment after --sync returns (seen with 252)
    wait_for(lambda: bool(logged()), 10, "the crash-loop entry in the journal")
    time.sleep(0.5)
    entries = logged()
    assert len(entries) == 1, "a finding is logged once, when opened"
    assert entries[0]["PRIORITY"] == "2"


def test_killed_unit_records_exit_signal_and_notifies(mon: Mon, make_unit) -> None:  # type: ignore[no-untyped-def]
    from reconciler.monitor import alert_webhook
    from tests.integration.test_alert_webhook import Receiver

    receiver = Receiver()
    secret = mon.state / "notify.secret"
    secret.write_text("hook-secret\n")
    with mon.config.open("a") as fh:
        fh.write(f'\n[notify]\nurl = "{receiver.url}"\nsecret_file = "{secret}"\n')
    try:
        name = make_unit("victim.service", "[Service]\nExecStart=/bin/sleep infinity\n")
        mon.host.systemctl("daemon-reload")
        mon.host.systemctl("start", name)
        mon.desire(mon.unit(name))
        mon.run()
        mon.host.systemctl("kill", "-s", "KILL", name)
        wait_for(lambda: mon.show(name, "ActiveState")["ActiveState"] == "failed", 10, "failed")
        result = mon.run()
        counts = mon.counters(name)
        assert (counts["crashes"], counts["last_signal"]) == (1, "SIGKILL")
        assert counts["last_state"] == "failed"
        assert finding(result, "drift", name)["evidence"]["active"] == "failed (signal)"
        mon.host.systemctl("start", name)
        mon.run()
    finally:
        receiver.close()
    for headers, body in receiver.requests:
        signature = headers[alert_webhook.SIGNATURE_HEADER]
        assert alert_webhook.verify(b"hook-secret", body, signature)
    sent = [json.loads(body) for _, body in receiver.requests]
    events = [
        (e["event"], e["finding"]["kind"])
        for p in sent
        for e in p["events"]
        if e["finding"]["unit"] == name
    ]
    assert events == [("finding.opened", "drift"), ("finding.resolved", "drift")]


START_LIMIT = """\
[Unit]
StartLimitBurst=3
StartLimitIntervalSec=10

[Service]
ExecStart=/bin/sh -c 'echo start-limit-test; exit 1'
Restart=always
RestartSec=100ms
"""


def test_start_limit_hit(mon: Mon, make_unit) -> None:  # type: ignore[no-untyped-def]
    name = make_unit("limited.service", START_LIMIT)
    mon.host.systemctl("daemon-reload")
    mon.desire(mon.unit(name))
    mon.run()
    mon.host.systemctl("start", name)
    wait_for(lambda: mon.show(name, "ActiveState")["ActiveState"] == "failed", 15, "the limit")
    result = mon.run()
    hit = finding(result, "start_limit_hit", name)
    assert hit["severity"] == "critical"
    assert hit["evidence"]["n_restarts"] == 3
    # systemd 252 keeps Result=exit-code here; the monitor infers the limit from Restart=
    assert mon.show(name, "Result")["Result"] == "exit-code"
    assert mon.counters(name)["crashes"] == 3  # the refused restart is not a run
    drift = finding(result, "drift", name)
    assert drift["evidence"]["active"].startswith("failed")


LEAK = """\
[Service]
ExecStart=/usr/bin/python3 -c "import time, itertools; keep = []; \\
  [keep.append(bytearray(200000)) or time.sleep(0.1) for _ in itertools.count()]"
"""


def test_memory_growth(mon: Mon, make_unit) -> None:  # type: ignore[no-untyped-def]
    name = make_unit("leaky.service", LEAK)
    mon.host.systemctl("daemon-reload")
    mon.host.systemctl("start", name)
    mon.desire(mon.unit(name))
    results = []
    for i in range(12):  # 6 samples are the minimum; a slow pass may miss one (a loaded CI)
        results.append(mon.run())
        if i >= 5 and any(f.key == ("memory_growth", name) for f in results[-1].open):
            break
        time.sleep(0.6)
    memory = [next(u.memory for u in r.units if u.unit == name) for r in results]
    assert all(m is not None and m > 0 for m in memory), memory
    assert memory[-1] > memory[0] + 2_000_000, memory  # ~2 MB/s really allocated
    growth = finding(results[-1], "memory_growth", name)
    assert growth["evidence"]["slope_bytes_per_hour"] > 10 * 2**20
    assert growth["evidence"]["r2"] >= 0.8


def test_cgroup_memory_reads_the_units_processes(mon: Mon, make_unit) -> None:  # type: ignore[no-untyped-def]
    from reconciler.monitor import live

    name = make_unit("sleeper.service", "[Service]\nExecStart=/bin/sleep infinity\n")
    mon.host.systemctl("daemon-reload")
    mon.host.systemctl("start", name)
    props = mon.show(name, "ControlGroup", "MainPID", "MemoryCurrent")
    assert props["ControlGroup"].startswith(f"/{mon.host.name}/")  # the outside path
    rss = live.read_cgroup_memory(props["ControlGroup"])
    assert rss is not None and 100_000 < rss < 50_000_000
    assert live.read_cgroup_memory("/no/such/cgroup") is None


def test_a_runs_cgroup_is_asked_once_for_its_memory(
    mon: Mon, make_unit, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Without memory accounting a service is measured by its cgroup: its ControlGroup and
    the unset MemoryCurrent are asked once a run, not at every pass."""
    from collections import Counter

    from reconciler.systemd import client

    asked: Counter[str] = Counter()
    real = client.build_get

    def counting(serial: int, path: str, interface: str, prop: str) -> bytes:
        asked[prop] += 1
        return real(serial, path, interface, prop)

    monkeypatch.setattr(client, "build_get", counting)
    name = make_unit("measured.service", "[Service]\nExecStart=/bin/sleep infinity\n")
    mon.host.systemctl("daemon-reload")
    mon.host.systemctl("start", name)
    mon.desire(mon.unit(name))
    unaccounted = mon.show(name, "MemoryCurrent")["MemoryCurrent"] == "[not set]"
    seen = []
    for restart in (False, False, True, False):
        if restart:
            mon.host.systemctl("restart", name)
        asked.clear()
        result = mon.run()
        seen.append((asked["ControlGroup"], asked["MemoryCurrent"]))
        memory = next(u.memory for u in result.units if u.unit == name)
        assert memory is not None and memory > 0
    if unaccounted:  # a new run (the restart) is asked again
        assert seen == [(1, 1), (0, 0), (1, 1), (0, 0)], seen
    else:  # accounted: MemoryCurrent at every pass, never the cgroup
        assert seen == [(0, 1)] * 4, seen


TIMER = """\
[Timer]
OnActiveSec=1s
OnUnitActiveSec=1s
AccuracySec=100ms
"""


def test_timer_whose_service_stops_running_is_a_missed_run(mon: Mon, make_unit) -> None:  # type: ignore[no-untyped-def]
    tag = uuid.uuid4().hex[:8]
    svc = f"job-{tag}.service"
    timer = f"job-{tag}.timer"
    (mon.host.unit_dir / svc).write_text("[Service]\nType=oneshot\nExecStart=/bin/true\n")
    (mon.host.unit_dir / timer).write_text(TIMER)
    try:
        mon.host.systemctl("daemon-reload")
        mon.desire(mon.unit(svc, start=False), mon.unit(timer))
        mon.host.systemctl("start", timer)
        wait_for(lambda: mon.show(timer, "LastTriggerUSec")["LastTriggerUSec"] != "", 10, "run")
        healthy = mon.run()
        assert ("missed_run", timer) not in {f.key for f in healthy.open}
        # someone breaks the service by hand: systemd refuses to trigger it from now on
        (mon.host.unit_dir / svc).write_text("[Service]\nType=oneshot\nExecStart=relative/true\n")
        mon.host.systemctl("daemon-reload")
        wait_for(lambda: mon.show(timer, "ActiveState")["ActiveState"] == "failed", 10, "fail")
        time.sleep(2.5)
        result = mon.run()
        missed = finding(result, "missed_run", timer)
        assert missed["evidence"]["overdue_sec"] > 1
        assert missed["evidence"]["interval_sec"] == pytest.approx(1.1, abs=0.05)
        drift = finding(result, "drift", svc)
        assert drift["evidence"]["file"] == "edited by hand"
    finally:
        mon.host.systemctl("stop", timer, check=False)
        for unit in (svc, timer):
            (mon.host.unit_dir / unit).unlink(missing_ok=True)
        mon.host.systemctl("daemon-reload", check=False)
        mon.host.systemctl("reset-failed", check=False)


DEP = """\
[Unit]
StartLimitIntervalSec=0

[Service]
ExecStart=/bin/sh -c 'sleep 0.2; exit 3'
Restart=always
RestartSec=100ms
"""


def test_failing_dependency_shows_its_dependants(mon: Mon, make_unit) -> None:  # type: ignore[no-untyped-def]
    dep = make_unit("db.service", DEP)
    sleep = "[Service]\nExecStart=/bin/sleep 1h\n"
    app = make_unit("app.service", f"[Unit]\nRequires={dep}\n{sleep}")
    front = make_unit("front.service", f"[Unit]\nWants={app}\n{sleep}")
    kube = make_unit("kubelet@node.service", f"[Unit]\nPartOf={dep}\n{sleep}")
    mon.host.systemctl("daemon-reload")
    mon.host.systemctl("start", app, front, kube)  # running units stay loaded (and known)
    mon.desire(mon.unit(dep))
    mon.run()
    seen = int(mon.show(dep, "NRestarts")["NRestarts"])
    wait_for(lambda: int(mon.show(dep, "NRestarts")["NRestarts"]) >= seen + 4, 20, "restarts")
    result = mon.run()
    loop = finding(result, "crash_loop", dep)
    hits = {i["unit"]: (i["distance"], i["high_impact"]) for i in loop["impact"]}
    assert hits[app] == (1, False)
    assert hits[front] == (2, False)
    assert hits[kube] == (1, True)  # a container runtime: high impact
    assert "multi-user.target" not in hits


def test_textfile_parses_and_reports_units(mon: Mon, make_unit) -> None:  # type: ignore[no-untyped-def]
    from tests.unit.test_textfile import parse

    name = make_unit("steady.service", "[Service]\nExecStart=/bin/sleep infinity\n")
    mon.host.systemctl("daemon-reload")
    mon.host.systemctl("start", name)
    mon.desire(mon.unit(name))
    mon.run()
    samples = parse((mon.state / "reconciler.prom").read_text())
    assert samples[("reconciler_unit_state", (("state", "active"), ("unit", name)))] == 1
    assert samples[("reconciler_unit_crashes_total", (("unit", name),))] == 0
    assert ("reconciler_monitor_last_pass_timestamp_seconds", ()) in samples


REPO_HOSTS = """\
[hosts.testhost]
vars = {}
"""
REPO_APP = """\
[Unit]
Description={{ service }}

[Service]
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
"""


def repo_services(*names: str) -> str:
    return "".join(
        f'[services.{n}]\ntemplate = "app.service.j2"\nhosts = ["testhost"]\n\n' for n in names
    )


@pytest.fixture
def synced(mon: Mon, tmp_path: Path) -> Iterator[tuple[Mon, list[str]]]:
    """Three services applied by a real sync of a real repository."""
    tag = uuid.uuid4().hex[:6]
    names = [f"{stem}-{tag}" for stem in ("stopped", "disabled", "edited")]
    repo = ConfigRepo(tmp_path / "git")
    repo.commit(
        {
            "inventory/hosts.toml": REPO_HOSTS,
            "inventory/services.toml": repo_services(*names),
            "templates/app.service.j2": REPO_APP,
        }
    )
    proc = subprocess.run(
        [RECONCILER, "sync", "--repo", repo.url, "--host", "testhost", "--state-dir",
         str(mon.state), "--unit-dir", str(mon.host.unit_dir), "--run-dir",
         str(mon.state / "run"), "--bus", mon.host.bus_address],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "RECONCILER_JOURNAL_SOCKET": str(mon.host.journal_socket),
             "RECONCILER_CONFIG": str(mon.config)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    units = [f"{n}.service" for n in names]
    yield mon, units
    mon.host.systemctl("stop", *units, check=False)
    mon.host.systemctl("disable", *units, check=False)
    for unit in units:
        (mon.host.unit_dir / unit).unlink(missing_ok=True)
    mon.host.systemctl("daemon-reload", check=False)


def test_hand_changes_are_drift_and_resolve_when_undone(synced: tuple[Mon, list[str]]) -> None:
    mon, (stopped, disabled, edited) = synced
    clean = json.loads(mon.cli("monitor", "--json").stdout)
    assert clean["drift"] == [] and clean["findings"] == []

    mon.host.systemctl("stop", stopped)
    mon.host.systemctl("disable", disabled)
    path = mon.host.unit_dir / edited
    original = path.read_text()
    path.write_text(original.replace("sleep infinity", "sleep 999999"))
    out = json.loads(mon.cli("monitor", "--json").stdout)
    items = {(d["unit"], d["aspect"]): d["have"] for d in out["drift"]}
    assert items[(stopped, "active")] == "inactive"
    assert items[(disabled, "enablement")] == "disabled"
    assert items[(edited, "file")] == "edited by hand"
    assert (edited, "reload") in items  # changed on disk, systemd still runs the old one
    kinds = {(f["kind"], f["unit"]) for f in out["findings"]}
    assert {("drift", stopped), ("drift", disabled), ("drift", edited)} <= kinds
    entries = mon.host.journal(f"UNIT={stopped}", "RECONCILER_EVENT=drift")
    assert entries and entries[-1]["PRIORITY"] == "4"

    mon.host.systemctl("start", stopped)
    mon.host.systemctl("enable", disabled)
    path.write_text(original)
    mon.host.systemctl("daemon-reload")
    healed = json.loads(mon.cli("monitor", "--json").stdout)
    assert healed["drift"] == []
    resolved = {(f["kind"], f["unit"]) for f in healed["resolved"]}
    assert resolved == {("drift", stopped), ("drift", disabled), ("drift", edited)}
