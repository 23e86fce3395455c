"""Operator paths of issue 12 (items 18 and 19): what each documented command really does.

The CLI runs as a whole process. Where systemd must be unreachable, ``--bus`` names a socket
that does not exist; elsewhere it is the disposable host's.
"""

from __future__ import annotations

import json
import os
import pty
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.devtools import sandbox
from reconciler.push import trigger
from tests.integration.gitrepo import ConfigRepo
from tests.integration.test_sync import RECONCILER, Env, base_files, service

NO_BUS = "unix:path=/nonexistent/reconciler-test-bus"


def run(
    *argv: str, env: dict[str, str] | None = None, stdout: int | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RECONCILER, *argv],
        stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


@pytest.fixture
def no_journald(tmp_path: Path) -> dict[str, str]:
    """No journald: the logger falls back to stderr (where double lines would show)."""
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    return {
        "RECONCILER_JOURNAL_SOCKET": str(tmp_path / "no-journal"),
        "RECONCILER_CONFIG": str(empty),
    }


@pytest.fixture
def journald(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A datagram socket standing in for journald (entries are read by nobody)."""
    path = tmp_path / "journal.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    try:
        yield {"RECONCILER_JOURNAL_SOCKET": str(path), "RECONCILER_CONFIG": str(empty)}
    finally:
        sock.close()


# ---- 12.18: exit codes, --debug, job --------------------------------------------------------


def test_debug_is_accepted_after_the_command(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[diagnostics]\nmax_lines = 2.7\n")
    plain = run("job", "metrics", "--config", str(bad))
    assert plain.returncode == 2 and len(plain.stderr.strip().splitlines()) == 1, plain.stderr
    debug = run("job", "metrics", "--config", str(bad), "--debug")
    assert "Traceback" in debug.stderr and "diagnostics.max_lines" in debug.stderr, debug.stderr
    assert "unrecognized arguments" not in debug.stderr


def test_job_without_a_name_lists_the_jobs() -> None:
    proc = run("job")
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[0] for line in proc.stdout.splitlines()] == ["metrics", "backup", "etl"]


@pytest.mark.parametrize(
    ("name", "summary"),
    [
        ("backup", "backup: no sources configured in [backup]; nothing to do"),
        ("etl", "etl: no endpoint configured in [etl]; nothing to do"),
    ],
)
def test_a_job_on_a_terminal_prints_its_summary(
    journald: dict[str, str], tmp_path: Path, name: str, summary: str
) -> None:
    leader, follower = pty.openpty()
    try:
        proc = run(
            "job", name, "--state-dir", str(tmp_path / "state"), env=journald, stdout=follower
        )
        os.close(follower)
        follower = -1
        out = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the other end is closed
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    assert proc.returncode == 0, proc.stderr
    assert out.decode().strip().splitlines() == [summary]
    assert proc.stderr == ""  # the summary went to the journal and the terminal, once each


def test_job_config_errors_exit_2(no_journald: dict[str, str], tmp_path: Path) -> None:
    for section in ("[backup]\nkeep_lats = 3\n", "[etl]\nurl = 'ftp://x'\n"):
        config = tmp_path / "c.toml"
        config.write_text(section)
        name = "backup" if "backup" in section else "etl"
        proc = run("job", name, "--config", str(config), env=no_journald)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"reconciler job: cannot read config '{config}': {name}.")


def test_a_failing_sync_prints_one_line(no_journald: dict[str, str], tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = run(
        "sync",
        "--repo",
        str(tmp_path / "no-such-repo"),
        "--state-dir",
        str(state),
        "--run-dir",
        str(tmp_path / "run"),
        "--bus",
        NO_BUS,
        env=no_journald,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reconciler sync: cannot fetch"), proc.stderr


# ---- 12.19: nothing created without systemd -------------------------------------------------


def test_plan_and_status_create_nothing_without_systemd(
    no_journald: dict[str, str], tmp_path: Path
) -> None:
    repo = ConfigRepo(tmp_path / "git")
    repo.commit(base_files_for("alpha"))
    state, run_dir = tmp_path / "state", tmp_path / "run"
    common = ["--state-dir", str(state), "--run-dir", str(run_dir), "--bus", NO_BUS]
    for argv in (
        ["plan", "--repo", repo.url, "--host", "testhost", *common],
        ["sync", "--dry-run", "--repo", repo.url, "--host", "testhost", *common],
        ["status", *common],
    ):
        proc = run(*argv, env=no_journald)
        assert proc.returncode == 1, (argv, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot connect to systemd" in lines[0], (argv, proc.stderr)
        assert not state.exists() and not run_dir.exists(), argv


def base_files_for(name: str) -> dict[str, str]:
    from tests.integration.test_sync import APP, HOSTS, services

    return {
        "inventory/hosts.toml": HOSTS,
        "inventory/services.toml": services(service(name)),
        "templates/app.service.j2": APP,
    }


# ---- on the disposable host ---------------------------------------------------------------


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


@pytest.mark.host
def test_plan_for_a_host_not_in_the_inventory_exits_2(env: Env) -> None:
    env.repo.commit(base_files(env, service(env.name("alpha"))))
    proc = subprocess.run(
        [*env.argv("plan"), "--host", "ghost"],  # the last --host wins
        capture_output=True,
        text=True,
        env=env.env(),
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "host 'ghost' is not in the inventory" in lines[0], proc.stderr


@pytest.mark.host
def test_plan_shows_a_held_bad_revision_and_history_the_rollback(env: Env) -> None:
    a = env.name("web")
    good = env.repo.commit(base_files(env, service(a, health=3)))
    env.sync()
    bad = env.repo.commit(
        base_files(env, service(a, template="crasher.service.j2", health=3)), message="crash"
    )
    assert env.reconciler("sync", check=False).returncode == 1  # rolled back
    plan = env.reconciler("plan").stdout
    assert f"revision {bad[:12]} is marked bad; holding at {good[:12]}" in plan, plan
    data = json.loads(env.reconciler("plan", "--json").stdout)
    assert data["revision"] == good and "marked bad" in data["message"]

    rows = json.loads(env.reconciler("history", "--json").stdout)
    back = next(r for r in rows if r["trigger"] == "rollback")
    assert back["revision"] == good
    assert back["actions"][0] == f"roll back from {bad[:12]}"
    assert any(a in line for line in back["actions"][1:]), back  # e.g. "write …", "restart …"
    assert back["duration_sec"] > 0
    table = env.reconciler("history").stdout
    assert f"roll back from {bad[:12]}" in table, table


@pytest.mark.host
def test_a_webhook_started_sync_is_recorded_as_webhook(env: Env) -> None:
    env.repo.commit(base_files(env, service(env.name("hooked"))))
    trigger.mark(env.state)  # what the webhook does right before StartUnit
    env.sync("--trigger", "timer")  # what gitops-sync.service runs
    assert not (env.state / trigger.FILE).exists()
    env.sync("--trigger", "timer")  # the next timer run is a timer run again
    rows = json.loads(env.reconciler("history", "--json").stdout)
    assert [r["trigger"] for r in rows[:2]] == ["timer", "webhook"]


def test_a_stale_or_foreign_mark_is_not_believed(tmp_path: Path) -> None:
    trigger.mark(tmp_path)
    assert trigger.take(tmp_path) == "webhook" and trigger.take(tmp_path) is None
    trigger.mark(tmp_path)
    assert trigger.take(tmp_path, now=(tmp_path / trigger.FILE).stat().st_mtime + 601) is None
    (tmp_path / trigger.FILE).write_text("operator\n")
    assert trigger.take(tmp_path) is None
