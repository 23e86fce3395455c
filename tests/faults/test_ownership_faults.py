"""Ownership faults: what the sync may touch, and hosts left half-applied (issue 11, 1-7).

The README promises that a file or unit the reconciler does not own is never touched and
that a failure half-way never leaves a half-applied host. Each test here breaks one of
those promises the way an operator's inventory, another tool or bad luck would, on the
real disposable systemd: a vendor unit's name (or an ``Alias=`` of one) in the inventory,
another tool's temp files in the unit directory, a name at the file system's limit, a
``kill -9`` at each step of a prune, a lost state database, a read-only unit directory.
Faults that could break the shared host (a vendor unit taken over, a read-only
``/etc/systemd/system``) run on a host of their own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.conftest import DBusTap, FaultEnv, Report
from tests.faults.test_host_faults import active_state, popen_sync
from tests.integration.test_sync import base_files, service, wait_for

pytestmark = pytest.mark.host

MARKER = "# Managed by reconciler"

FAILING = """\
[Unit]
Description={{ service }} that fails once started

[Service]
Type=simple
ExecStart=/bin/sh -c 'sleep 0.2; exit 3'

[Install]
WantedBy=multi-user.target
"""

ALIASED = """\
[Unit]
Description={{ service }} with an alias

[Service]
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
Alias={{ alias }}
"""


def files_with(env: FaultEnv, *entries: str, **templates: str) -> dict[str, str]:
    files = base_files(env, *entries)
    files.update({f"templates/{name}.service.j2": text for name, text in templates.items()})
    return files


def one_line_failure(proc_stderr: str, returncode: int) -> bool:
    lines = proc_stderr.strip().splitlines()
    return returncode == 1 and len(lines) == 1 and "Traceback" not in proc_stderr


def unit_files(env: FaultEnv) -> dict[str, str]:
    """Every regular file of the unit directory (name -> text): what a failed sync must keep."""
    return {
        p.name: p.read_text(errors="replace")
        for p in env.host.unit_dir.iterdir()
        if p.is_file() and not p.is_symlink()
    }


def killed_sync(env: FaultEnv, tap: DBusTap, *extra: str) -> float:
    argv = env.argv("sync", "--no-monitor", *extra)
    argv[argv.index("--bus") + 1] = tap.address
    proc = popen_sync(argv, env.env())
    tap.victim = proc.pid
    proc.communicate(timeout=60)
    assert tap.fired.is_set() and proc.returncode == -9, (proc.returncode, tap.calls)
    return time.monotonic()


# ---- 1. a vendor unit's name ------------------------------------------------------------------


def test_vendor_unit_name_is_refused(own_env: FaultEnv, fault_report: Report) -> None:
    env, host = own_env, own_env.host
    vendor = "systemd-logind.service"
    assert (host.root / "lib/systemd/system" / vendor).exists()
    host.systemctl("start", vendor)
    before = env.invocations(vendor)
    keep = env.name("keep")
    env.repo.commit(base_files(env, service(keep)))
    env.sync()
    env.repo.commit(base_files(env, service(keep), service("systemd-logind")))
    proc = env.run("sync")
    refused_at = time.monotonic()
    clear = one_line_failure(proc.stderr, proc.returncode) and vendor in proc.stderr
    untouched = not (host.unit_dir / vendor).exists() and env.invocations(vendor) == before
    env.repo.commit(base_files(env, service(keep)), message="drop the vendor name")
    converge = env.converge(refused_at)
    results = [r["result"] for r in env.history()]
    nothing_lost = (
        untouched
        and env.invocations(vendor) == before
        and results[:3] == ["noop", "failed", "applied"]
    )
    fault_report(
        "vendor unit name in the inventory (systemd-logind)",
        "refused before anything is written: a unit of that name exists in systemd's search "
        "path and is not the reconciler's (hint: a drop-in adjusts a vendor unit)",
        converge,
        nothing_lost,
    )
    assert clear, proc.stderr
    assert "drop-in" in proc.stderr, proc.stderr
    assert untouched
    assert nothing_lost, results


def test_prune_never_stops_a_unit_not_started_from_its_own_file(
    own_env: FaultEnv, fault_report: Report
) -> None:
    """A managed unit's file is replaced by hand with a vendor one (a package now ships
    it): removing the service from the inventory must not stop the vendor's unit."""
    env, host = own_env, own_env.host
    keep, pkg = env.name("keep"), env.name("pkg")
    unit = f"{pkg}.service"
    env.repo.commit(base_files(env, service(keep), service(pkg)))
    env.sync()
    (host.unit_dir / unit).unlink()
    (host.root / "usr/lib/systemd/system" / unit).write_text(
        "[Service]\nExecStart=/bin/sleep infinity\n"
    )
    host.systemctl("daemon-reload")
    host.systemctl("restart", unit)
    before = env.invocations(unit)
    env.repo.commit(base_files(env, service(keep)), message="drop pkg")
    changed_at = time.monotonic()
    out = env.sync()
    converge = time.monotonic() - changed_at
    again = env.sync()
    kept = active_state(env, unit) == "active" and env.invocations(unit) == before
    fault_report(
        "prune of a unit now served by a vendor file",
        "the manifest entry is dropped; the unit is not stopped or disabled (its unit is not "
        "the reconciler's file)",
        converge,
        kept,
    )
    assert out["result"] in ("applied", "noop"), out
    assert not any(f"stop {unit}" in a for a in out["actions"]), out  # type: ignore[union-attr]
    assert again["result"] == "noop", again
    assert kept


# ---- 2. foreign temp files ---------------------------------------------------------------------


def test_foreign_temp_files_are_kept(fenv: FaultEnv, fault_report: Report) -> None:
    a = fenv.name("alpha")
    fenv.repo.commit(base_files(fenv, service(a, greeting="one")))
    fenv.sync()
    unit_dir = fenv.host.unit_dir
    foreign = {
        f".operator-draft-{fenv.tag}.tmp": "[Service]\nExecStart=/bin/true\n",
        f".{a}.service.abc123.tmp": "another tool's temp file\n",
    }
    for name, text in foreign.items():
        (unit_dir / name).write_text(text)
    own = unit_dir / f".reconciler-{fenv.tag}.tmp"  # what a killed sync of ours leaves
    own.write_text(f"{MARKER} (service {a}); left by a killed sync\n")
    try:
        fenv.repo.commit(base_files(fenv, service(a, greeting="two")))
        changed_at = time.monotonic()
        out = fenv.sync()
        converge = time.monotonic() - changed_at
        kept = {n: (unit_dir / n).read_text() for n in foreign if (unit_dir / n).exists()}
        fault_report(
            "foreign .*.tmp files in the unit directory",
            "kept: only the reconciler's own temp files (.reconciler-*.tmp carrying its "
            "marker) are cleaned up",
            converge,
            kept == foreign,
        )
        assert out["result"] == "applied"
        assert kept == foreign
        assert not own.exists(), "the reconciler's own leftover temp file is cleaned"
    finally:
        for name in foreign:
            (unit_dir / name).unlink(missing_ok=True)


# ---- 3. names the file system refuses; an alias of another unit ------------------------------


def test_longest_unit_name_is_applied_whole(fenv: FaultEnv, fault_report: Report) -> None:
    """A 247-character service name renders a 255-byte unit name: valid for systemd and
    NAME_MAX; the temp file next to it must not be longer."""
    first = fenv.name("first")
    long = ("x" * 240) + "-" + fenv.tag  # 247 characters
    assert len(long) == 247
    fenv.repo.commit(base_files(fenv, service(first)))
    fenv.sync()
    fenv.repo.commit(base_files(fenv, service(first), service(long)))
    changed_at = time.monotonic()
    proc = fenv.run("sync", "--json")
    converge = time.monotonic() - changed_at
    whole = proc.returncode == 0 and json.loads(proc.stdout)["result"] == "applied"
    if whole:
        fenv.settled([f"{first}.service", f"{long}.service"])
    fault_report(
        "247-character service name (255-byte unit name)",
        "temp file names have a fixed length, so any unit name systemd accepts can be written; "
        "names are checked against the unit directory's NAME_MAX before anything is written",
        converge if whole else None,
        whole,
    )
    assert whole, proc.stderr
    assert fenv.sync()["result"] == "noop"


def test_alias_of_a_vendor_unit_is_refused(own_env: FaultEnv, fault_report: Report) -> None:
    env, host = own_env, own_env.host
    vendor = "systemd-hostnamed.service"
    a = env.name("alias")
    entry = (
        f'[services.{a}]\ntemplate = "aliased.service.j2"\nhosts = ["web"]\n'
        f'vars = {{ alias = "{vendor}" }}\n'
    )
    env.repo.commit(base_files(env, service(env.name("keep"))))
    env.sync()
    before = unit_files(env)
    env.repo.commit(files_with(env, service(env.name("keep")), entry, aliased=ALIASED))
    proc = env.run("sync")
    refused_at = time.monotonic()
    clear = one_line_failure(proc.stderr, proc.returncode) and vendor in proc.stderr
    untouched = unit_files(env) == before and not (host.unit_dir / vendor).is_symlink()
    env.repo.commit(
        files_with(
            env, service(env.name("keep")), entry.replace(vendor, f"{a}-alias.service"),
            aliased=ALIASED,
        )
    )  # fmt: skip
    converge = env.converge(refused_at)
    resolved = host.run(["readlink", "-f", f"/etc/systemd/system/{a}-alias.service"]).stdout
    fault_report(
        "[Install] Alias= naming a vendor unit (systemd-hostnamed.service)",
        "refused before anything is written: an alias is owned like a unit name",
        converge,
        untouched,
    )
    assert clear, proc.stderr
    assert untouched
    assert resolved.strip() == f"/etc/systemd/system/{a}.service"


# ---- 4./5. kill -9 at each step of a prune ------------------------------------------------------

PRUNE_STEPS = {
    "before stop": ("StopUnit", "call"),
    "after stop": ("StopUnit", "reply"),
    "after disable": ("DisableUnitFiles", "reply"),
    "after removing the file": ("Reload", "call"),
    "after Reload": ("Reload", "reply"),
}


@pytest.mark.parametrize("step", list(PRUNE_STEPS))
def test_kill_9_at_each_step_of_prune(
    fenv: FaultEnv, dbus_tap: Callable[[str], DBusTap], fault_report: Report, step: str
) -> None:
    keep, gone, new = fenv.name("keep"), fenv.name("gone"), fenv.name("new")
    ukeep, ugone = f"{keep}.service", f"{gone}.service"
    fenv.repo.commit(base_files(fenv, service(keep), service(gone)))
    fenv.sync()
    before = fenv.invocations(ukeep)
    fenv.repo.commit(base_files(fenv, service(keep), service(new)), message="gone -> new")
    tap = dbus_tap(fenv.host.bus_address)
    tap.arm(*PRUNE_STEPS[step])
    killed_at = killed_sync(fenv, tap)
    converge = fenv.converge(killed_at, timeout=30)
    fenv.settled([ukeep, f"{new}.service"])
    again = fenv.sync()
    gone_state = fenv.show(ugone, "LoadState", "ActiveState")
    pruned = not (fenv.host.unit_dir / ugone).exists() and gone_state == {
        "LoadState": "not-found",
        "ActiveState": "inactive",
    }
    temp_left = list(fenv.host.unit_dir.glob(".reconciler-*.tmp"))  # staged before the kill
    nothing_lost = (
        fenv.invocations(ukeep) == before and pruned and again["result"] == "noop" and not temp_left
    )
    fault_report(
        f"kill -9 during a prune, {step}",
        "the next sync converges: each prune step is done only when still needed (stop a "
        "running unit of its own file, disable a present file, remove, reload); the new "
        "unit's file staged before the kill is cleaned up",
        converge,
        nothing_lost,
    )
    assert pruned, gone_state
    assert again["result"] == "noop", again
    assert not temp_left, temp_left
    assert nothing_lost


def test_failed_unit_pruned_then_killed_at_reload(
    fenv: FaultEnv, dbus_tap: Callable[[str], DBusTap], fault_report: Report
) -> None:
    keep, bad = fenv.name("keep"), fenv.name("bad")
    ubad = f"{bad}.service"
    entry = f'[services.{bad}]\ntemplate = "failing.service.j2"\nhosts = ["web"]\nenable = false\n'
    fenv.repo.commit(files_with(fenv, service(keep), entry, failing=FAILING))
    fenv.sync()
    wait_for(lambda: active_state(fenv, ubad) == "failed", 20)
    fenv.repo.commit(files_with(fenv, service(keep), failing=FAILING), message="prune bad")
    tap = dbus_tap(fenv.host.bus_address)
    tap.arm("Reload", "call")
    killed_at = killed_sync(fenv, tap)
    converge = fenv.converge(killed_at, timeout=30)
    later = [fenv.sync() for _ in range(2)]
    state = fenv.show(ubad, "LoadState", "ActiveState")
    converged = [o["result"] for o in later] == ["noop", "noop"]
    fault_report(
        "failed enable=false unit pruned, sync killed at Reload",
        "the next sync finishes the prune (reload, reset the failed state) and leaves the "
        "manifest; later syncs are no-ops",
        converge,
        converged,
    )
    assert converged, later
    assert state == {"LoadState": "not-found", "ActiveState": "inactive"}, state


# ---- 6. the state database lost ---------------------------------------------------------------


def lose_database(env: FaultEnv, how: str) -> None:
    db = env.state / "state.db"
    if how == "deleted":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    else:
        with db.open("r+b") as fh:
            fh.write(b"this is not a database " * 200)


@pytest.mark.parametrize("how", ["deleted", "corrupted"])
def test_state_database_lost_then_service_removed(
    fenv: FaultEnv, fault_report: Report, how: str
) -> None:
    keep, gone = fenv.name("keep"), fenv.name("gone")
    ugone = f"{gone}.service"
    fenv.repo.commit(base_files(fenv, service(keep), service(gone)))
    fenv.sync()
    before = fenv.invocations(f"{keep}.service")
    lose_database(fenv, how)
    fenv.repo.commit(base_files(fenv, service(keep)), message="remove gone")
    changed_at = time.monotonic()
    out = fenv.sync()
    converge = time.monotonic() - changed_at
    pruned = not (fenv.host.unit_dir / ugone).exists() and active_state(fenv, ugone) != "active"
    nothing_lost = pruned and fenv.invocations(f"{keep}.service") == before
    fault_report(
        f"state database {how}, then a service removed",
        "pruned: every file carrying the reconciler's marker in the unit directory is owned, "
        "whatever the database says",
        converge,
        nothing_lost,
    )
    assert out["result"] == "applied", out
    assert nothing_lost, fenv.show(ugone, "ActiveState")


@pytest.mark.parametrize("how", ["deleted", "corrupted"])
def test_state_database_lost_while_holding_after_rollback(
    fenv: FaultEnv, fault_report: Report, how: str
) -> None:
    web = fenv.name("web")
    unit = f"{web}.service"
    good = fenv.repo.commit(base_files(fenv, service(web, health=5)))
    fenv.sync()
    bad = fenv.repo.commit(base_files(fenv, service(web, template="crasher.service.j2", health=3)))
    rolled = fenv.run("sync", "--json")
    assert rolled.returncode == 1 and "rolled back" in rolled.stderr, rolled.stderr
    running = fenv.invocations(unit)
    lose_database(fenv, how)
    lost_at = time.monotonic()
    proc = fenv.run("sync", "--json")
    converge = time.monotonic() - lost_at
    out = json.loads(proc.stdout) if proc.stdout else {}
    held = (
        proc.returncode == 0
        and out.get("revision") == good
        and "crasher" not in (fenv.host.unit_dir / unit).read_text()
        and fenv.invocations(unit) == running
    )
    # nothing the operator relied on is lost: the held revision's units are still managed
    status = json.loads(fenv.run("status", "--json", repo=None, host=None).stdout)
    monitor = json.loads(fenv.run("monitor", "--json", repo=None, host=None).stdout)
    known = [u["unit"] for u in status["units"]] == [unit] and [
        u["unit"] for u in monitor["units"]
    ] == [unit]
    quiet = not status["drift"] and not monitor["drift"] and not monitor["findings"]
    fault_report(
        f"state database {how} while holding at a good revision after a rollback",
        "still holds: the last good revision and the bad-revision marks are also kept in a "
        "small ledger file next to the git cache, read when the database has lost them; the "
        "sync that finds the host matching records the held revision's units, so status and "
        "the monitor still know them",
        converge if held and known else None,
        held and known and quiet,
    )
    assert held, (proc.returncode, proc.stderr, out, bad)
    assert known, (status["units"], monitor["units"])
    assert quiet, (status["drift"], monitor["drift"], monitor["findings"])


# ---- 7. a read-only unit directory ------------------------------------------------------------


def test_read_only_unit_directory(own_env: FaultEnv, fault_report: Report) -> None:
    env, host = own_env, own_env.host
    keep, gone, new = env.name("keep"), env.name("gone"), env.name("new")
    env.repo.commit(base_files(env, service(keep), service(gone)))
    env.sync()
    before = env.invocations(f"{keep}.service", f"{gone}.service")
    host.run(["sh", "-ec", "mount --bind /etc/systemd/system /etc/systemd/system && "
              "mount -o remount,bind,ro /etc/systemd/system"])  # fmt: skip
    env.repo.commit(base_files(env, service(keep), service(new)), message="replace gone by new")
    proc = env.run("sync")
    ro_at = time.monotonic()
    clear = one_line_failure(proc.stderr, proc.returncode) and "read-only" in proc.stderr.lower()
    untouched = env.invocations(f"{keep}.service", f"{gone}.service") == before
    host.run(["umount", "/etc/systemd/system"])
    converge = env.converge(ro_at)
    env.settled([f"{keep}.service", f"{new}.service"])
    fault_report(
        "read-only unit directory",
        "checked before the first stop (every new file is staged as a temp file first): one "
        "line, nothing stopped; converges once writable",
        converge,
        untouched,
    )
    assert clear, proc.stderr
    assert untouched, "nothing was stopped before the failure"
    assert active_state(env, f"{gone}.service") != "active"


# ---- beyond the issue: what else an operator's hand or an inventory can do ----------------

ALSO = """\
[Unit]
Description={{ service }} that enables another unit with it

[Service]
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
Also={{ also }}
"""


def test_also_naming_a_vendor_unit_is_refused(own_env: FaultEnv, fault_report: Report) -> None:
    """``Also=debug-shell.service`` would enable a root shell on tty9 with our unit."""
    env, host = own_env, own_env.host
    vendor = "debug-shell.service"
    assert (host.root / "lib/systemd/system" / vendor).exists()
    a = env.name("also")
    entry = (
        f'[services.{a}]\ntemplate = "also.service.j2"\nhosts = ["web"]\n'
        f'vars = {{ also = "{vendor}" }}\n'
    )
    env.repo.commit(base_files(env, service(env.name("keep"))))
    env.sync()
    before = unit_files(env)
    env.repo.commit(files_with(env, service(env.name("keep")), entry, also=ALSO))
    proc = env.run("sync")
    refused_at = time.monotonic()
    clear = one_line_failure(proc.stderr, proc.returncode) and vendor in proc.stderr
    enabled = host.systemctl("is-enabled", vendor, check=False).stdout.strip()
    untouched = unit_files(env) == before and enabled != "enabled"
    env.repo.commit(base_files(env, service(env.name("keep"))), message="drop Also=")
    converge = env.converge(refused_at)
    fault_report(
        "[Install] Also= naming a vendor unit (debug-shell.service)",
        "refused before anything is written: enabling a unit may enable only units the "
        "reconciler manages",
        converge,
        untouched,
    )
    assert clear, proc.stderr
    assert untouched, enabled


@pytest.mark.parametrize("what", ["directory", "symlink"])
def test_managed_unit_file_replaced_by_hand(
    fenv: FaultEnv, fault_report: Report, what: str
) -> None:
    """The operator replaces a managed unit file with a directory or a symlink to a file of
    their own: it is no longer the reconciler's; a sync names it and touches nothing."""
    a, b = fenv.name("alpha"), fenv.name("beta")
    unit = f"{a}.service"
    fenv.repo.commit(base_files(fenv, service(a, greeting="one"), service(b, greeting="one")))
    fenv.sync()
    path = fenv.host.unit_dir / unit
    own_copy = fenv.host.root / "etc" / f"operator-{fenv.tag}.service"
    path.unlink()
    if what == "directory":
        path.mkdir()
        (path / "notes").write_text("the operator's\n")
    else:
        own_copy.write_text("[Service]\nExecStart=/bin/sleep infinity\n")
        path.symlink_to(f"/etc/{own_copy.name}")
    try:
        fenv.repo.commit(base_files(fenv, service(a, greeting="two"), service(b, greeting="two")))
        proc = fenv.run("sync")
        refused_at = time.monotonic()
        clear = one_line_failure(proc.stderr, proc.returncode) and unit in proc.stderr
        kept = (
            path.is_dir() and (path / "notes").read_text() == "the operator's\n"
            if what == "directory"
            else path.is_symlink() and own_copy.read_text().startswith("[Service]")
        )
        if what == "directory":
            (path / "notes").unlink()
            path.rmdir()
        else:
            path.unlink()
        converge = fenv.converge(refused_at)
        fenv.settled([unit, f"{b}.service"])
        fault_report(
            f"managed unit file replaced by a {what} by hand",
            "not the reconciler's any more: one line naming it, nothing touched; converges "
            "once the operator removes it",
            converge,
            kept,
        )
        assert clear, proc.stderr
        assert kept
    finally:
        own_copy.unlink(missing_ok=True)
        if path.is_symlink():
            path.unlink()
