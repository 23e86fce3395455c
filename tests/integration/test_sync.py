"""End-to-end syncs: the CLI as a whole process, a real bare git repo, the disposable systemd."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.devtools import sandbox
from reconciler.host import journal
from reconciler.store.sync_store import Store
from tests.integration.gitrepo import ConfigRepo, git

pytestmark = pytest.mark.host

RECONCILER = str(Path(sys.executable).parent / "reconciler")
MUTATING = {
    "Reload",
    "EnableUnitFiles",
    "DisableUnitFiles",
    "StartUnit",
    "StopUnit",
    "RestartUnit",
    "TryRestartUnit",
    "MaskUnitFiles",
    "UnmaskUnitFiles",
    "ResetFailedUnit",
}

HOSTS = """\
[groups.web]
vars = { greeting = "hello from the group" }

[hosts.testhost]
groups = ["web"]
vars = { greeting = "hello from the host" }
"""
ROLLOUT_ALL = '[[rollout.waves]]\nname = "all"\nhosts = ["all"]\n'

APP = """\
[Unit]
Description={{ service }} on {{ host.name }}

[Service]
Type=simple
ExecStart=/bin/sh -c 'echo {{ greeting }}; exec sleep infinity'

[Install]
WantedBy=multi-user.target
"""

CRASHER = """\
[Unit]
Description={{ service }} that crashes

[Service]
Type=simple
ExecStart=/bin/sh -c 'sleep 0.3; exit 1'
Restart=always
RestartSec=200ms

[Install]
WantedBy=multi-user.target
"""

SLOW = """\
[Unit]
Description={{ service }} slow to start

[Service]
Type=simple
ExecStartPre=/bin/sleep {{ delay }}
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
"""


def services(*entries: str) -> str:
    return "\n".join(entries)


def service(
    name: str, template: str = "app.service.j2", health: float | None = None, **vars_: str
) -> str:
    inline = ", ".join(f'{k} = "{v}"' for k, v in vars_.items())
    text = f'[services.{name}]\ntemplate = "{template}"\nhosts = ["web"]\nvars = {{ {inline} }}\n'
    if health:
        text += f"\n[services.{name}.health]\ntimeout_sec = {health}\n"
    return text


@dataclass
class Env:
    host: sandbox.Host
    repo: ConfigRepo
    state: Path
    tag: str

    def name(self, stem: str) -> str:
        return f"{stem}-{self.tag}"

    def argv(self, *args: str) -> list[str]:
        return [
            RECONCILER,
            *args,
            "--repo",
            self.repo.url,
            "--host",
            "testhost",
            "--state-dir",
            str(self.state),
            "--unit-dir",
            str(self.host.unit_dir),
            "--run-dir",
            str(self.state / "run"),
            "--bus",
            self.host.bus_address,
        ]

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RECONCILER_JOURNAL_SOCKET": str(self.host.journal_socket),
            "RECONCILER_CONFIG": str(self.state / "none.toml"),
        }

    def reconciler(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = (
            self.argv(*args)
            if args[0] in ("sync", "plan", "rollback")
            else [RECONCILER, *args, "--state-dir", str(self.state)]
        )
        proc = subprocess.run(
            argv, capture_output=True, text=True, env=self.env(), timeout=120, check=False
        )
        if check:
            assert proc.returncode == 0, proc.stderr + proc.stdout
        return proc

    def sync(self, *extra: str) -> dict[str, object]:
        out = self.reconciler("sync", "--json", *extra).stdout
        data: dict[str, object] = json.loads(out)
        return data

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.host.systemctl("show", "-p", ",".join(props), unit).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@pytest.fixture
def env(host: sandbox.Host, tmp_path: Path) -> Iterator[Env]:
    state = tmp_path / "state"
    state.mkdir()
    (state / "none.toml").write_text("")
    e = Env(host, ConfigRepo(tmp_path / "git"), state, uuid.uuid4().hex[:6])
    yield e
    owned = [p.name for p in host.unit_dir.glob(f"*-{e.tag}.*")]
    if owned:
        host.systemctl("stop", *owned, check=False)
        host.systemctl("disable", *owned, check=False)
        for name in owned:
            (host.unit_dir / name).unlink(missing_ok=True)
        host.systemctl("daemon-reload", check=False)
        host.systemctl("reset-failed", check=False)


def base_files(env: Env, *entries: str) -> dict[str, str]:
    return {
        "inventory/hosts.toml": HOSTS,
        "inventory/services.toml": services(*entries),
        "templates/app.service.j2": APP,
        "templates/crasher.service.j2": CRASHER,
        "templates/slow.service.j2": SLOW,
    }


def test_first_sync_then_noop_then_one_change(env: Env) -> None:
    a, b = env.name("alpha"), env.name("beta")
    env.repo.commit(base_files(env, service(a), service(b)))
    first = env.sync()
    assert first["result"] == "applied"
    for unit in (f"{a}.service", f"{b}.service"):
        props = env.show(unit, "ActiveState", "UnitFileState")
        assert props == {"ActiveState": "active", "UnitFileState": "enabled"}, unit
    assert "hello from the host" in (env.host.unit_dir / f"{a}.service").read_text()

    ids = {u: env.show(u, "InvocationID")["InvocationID"] for u in (f"{a}.service", f"{b}.service")}
    second = env.sync()
    assert second["result"] == "noop"
    calls = second["dbus_calls"]
    assert isinstance(calls, dict)
    assert not MUTATING & set(calls), calls
    assert {u: env.show(u, "InvocationID")["InvocationID"] for u in ids} == ids

    files = base_files(env, service(a, greeting="changed"), service(b))
    env.repo.commit(files)
    third = env.sync()
    assert third["result"] == "applied"
    assert env.show(f"{a}.service", "InvocationID")["InvocationID"] != ids[f"{a}.service"]
    assert env.show(f"{b}.service", "InvocationID")["InvocationID"] == ids[f"{b}.service"]
    assert f"restart {a}.service" in " ".join(third["actions"])  # type: ignore[arg-type]

    env.host.journal_sync()
    entries = env.host.journal(
        "RECONCILER_EVENT=action", f"RECONCILER_REVISION={third['revision']}"
    )
    assert entries, "one journald entry per action"
    history = env.reconciler("history", "--json").stdout
    assert [r["result"] for r in json.loads(history)][:3] == ["applied", "noop", "applied"]


def imported_by(env: Env, *args: str) -> tuple[dict[str, object], set[str]]:
    """A whole-process run's JSON result and the top-level packages it imported."""
    proc = subprocess.run(
        env.argv(*args),
        capture_output=True,
        text=True,
        env={**env.env(), "PYTHONPROFILEIMPORTTIME": "1"},
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert lines, "no import profile: " + proc.stderr[-500:]
    result: dict[str, object] = json.loads(proc.stdout)
    return result, {line.rpartition("|")[2].strip().partition(".")[0] for line in lines}


def test_a_no_op_sync_imports_neither_pydantic_nor_jinja2(env: Env) -> None:
    """A sync (a fleet host's poll) that finds its ref where it was parses nothing: the
    inventory's models (pydantic, ~0.11 s of CPU to import) and the templates' Jinja2 stay
    unimported. A rollout no-op poll took 0.60 s of CPU with pydantic, 50 hosts every 20 s."""
    a = env.name("lean")
    rev = env.repo.commit({**base_files(env, service(a)), "inventory/rollout.toml": ROLLOUT_ALL})
    assert env.sync()["result"] == "applied"
    heavy = {"pydantic", "pydantic_core", "jinja2"}
    noop, imported = imported_by(env, "sync", "--json")
    assert noop["result"] == "noop" and "reconciler" in imported
    assert not heavy & imported, sorted(heavy & imported)

    (env.state / "none.toml").write_text("rollout = true\n")  # the host joins its wave
    git(env.repo.work, "push", "-q", "origin", f"{rev}:refs/heads/rollout/all")
    assert env.sync()["result"] == "noop"  # finds its wave in rollout.toml (pydantic)
    noop, imported = imported_by(env, "sync", "--json")
    assert noop["result"] == "noop" and noop["revision"] == rev
    assert not heavy & imported, sorted(heavy & imported)


def test_need_daemon_reload_is_asked_once_per_file_change(env: Env) -> None:
    """Issue 13: files written within a second of the sync's Reload were asked about by
    every later sync (2,279 Gets per no-op at 10,000 units). systemd's "no" is kept until
    it loads units again or the file changes: a touched file is asked about, and reloaded."""
    names = [env.name(f"fresh{i}") for i in range(3)]
    env.repo.commit(base_files(env, *(service(n) for n in names)))
    assert env.sync("--no-monitor")["result"] == "applied"  # written just before its Reload
    asked = env.sync("--no-monitor")
    again = env.sync("--no-monitor")
    assert asked["result"] == again["result"] == "noop"
    gets = [c.get("Get", 0) for c in (asked["dbus_calls"], again["dbus_calls"])]  # type: ignore[union-attr]
    assert gets[1] == gets[0] - len(names), (asked["dbus_calls"], again["dbus_calls"])

    path = env.host.unit_dir / f"{names[0]}.service"
    os.utime(path, (time.time() + 5, time.time() + 5))  # same text, newer: needs a reload
    touched = env.sync("--no-monitor")
    assert touched["result"] == "applied" and "reload" in " ".join(touched["actions"]), touched  # type: ignore[arg-type]
    assert env.show(f"{names[0]}.service", "NeedDaemonReload") == {"NeedDaemonReload": "no"}


def test_commit_author_subject_and_commits_between_in_plan_history_journal(env: Env) -> None:
    """Issue 10: the commit objects give plan, sync, history and the journal who changed what."""
    a = env.name("told")
    first = env.repo.commit(base_files(env, service(a)), message="add the service")
    env.sync()
    second = env.repo.commit(base_files(env, service(a, greeting="two")), message="greet: two")
    third = env.repo.commit(base_files(env, service(a, greeting="three")), message="greet: three")
    plan = json.loads(env.reconciler("plan", "--json").stdout)
    assert plan["commit"]["subject"] == "greet: three"
    assert plan["commit"]["author"] == "Test Operator <ops@example.invalid>"
    assert plan["resolved"] == "refs/heads/main"
    assert [c["revision"] for c in plan["commits"]] == [third, second]
    text = env.reconciler("plan").stdout
    assert f"commit {third[:12]} [refs/heads/main]: greet: three (Test Operator" in text
    assert f"2 commits since the applied revision:\n  {third[:12]} greet: three" in text
    synced = env.sync()
    assert [c["revision"] for c in synced["commits"]] == [third, second]  # type: ignore[index]
    history = json.loads(env.reconciler("history", "--json").stdout)
    assert history[0]["summary"] == "greet: three (Test Operator <ops@example.invalid>)"
    assert history[1]["summary"].startswith("add the service") and first
    assert "greet: three (Test Operator" in env.reconciler("history").stdout
    env.host.journal_sync()
    entries = env.host.journal("RECONCILER_EVENT=sync.applied", f"RECONCILER_REVISION={third}")
    assert entries and entries[-1]["RECONCILER_SUBJECT"] == "greet: three"
    assert entries[-1]["RECONCILER_AUTHOR"] == "Test Operator <ops@example.invalid>"
    assert entries[-1]["RECONCILER_COMMITS"] == f"{third} {second}"


def test_removed_service_is_pruned_and_foreign_unit_untouched(env: Env, make_unit) -> None:  # type: ignore[no-untyped-def]
    a, b = env.name("keep"), env.name("drop")
    foreign = make_unit("foreign.service", "[Service]\nExecStart=/bin/sleep infinity\n")
    env.host.systemctl("daemon-reload")
    env.host.systemctl("start", foreign)
    env.repo.commit(base_files(env, service(a), service(b)))
    env.sync()
    env.repo.commit(base_files(env, service(a)))
    out = env.sync()
    assert f"stop {b}.service" in " ".join(out["actions"])  # type: ignore[arg-type]
    assert not (env.host.unit_dir / f"{b}.service").exists()
    assert env.show(f"{b}.service", "LoadState")["LoadState"] == "not-found"
    assert env.show(foreign, "ActiveState")["ActiveState"] == "active"
    assert (env.host.unit_dir / foreign).exists()


def test_collision_with_foreign_file_is_refused(env: Env, make_unit) -> None:  # type: ignore[no-untyped-def]
    foreign = make_unit("clash.service", "[Service]\nExecStart=/bin/true\n")
    stem = foreign.removesuffix(".service")
    before = (env.host.unit_dir / foreign).read_text()
    env.repo.commit(base_files(env, service(stem)))
    proc = env.reconciler("sync", check=False)
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert foreign in proc.stderr
    assert (env.host.unit_dir / foreign).read_text() == before


@pytest.mark.parametrize(
    ("case", "change", "expect"),
    [
        (
            "unknown key",
            {
                "inventory/services.toml": "[services.x]\ntemplate='app.service.j2'\n"
                "hosts=['web']\nbogus=1\n"
            },
            "services.x",
        ),
        (
            "missing template",
            {"inventory/services.toml": "[services.x]\ntemplate='nope.j2'\nhosts=['web']\n"},
            "nope.j2",
        ),
        (
            "undefined variable",
            {"templates/app.service.j2": APP.replace("greeting", "nosuch")},
            "nosuch",
        ),
        (
            "injection",
            {
                "inventory/hosts.toml": HOSTS.replace(
                    'greeting = "hello from the host"', 'greeting = "x\\n[Service]\\nUser=root"'
                )
            },
            "greeting",
        ),
    ],
)
def test_bad_input_is_one_line_and_host_unchanged(
    env: Env, case: str, change: dict[str, str], expect: str
) -> None:
    a = env.name("good")
    env.repo.commit(base_files(env, service(a)))
    env.sync()
    before = (env.host.unit_dir / f"{a}.service").read_text()
    invocation = env.show(f"{a}.service", "InvocationID")
    files = base_files(env, service(a))
    files.update(change)
    env.repo.commit(files, message=case)
    proc = env.reconciler("sync", check=False)
    assert proc.returncode != 0, case
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], (case, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert (env.host.unit_dir / f"{a}.service").read_text() == before
    assert env.show(f"{a}.service", "InvocationID") == invocation


def test_failing_health_gate_rolls_back(env: Env) -> None:
    a = env.name("web")
    good = env.repo.commit(base_files(env, service(a, health=3)))
    env.sync()
    assert env.show(f"{a}.service", "ActiveState")["ActiveState"] == "active"
    bad_files = base_files(env, service(a, template="crasher.service.j2", health=3))
    bad = env.repo.commit(bad_files, message="crash")
    before_us = int(time.time() * 1e6)
    proc = env.reconciler("sync", check=False)
    after_us = int(time.time() * 1e6)
    assert proc.returncode != 0
    assert "rolled back" in proc.stderr and bad[:12] in proc.stderr, proc.stderr
    # its journal: a start and an end (a start with no end reads as a killed sync)
    env.host.journal_sync()
    kinds = [
        e["RECONCILER_EVENT"]
        for e in env.host.journal("SYSLOG_IDENTIFIER=reconciler")
        if before_us <= int(e["__REALTIME_TIMESTAMP"]) <= after_us
        and str(e.get("RECONCILER_EVENT", "")).startswith(("sync.", "rollback", "health."))
    ]
    assert kinds[0] == "sync.started" and kinds[-1] == "sync.failed", kinds
    assert kinds.count("sync.failed") == 1 and "rollback" in kinds, kinds
    assert "sleep infinity" in (env.host.unit_dir / f"{a}.service").read_text()
    assert env.show(f"{a}.service", "ActiveState")["ActiveState"] == "active"
    # the bad revision is not retried by the next (timer) sync
    again = env.sync("--trigger", "timer")
    assert again["revision"] == good
    assert "marked bad" in str(again["message"])
    assert env.show(f"{a}.service", "ActiveState")["ActiveState"] == "active"


def test_concurrent_sync_waits_then_refuses(env: Env) -> None:
    a = env.name("slow")
    env.repo.commit(base_files(env, service(a, template="slow.service.j2", delay="4")))
    config = env.state / "lock.toml"
    config.write_text("lock_timeout_sec = 1\n")
    first = subprocess.Popen(
        env.argv("sync"), env=env.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        time.sleep(1.5)
        second = subprocess.run(
            env.argv("sync", "--config", str(config)),
            env=env.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 75, second.stderr
        assert "another sync is running" in second.stderr
    finally:
        first.communicate(timeout=60)
    assert first.returncode == 0


def test_kill_9_during_apply_then_sync_converges(env: Env) -> None:
    a, b = env.name("first"), env.name("second")
    env.repo.commit(base_files(env, service(a, template="slow.service.j2", delay="3"), service(b)))
    proc = subprocess.Popen(
        env.argv("sync"), env=env.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 20
    while not (env.host.unit_dir / f"{a}.service").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    out = env.sync()
    assert out["result"] in ("applied", "noop")
    for unit in (f"{a}.service", f"{b}.service"):
        wait_for(lambda u=unit: env.show(u, "ActiveState")["ActiveState"] == "active", 15)
        assert env.show(unit, "UnitFileState")["UnitFileState"] == "enabled", unit
    assert env.sync()["result"] == "noop"


def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_unreachable_remote_leaves_host_as_it_was(env: Env) -> None:
    a = env.name("steady")
    env.repo.commit(base_files(env, service(a)))
    env.sync()
    invocation = env.show(f"{a}.service", "InvocationID")
    gone = env.repo.remote.with_name("gone.git")
    env.repo.remote.rename(gone)
    proc = env.reconciler("sync", check=False)
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert env.show(f"{a}.service", "InvocationID") == invocation
    assert (env.host.unit_dir / f"{a}.service").exists()


def test_suspend_resume_and_rollback(env: Env) -> None:
    a = env.name("svc")
    first = env.repo.commit(base_files(env, service(a, greeting="one")))
    env.sync()
    env.repo.commit(base_files(env, service(a, greeting="two")))
    env.reconciler("suspend", "--reason", "incident 41")
    again = env.reconciler("suspend", "--reason", "incident 42")  # says what it replaced
    assert "(were already, since " in again.stdout and ": incident 41)" in again.stdout
    with Store.open(env.state / "state.db") as store:  # a user's trial: 41 was lost
        assert store.suspended().reason == "incident 42; before: incident 41"  # type: ignore[union-attr]
    assert env.sync("--trigger", "timer")["result"] == "suspended"
    assert "one" in (env.host.unit_dir / f"{a}.service").read_text()
    assert env.sync("--force")["result"] == "applied"
    assert "two" in (env.host.unit_dir / f"{a}.service").read_text()
    since_us = time.time_ns() // 1000  # the host is shared: only this test's entries
    env.reconciler("resume")
    again = env.reconciler("resume")  # not suspended: says so, logs nothing
    assert again.stdout.strip() == "automatic syncs were not suspended"
    env.host.journal_sync()
    resumed = [
        e
        for e in env.host.journal("RECONCILER_EVENT=sync.resumed")
        if int(e["__REALTIME_TIMESTAMP"]) >= since_us
    ]
    assert [e["MESSAGE"] for e in resumed] == ["automatic syncs resumed"], resumed
    assert resumed[0]["MESSAGE_ID"] == journal.EVENTS["sync.resumed"]
    started = env.host.journal("RECONCILER_EVENT=sync.started")  # the suspended one: none
    assert started and all(e["RECONCILER_TRIGGER"] for e in started), started
    assert started[0]["MESSAGE_ID"] == journal.EVENTS["sync.started"]
    empty = env.reconciler("rollback", "", check=False)  # not "the previous one"
    assert empty.returncode == 2 and "cannot roll back to '': empty" in empty.stderr
    env.reconciler("rollback", first[:8])
    assert "one" in (env.host.unit_dir / f"{a}.service").read_text()
    assert env.sync()["result"] == "suspended"  # rollback suspends automatic syncs
    proc = env.reconciler("sync")  # a manual sync too: the line says how to go on
    assert proc.stdout.strip().endswith("nothing done (sync --force or reconciler resume)")
