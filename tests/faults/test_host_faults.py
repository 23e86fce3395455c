"""Host faults: the sync process or the host breaks half-way. Real processes, real signals.

``kill -9`` lands at an exact step of the apply through a D-Bus tap (conftest.DBusTap) that
relays the sync's bus connection and SIGKILLs it on the ``Reload`` call (files written,
systemd not reloaded), on ``Reload``'s reply (reloaded, nothing enabled or restarted) or on
a ``RestartUnit`` reply (a restart with a slow ``ExecStartPre`` under way). Faults that
break a host (a full disk, dbus-daemon restarted, systemd re-executed) run on a host of
their own. After each fault the next sync must converge with nothing lost: units that the
change did not touch keep their InvocationID, the history holds every finished sync, and
what was put aside (a corrupted database) is still there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.devtools import sandbox
from reconciler.host.journal import message_id
from tests.conftest import PYTHON_INSIDE, SRC_INSIDE
from tests.faults.conftest import DBusTap, FaultEnv, Report
from tests.integration.gitrepo import ConfigRepo, git_daemon
from tests.integration.test_sync import base_files, service, wait_for

pytestmark = pytest.mark.host


def active_state(env: FaultEnv, unit: str) -> str:
    return env.show(unit, "ActiveState")["ActiveState"]


def popen_sync(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


# ---- kill -9 at each step of the apply ------------------------------------------------------

STEPS = {
    "after writing files": ("Reload", "call"),
    "after Reload": ("Reload", "reply"),
    "during restarts": ("RestartUnit", "reply"),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_kill_9_at_each_step_of_apply(
    fenv: FaultEnv, dbus_tap: Callable[[str], DBusTap], fault_report: Report, step: str
) -> None:
    keep, slow, new = fenv.name("keep"), fenv.name("slow"), fenv.name("new")
    units = [f"{keep}.service", f"{slow}.service", f"{new}.service"]
    slow_svc = "slow.service.j2"
    fenv.repo.commit(base_files(fenv, service(keep), service(slow, template=slow_svc, delay="1")))
    fenv.sync()
    before = fenv.invocations(*units[:2])
    fenv.repo.commit(
        base_files(fenv, service(keep), service(slow, template=slow_svc, delay="2"), service(new)),
        message="change slow, add new",
    )
    tap = dbus_tap(fenv.host.bus_address)
    tap.arm(*STEPS[step])
    argv = fenv.argv("sync", "--no-monitor")
    argv[argv.index("--bus") + 1] = tap.address
    proc = popen_sync(argv, fenv.env())
    tap.victim = proc.pid
    proc.communicate(timeout=60)
    killed_at = time.monotonic()
    assert tap.fired.is_set() and proc.returncode == -9, (proc.returncode, tap.calls)

    # where exactly the kill landed
    written = all(
        "exec sleep infinity" in (fenv.host.unit_dir / u).read_text() for u in (units[2],)
    )
    reloaded = fenv.show(units[1], "NeedDaemonReload")["NeedDaemonReload"] == "no"
    restarting = active_state(fenv, units[1]) == "activating"
    landed = {
        "after writing files": written and not reloaded,
        "after Reload": written and reloaded and not restarting,
        "during restarts": written and reloaded and restarting,
    }[step]

    converge = fenv.converge(killed_at)
    fenv.settled(units)
    restarted = fenv.invocations(units[1])[units[1]] != before[units[1]]
    again = fenv.sync()["result"]
    results = [r["result"] for r in fenv.history()]
    nothing_lost = (
        fenv.invocations(units[0]) == {units[0]: before[units[0]]}
        and restarted
        and results[:4] == ["noop", "applied", "interrupted", "applied"]  # the killed: recorded
        and not list(fenv.state.glob("state.db.corrupt-*"))
    )
    fault_report(
        f"kill -9 {step}",
        "next sync converges: files kept, reload and (re)starts redone from the pending list",
        converge,
        nothing_lost,
    )
    assert landed, (step, written, reloaded, restarting)
    assert again == "noop"
    assert restarted, "the changed unit runs its new file"
    assert nothing_lost, results


LARGE = 1_000  # units: as many as keep the test near a minute on a loaded 2-CPU machine


def unit_table(env: FaultEnv, *argv: str) -> dict[str, str]:
    """``systemctl list-units|list-unit-files`` of this env's services: name -> state."""
    proc = env.host.systemctl(*argv, "--all", "--plain", "--no-legend", f"*-{env.tag}.service")
    rows = (line.split() for line in proc.stdout.splitlines() if line.strip())
    column = 2 if argv[0] == "list-units" else 1  # ACTIVE of list-units, STATE of the files
    return {row[0]: row[column] for row in rows}


def test_kill_9_in_the_middle_of_a_large_apply(
    own_env: FaultEnv, dbus_tap: Callable[[str], DBusTap], fault_report: Report
) -> None:
    """1,000 new units: killed once their first start jobs are queued (files written,
    systemd reloaded, every unit enabled, starts under way); the next sync starts the rest."""
    env = own_env
    names = [env.name(f"bulk{i:04d}") for i in range(LARGE)]
    units = {f"{n}.service" for n in names}
    env.repo.commit(base_files(env, *(service(n, greeting="hi") for n in names)))
    tap = dbus_tap(env.host.bus_address)
    tap.arm("StartUnit", "reply")
    argv = env.argv("sync", "--no-monitor")
    argv[argv.index("--bus") + 1] = tap.address
    proc = popen_sync(argv, env.env())
    tap.victim = proc.pid
    proc.communicate(timeout=300)
    killed_at = time.monotonic()
    assert tap.fired.is_set() and proc.returncode == -9, (proc.returncode, tap.calls[-5:])
    time.sleep(1)  # the jobs queued before the kill run on
    active = {u for u, s in unit_table(env, "list-units").items() if s == "active"}
    assert len(active) < LARGE, "killed in the middle: not every unit started yet"

    converge = env.converge(killed_at, timeout=300)
    files = unit_table(env, "list-unit-files")
    after = unit_table(env, "list-units")
    again = env.sync()["result"]
    results = [r["result"] for r in env.history()]
    nothing_lost = (
        set(files) == units
        and set(files.values()) == {"enabled"}
        and {u for u, s in after.items() if s == "active"} == units
        and results[:3] == ["noop", "applied", "interrupted"]  # newest first: the killed run
    )
    fault_report(
        f"kill -9 in the middle of a {LARGE:,}-unit apply",
        "next sync converges: every file kept, the starts not done redone",
        converge,
        nothing_lost,
    )
    assert again == "noop"
    assert nothing_lost, (len(files), set(files.values()), len(after), results)


# ---- two syncs, suspension, a hand-masked unit ----------------------------------------------


def test_two_syncs_at_once(fenv: FaultEnv, fault_report: Report) -> None:
    keep, slow = fenv.name("keep"), fenv.name("slow")
    fenv.repo.commit(base_files(fenv, service(keep)))
    fenv.sync()
    before = fenv.invocations(f"{keep}.service")
    fenv.repo.commit(
        base_files(fenv, service(keep), service(slow, template="slow.service.j2", delay="2"))
    )
    started = time.monotonic()
    procs = [popen_sync(fenv.argv("sync", "--json"), fenv.env()) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    converge = time.monotonic() - started
    results = sorted(json.loads(out)["result"] for out, _ in outs)
    fenv.settled([f"{keep}.service", f"{slow}.service"])
    history = [r["result"] for r in fenv.history()]
    nothing_lost = fenv.invocations(f"{keep}.service") == before and history[:2] == [
        "noop",
        "applied",
    ]
    fault_report(
        "two syncs at once",
        "the second waits for the lock (bounded by lock_timeout_sec), then finds nothing to do",
        converge,
        nothing_lost,
    )
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    assert results == ["applied", "noop"]
    assert nothing_lost, history


def test_sync_while_suspended(fenv: FaultEnv, fault_report: Report) -> None:
    a = fenv.name("svc")
    unit = f"{a}.service"
    fenv.repo.commit(base_files(fenv, service(a, greeting="one")))
    fenv.sync()
    before = fenv.invocations(unit)
    fenv.reconciler("suspend", "--reason", "fault matrix")
    fenv.repo.commit(base_files(fenv, service(a, greeting="two")))
    timer = fenv.sync("--trigger", "timer")
    webhook = fenv.sync("--trigger", "webhook")
    held = "one" in (fenv.host.unit_dir / unit).read_text() and fenv.invocations(unit) == before
    fenv.reconciler("resume")
    resumed = time.monotonic()
    converge = fenv.converge(resumed)
    fenv.settled([unit])
    nothing_lost = held and [r["result"] for r in fenv.history()][:2] == ["applied", "applied"]
    fault_report(
        "sync while suspended",
        "timer and webhook syncs log 'suspended', exit 0 and touch nothing until resume",
        converge,
        nothing_lost,
    )
    assert timer["result"] == webhook["result"] == "suspended"
    assert "two" in (fenv.host.unit_dir / unit).read_text()
    assert nothing_lost


def test_hand_masked_managed_unit(fenv: FaultEnv, fault_report: Report) -> None:
    """``systemctl mask`` refuses while the unit file is in /etc/systemd/system (and a runtime
    mask in /run loses to /etc), so an operator masks a managed unit by removing its file
    and masking it: a /dev/null symlink where the reconciler's file was."""
    a, b = fenv.name("masked"), fenv.name("other")
    ua, ub = f"{a}.service", f"{b}.service"
    fenv.repo.commit(base_files(fenv, service(a, greeting="one"), service(b, greeting="one")))
    fenv.sync()
    before = fenv.invocations(ua)
    fenv.host.run(["sh", "-ec", f"rm /etc/systemd/system/{ua}; systemctl mask {ua}"])
    fenv.repo.commit(base_files(fenv, service(a, greeting="two"), service(b, greeting="two")))
    plan = fenv.reconciler("plan")
    out = fenv.sync()
    masked_at = time.monotonic()
    mask = fenv.host.unit_dir / ua
    kept = mask.is_symlink() and fenv.invocations(ua) == before
    noted = any(ua in n and "masked" in n for n in out["notes"])  # type: ignore[union-attr]
    fenv.host.run(["systemctl", "unmask", ua])
    converge = fenv.converge(masked_at)
    fenv.settled([ua, ub])
    results = [r["result"] for r in fenv.history()]
    nothing_lost = kept and results[:3] == ["applied", "applied", "applied"]
    fault_report(
        "hand-masked managed unit",
        "sync succeeds and notes the mask; the unit is left alone (mask kept, not written, "
        "restarted or pruned) until unmasked, then converges",
        converge,
        nothing_lost,
    )
    assert out["result"] == "applied" and noted, out
    assert f"note: {ua} is masked" in plan.stdout
    assert "two" in (fenv.host.unit_dir / ub).read_text()
    assert "two" in (fenv.host.unit_dir / ua).read_text()
    assert nothing_lost, results


# ---- the state database ---------------------------------------------------------------------

LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


@pytest.mark.parametrize("fault", ["corrupted", "deleted", "locked"])
def test_state_database_fault_during_a_sync(
    fenv: FaultEnv, fault_report: Report, fault: str
) -> None:
    keep, slow = fenv.name("keep"), fenv.name("slow")
    units = [f"{keep}.service", f"{slow}.service"]
    fenv.repo.commit(base_files(fenv, service(keep)))
    fenv.sync()
    before = fenv.invocations(units[0])
    fenv.repo.commit(
        base_files(fenv, service(keep), service(slow, template="slow.service.j2", delay="2"))
    )
    db = fenv.state / "state.db"
    proc = popen_sync(fenv.argv("sync"), fenv.env())
    wait_for(lambda: active_state(fenv, units[1]) == "activating", 20)
    locker = None
    if fault == "corrupted":
        with db.open("r+b") as fh:
            fh.write(b"this is not a database " * 200)
    elif fault == "deleted":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    else:
        locker = subprocess.Popen(
            # held past the sync's next write (~2 s on) plus its 10 s busy_timeout, with room
            [sys.executable, "-c", LOCKER, str(db), "16"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert locker.stdout and locker.stdout.readline().strip() == "locked"
    faulted = time.monotonic()
    _, err = proc.communicate(timeout=60)
    if locker:
        locker.communicate(timeout=30)
    clear = proc.returncode == 0 or (
        proc.returncode == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    )
    converge = fenv.converge(faulted)
    fenv.settled(units)
    aside = [p for p in fenv.state.glob("state.db.corrupt-*") if not p.name.endswith("-wal")]
    history = fenv.history()
    nothing_lost = fenv.invocations(units[0]) == before and history[0]["result"] in (
        "applied",
        "noop",
    )
    if fault == "corrupted":  # the old history is kept aside, not lost
        nothing_lost = nothing_lost and len(aside) == 1
    behaviour = {
        "corrupted": "moved aside with a warning (kept), a fresh database; unit files carry an "
        "ownership marker, so nothing is taken for foreign",
        "deleted": "a fresh database is created; ownership from the marker in each unit file",
        "locked": "waits busy_timeout (10 s), then one clear 'locked by another process' line",
    }[fault]
    fault_report(
        f"state database {fault} during a sync",
        f"{behaviour} (sync exit {proc.returncode})",
        converge,
        nothing_lost,
    )
    assert clear, err
    if fault == "locked":
        assert proc.returncode == 1 and "locked by another process" in err, err
    assert nothing_lost, (history[:3], aside)


# ---- the metrics store ---------------------------------------------------------------------


def test_metrics_store_newer_than_the_code(tmp_path: Path, fault_report: Report) -> None:
    """A metrics.db migrated by a newer reconciler (a downgrade): refused, never rewritten."""
    import sqlite3

    config = tmp_path / "config.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\nhost = "h"\n')
    cli = [str(Path(sys.executable).parent / "reconciler"), "job", "metrics"]
    env = {"PATH": "/usr/bin:/bin", "RECONCILER_JOURNAL_SOCKET": "/nonexistent/journal-socket"}

    def job() -> subprocess.CompletedProcess[str]:
        argv = [*cli, "--config", str(config)]
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)

    assert job().returncode == 0
    db = tmp_path / "state/metrics.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 7")
    rows = conn.execute("SELECT count(*) FROM metric_samples").fetchone()[0]
    conn.close()
    refused = job()
    lines = refused.stderr.strip().splitlines()
    conn = sqlite3.connect(db)
    after = conn.execute("PRAGMA user_version").fetchone()[0]
    kept = conn.execute("SELECT count(*) FROM metric_samples").fetchone()[0]
    conn.close()
    assert refused.returncode == 1, refused.stderr
    assert len(lines) == 1 and "schema version 7 is newer" in lines[0], lines
    assert (after, kept) == (7, rows) and rows > 0
    fault_report(
        "metrics store written by a newer reconciler (schema version past the code's)",
        "the job refuses in one line naming the file and both versions; the store untouched",
        None,
        (after, kept) == (7, rows),
    )


# ---- faults that break a host: a host of their own ------------------------------------------


def mount_small_tmpfs(host: sandbox.Host) -> None:
    """A 64 KiB tmpfs over /etc/systemd/system inside the host, holding what was there."""
    host.run(
        [
            "sh",
            "-ec",
            "mkdir /run/unit-copy && cp -a /etc/systemd/system/. /run/unit-copy/ && "
            "mount -t tmpfs -o size=64k tmpfs /etc/systemd/system && "
            "cp -a /run/unit-copy/. /etc/systemd/system/ && rm -rf /run/unit-copy",
        ]
    )


def test_full_disk_while_writing_unit_files(own_env: FaultEnv, fault_report: Report) -> None:
    env, host = own_env, own_env.host
    mount_small_tmpfs(host)
    a, b = env.name("alpha"), env.name("beta")
    env.repo.commit(base_files(env, service(a, greeting="one")))
    env.sync()
    unit = f"{a}.service"
    before, before_text = env.invocations(unit), (host.unit_dir / unit).read_text()
    host.run(["sh", "-c", "dd if=/dev/zero of=/etc/systemd/system/.filler bs=1k 2>/dev/null"],
             check=False)  # fmt: skip
    env.repo.commit(base_files(env, service(a, greeting="two" * 500), service(b)))
    proc = env.run("sync")
    full_at = time.monotonic()
    lines = proc.stderr.strip().splitlines()
    clear = proc.returncode == 1 and len(lines) == 1 and "No space left on device" in lines[0]
    intact = (host.unit_dir / unit).read_text() == before_text and env.invocations(unit) == before
    no_temp = not list(host.unit_dir.glob(".*.tmp"))
    host.run(["rm", "/etc/systemd/system/.filler"])
    converge = env.converge(full_at)
    env.settled([unit, f"{b}.service"])
    results = [r["result"] for r in env.history()]
    nothing_lost = intact and no_temp and results[:3] == ["applied", "failed", "applied"]
    fault_report(
        "full disk while writing unit files",
        f"one clear line ({lines[0] if lines else ''}); old files intact, temp files removed",
        converge,
        nothing_lost,
    )
    assert clear, proc.stderr
    assert "two" in (host.unit_dir / unit).read_text()
    assert nothing_lost, (intact, no_temp, results)


def slow_change(env: FaultEnv) -> tuple[list[str], dict[str, str]]:
    """v1: one running unit; then v2 adding a unit that takes 3 s to start. Returns units."""
    keep, slow = env.name("keep"), env.name("slow")
    units = [f"{keep}.service", f"{slow}.service"]
    env.repo.commit(base_files(env, service(keep)))
    env.sync()
    before = env.invocations(units[0])
    env.repo.commit(
        base_files(env, service(keep), service(slow, template="slow.service.j2", delay="3"))
    )
    return units, before


def test_dbus_daemon_restarted_during_a_sync(own_env: FaultEnv, fault_report: Report) -> None:
    env = own_env
    units, before = slow_change(env)
    proc = popen_sync(env.argv("sync", "--json"), env.env())  # over the system bus (dbus-daemon)
    wait_for(lambda: active_state(env, units[1]) == "activating", 20)
    env.host.run(["systemctl", "restart", "dbus"])
    restarted = time.monotonic()
    out, err = proc.communicate(timeout=90)
    converge = time.monotonic() - restarted  # the same run converges: no second sync
    env.settled(units)
    results = [r["result"] for r in env.history()]
    nothing_lost = env.invocations(units[0]) == before and results[-1] == "applied"
    fault_report(
        "dbus-daemon restarted during a sync",
        "the sync waiting on a start job connects again, plans anew and finishes "
        f"(exit {proc.returncode})",
        converge,
        nothing_lost,
    )
    assert proc.returncode == 0 and json.loads(out)["result"] == "applied", err
    assert active_state(env, units[1]) == "active"
    env.host.journal_sync()
    assert env.host.journal(f"MESSAGE_ID={message_id('sync.reconnect')}"), "no reconnect logged"
    assert nothing_lost, results


# -- daemon-reexec: the sync runs inside the host, on its default bus (systemd's private socket)


@dataclass
class Inside:
    """The reconciler CLI run inside a host as root, with its defaults (private socket)."""

    host: sandbox.Host
    repo: ConfigRepo  # outside; served by a git daemon on the host's own 127.0.0.1
    url: str
    base: str  # inside path of state and config

    def argv(self, *args: str) -> list[str]:
        return self.host.nsenter(
            [
                "env",
                "-i",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                f"PYTHONPATH={SRC_INSIDE}",
                PYTHON_INSIDE,
                "-m",
                "reconciler",
                *args,
                "--config",
                f"{self.base}/config.toml",
                "--state-dir",
                f"{self.base}/state",
                *(("--repo", self.url, "--host", "testhost") if args[0] == "sync" else ()),
            ]
        )

    def sync(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv("sync", "--json"), capture_output=True, text=True,
                              timeout=120, check=False)  # fmt: skip


@pytest.fixture
def inside(own_host: sandbox.Host, tmp_path: Path) -> Iterator[Inside]:
    base = f"/var/tmp/faults-{uuid.uuid4().hex[:6]}"
    outside = own_host.root / base.lstrip("/")
    outside.mkdir(parents=True)
    (outside / "config.toml").write_text("lock_timeout_sec = 30\nfetch_timeout_sec = 5\n")
    repo = ConfigRepo(tmp_path / "git")
    with git_daemon(repo.remote.parent, own_host) as port:
        yield Inside(own_host, repo, f"git://127.0.0.1:{port}/{repo.remote.name}", base)


def test_daemon_reexec_during_a_sync(inside: Inside, fault_report: Report) -> None:
    host = inside.host
    tag = uuid.uuid4().hex[:6]
    keep, slow = f"keep-{tag}", f"slow-{tag}"
    units = [f"{keep}.service", f"{slow}.service"]
    env_like = FaultEnv(host, inside.repo, Path("/nonexistent"), tag)
    inside.repo.commit(base_files(env_like, service(keep)))
    assert inside.sync().returncode == 0
    before = host.systemctl("show", "-p", "InvocationID", "--value", units[0]).stdout.strip()
    inside.repo.commit(
        base_files(env_like, service(keep), service(slow, template="slow.service.j2", delay="3"))
    )
    proc = popen_sync(inside.argv("sync", "--json"), {})
    state = lambda: host.systemctl("show", "-p", "ActiveState", "--value", units[1]).stdout  # noqa: E731
    wait_for(lambda: state().strip() == "activating", 30)
    host.run(["systemctl", "daemon-reexec"])
    reexec_at = time.monotonic()
    out, err = proc.communicate(timeout=90)
    converge = time.monotonic() - reexec_at  # the same run converges: no second sync
    assert proc.returncode == 0 and json.loads(out)["result"] == "applied", err
    host.journal_sync()
    assert host.journal(f"MESSAGE_ID={message_id('sync.reconnect')}"), "no reconnect logged"
    wait_for(lambda: state().strip() == "active", 20)
    done = inside.sync()
    after = host.systemctl("show", "-p", "InvocationID", "--value", units[0]).stdout.strip()
    history = json.loads(
        subprocess.run(inside.argv("history", "--json"), capture_output=True, text=True,
                       check=True).stdout
    )  # fmt: skip
    nothing_lost = after == before and history[0]["result"] in ("applied", "noop")
    fault_report(
        "systemctl daemon-reexec during a sync",
        "the sync (private socket) waiting on a start job connects again, plans anew and finishes",
        converge,
        nothing_lost,
    )
    assert nothing_lost, history[:3]
    assert json.loads(done.stdout)["result"] == "noop", done.stderr


def test_watch_daemon_killed_its_figures_say_it_is_down(
    host: sandbox.Host, make_unit: Callable[[str, str], str], tmp_path: Path, fault_report: Report
) -> None:
    """A watch daemon killed (or hung) leaves its last figures behind: the textfile must not
    present them as a live collector once they are older than ``WatchFigures.FRESH_SEC``."""
    from reconciler import config, monitor
    from reconciler.monitor.textfile import WatchFigures
    from tests.integration.test_watch import CONFIG, STEADY, run_outside, starts
    from tests.integration.test_watch import wait_for as wait_until
    from tests.unit.test_textfile import parse

    steady = make_unit("steady.service", STEADY)
    host.systemctl("daemon-reload")
    proc, state = run_outside(host, tmp_path, [steady], CONFIG)
    try:
        wait_until(lambda: starts(state, [steady]) == [0], 20, "the baseline look")
        time.sleep(1.0)  # the loop stores its figures on its first round
    finally:
        proc.kill()  # no clean stop: nothing says "stopped"
        proc.communicate(timeout=15)
    settings = config.load(
        tmp_path / "config.toml",
        {"state_dir": state, "unit_dir": host.unit_dir, "bus": host.bus_address},
    )

    def up(now: float) -> float:
        monitor.run_pass(settings, now=now)
        return parse((state / "reconciler.prom").read_text())[("reconciler_watch_up", ())]

    killed = time.time()
    fresh = up(killed)
    stale = up(killed + WatchFigures.FRESH_SEC + 1)
    fault_report(
        "the watch daemon killed -9 (or hung)",
        "its last figures stay in the textfile with their time; reconciler_watch_up turns 0 "
        f"once they are older than {WatchFigures.FRESH_SEC:g} s (the daemon stores them every "
        "10 s)",
        None,
        True,
    )
    assert (fresh, stale) == (1, 0)


@pytest.mark.parametrize("step", ["after writing files", "during restarts"])
def test_kill_9_while_dropins_are_applied(
    fenv: FaultEnv, dbus_tap: Callable[[str], DBusTap], fault_report: Report, step: str
) -> None:
    """Two drop-ins on a running vendor unit, the sync killed once they are written (before
    the Reload) or while the unit restarts: the next sync reloads and restarts it, once."""
    from tests.integration.test_dropins import VENDOR, commit, dropin

    vendor = f"vend-{fenv.tag}.service"
    lib = fenv.host.root / "usr/lib/systemd/system"
    (lib / vendor).write_text(VENDOR.replace("[Service]", "[Service]\nExecStartPre=/bin/sleep 1"))
    fenv.host.systemctl("daemon-reload")
    fenv.host.systemctl("start", vendor)
    try:
        before = fenv.invocations(vendor)[vendor]
        commit(fenv, dropin(vendor, "env", "hello"), dropin(vendor, "more", "again"))
        tap = dbus_tap(fenv.host.bus_address)
        tap.arm(*STEPS[step])
        argv = fenv.argv("sync", "--no-monitor")
        argv[argv.index("--bus") + 1] = tap.address
        proc = popen_sync(argv, fenv.env())
        tap.victim = proc.pid
        proc.communicate(timeout=60)
        killed_at = time.monotonic()
        assert tap.fired.is_set() and proc.returncode == -9, (proc.returncode, tap.calls)
        files = sorted(p.name for p in (fenv.host.unit_dir / f"{vendor}.d").iterdir())

        converge = fenv.converge(killed_at)
        wait_for(lambda: active_state(fenv, vendor) == "active", 15)
        props = fenv.show(vendor, "Environment", "InvocationID", "NeedDaemonReload")
        again = fenv.sync()["result"]
        nothing_lost = (
            props["InvocationID"] != before
            and props["Environment"] == "GREETING=again"
            and props["NeedDaemonReload"] == "no"
            and again == "noop"
        )
        fault_report(
            f"kill -9 {step} of drop-ins",
            "next sync converges: the drop-ins kept, the reload and the vendor unit's restart "
            "redone (pending list)",
            converge,
            nothing_lost,
        )
        assert files == ["50-reconciler-env.conf", "50-reconciler-more.conf"], files
        assert nothing_lost, (props, again)
    finally:
        fenv.host.systemctl("stop", vendor, check=False)
        (lib / vendor).unlink(missing_ok=True)
        for f in (fenv.host.unit_dir / f"{vendor}.d").glob("*"):
            f.unlink()
        (fenv.host.unit_dir / f"{vendor}.d").rmdir()
