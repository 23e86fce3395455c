"""Drop-ins on the real disposable systemd: a vendor unit adjusted, restarted when its drop-in
changes (only reloaded with ``restart = false``), a hand-made drop-in never touched, the
reconciler's own removed when the inventory drops it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.devtools import sandbox
from reconciler.host import journal
from tests.faults.conftest import FaultEnv, clean_units, make_env
from tests.integration.test_sync import APP, HOSTS, MUTATING

pytestmark = pytest.mark.host

VENDOR = "[Service]\nExecStart=/bin/sleep infinity\n"
CONF = "[Service]\nEnvironment=GREETING={{ greeting }}\n"


def dropin(unit: str, name: str, greeting: str, restart: bool = True) -> str:
    return (
        f'[dropins."{unit}".{name}]\ntemplate = "env.conf.j2"\nhosts = ["web"]\n'
        f'vars = {{ greeting = "{greeting}" }}\nrestart = {str(restart).lower()}\n'
    )


@pytest.fixture
def dropin_env(host: sandbox.Host, tmp_path: Path) -> Iterator[tuple[FaultEnv, str, str]]:
    env = make_env(host, tmp_path)
    vendor, template = f"vend-{env.tag}.service", f"tpl-{env.tag}@.service"
    lib = host.root / "usr/lib/systemd/system"
    (lib / vendor).write_text(VENDOR)
    (lib / template).write_text(VENDOR)
    host.systemctl("daemon-reload")
    host.systemctl("start", vendor)
    try:
        yield env, vendor, template
    finally:
        host.systemctl("stop", vendor, check=False)
        for name in (vendor, template):
            (lib / name).unlink(missing_ok=True)
            d = host.unit_dir / f"{name}.d"
            if d.is_dir():
                for f in d.iterdir():
                    f.unlink()
                d.rmdir()
        clean_units(env)


def app(name: str) -> str:
    return f'[services.{name}]\ntemplate = "app.service.j2"\nhosts = ["web"]\n'


def commit(env: FaultEnv, *entries: str) -> None:
    env.repo.commit(
        {
            "inventory/hosts.toml": HOSTS,
            "inventory/services.toml": "\n".join(entries),
            "templates/env.conf.j2": CONF,
            "templates/app.service.j2": APP,
        }
    )


def test_dropins_adjust_vendor_units(dropin_env: tuple[FaultEnv, str, str]) -> None:
    env, vendor, template = dropin_env
    ours = env.host.unit_dir / f"{vendor}.d/50-reconciler-env.conf"
    before = env.show(vendor, "InvocationID")["InvocationID"]

    commit(env, dropin(vendor, "env", "hello"), dropin(template, "env", "hi"))
    first = env.sync()
    assert first["result"] == "applied", first
    assert ours.read_text().startswith("# Managed by reconciler")
    assert (env.host.unit_dir / f"{template}.d/50-reconciler-env.conf").is_file()
    props = env.show(vendor, "InvocationID", "Environment", "DropInPaths")
    assert props["Environment"] == "GREETING=hello"
    assert props["InvocationID"] != before, "the adjusted unit is restarted"
    assert f"restart {vendor}" in first["actions"]  # type: ignore[operator]

    second = env.sync()
    assert second["result"] == "noop", second
    assert not MUTATING & set(second["dbus_calls"])  # type: ignore[arg-type]

    # a hand-made drop-in on a managed unit is reported by the monitor, never removed
    managed = env.name("app")
    commit(env, dropin(vendor, "env", "hello"), dropin(template, "env", "hi"), app(managed))
    assert env.sync()["result"] == "applied"
    by_hand = env.host.unit_dir / f"{managed}.service.d/10-by-hand.conf"
    by_hand.parent.mkdir()
    by_hand.write_text("[Service]\nNice=3\n")
    monitor = json.loads(env.run("monitor", "--json", repo=None, host=None).stdout)
    drift = [d for d in monitor["drift"] if d["unit"] == f"{managed}.service"]
    assert [(d["aspect"], d["have"]) for d in drift] == [("dropin", "10-by-hand.conf foreign")]
    assert env.sync()["result"] == "noop" and by_hand.exists()
    by_hand.unlink()
    by_hand.parent.rmdir()

    foreign = env.host.unit_dir / f"{vendor}.d/10-local.conf"
    foreign.write_text("[Service]\nNice=5\n")  # an operator's own drop-in
    env.host.systemctl("daemon-reload")
    running = env.show(vendor, "InvocationID")["InvocationID"]
    commit(env, dropin(vendor, "env", "changed", restart=False), dropin(template, "env", "hi"))
    third = env.sync()
    assert third["result"] == "applied", third
    assert "GREETING=changed" in ours.read_text()
    props = env.show(vendor, "InvocationID", "Environment")
    assert props == {"InvocationID": running, "Environment": "GREETING=changed"}, "reload only"
    assert foreign.read_text() == "[Service]\nNice=5\n"

    commit(env, dropin(template, "env", "hi"))
    fourth = env.sync()
    assert fourth["result"] == "applied", fourth
    assert not ours.exists() and foreign.exists(), "only our drop-in is pruned"
    assert env.show(vendor, "InvocationID")["InvocationID"] != running
    assert env.show(vendor, "Environment")["Environment"] == ""


def test_rollback_restores_dropins(dropin_env: tuple[FaultEnv, str, str]) -> None:
    env, vendor, template = dropin_env
    ours = env.host.unit_dir / f"{vendor}.d/50-reconciler-env.conf"
    gone = env.host.unit_dir / f"{vendor}.d/50-reconciler-old.conf"
    commit(env, dropin(vendor, "env", "good"), dropin(vendor, "old", "kept"))
    good = env.sync()["revision"]
    commit(env, dropin(vendor, "env", "later"))
    assert env.sync()["result"] == "applied"
    assert not gone.exists() and "GREETING=later" in ours.read_text()
    env.run("rollback", str(good)[:12])
    assert "GREETING=good" in ours.read_text() and gone.exists()
    assert env.show(vendor, "Environment")["Environment"] == "GREETING=kept"  # later file wins


def test_template_dropin_restarts_running_instances(
    dropin_env: tuple[FaultEnv, str, str],
) -> None:
    env, _, template = dropin_env
    running, stopped = template.replace("@.", "@one."), template.replace("@.", "@two.")
    env.host.systemctl("start", running)
    try:
        before = env.show(running, "InvocationID")["InvocationID"]
        commit(env, dropin(template, "env", "hi"))
        out = env.sync()
        assert out["result"] == "applied", out
        assert f"restart {running}" in out["actions"], out  # type: ignore[operator]
        props = env.show(running, "InvocationID", "Environment")
        assert props["InvocationID"] != before and props["Environment"] == "GREETING=hi"
        assert env.show(stopped, "ActiveState")["ActiveState"] == "inactive", "not started"
        assert env.sync()["result"] == "noop"
    finally:
        env.host.systemctl("stop", running, check=False)


def test_plan_shows_the_merged_unit_and_drift_covers_vendor_dropins(
    dropin_env: tuple[FaultEnv, str, str],
) -> None:
    env, vendor, _ = dropin_env
    local = env.host.unit_dir / f"{vendor}.d/10-local.conf"
    local.parent.mkdir()
    local.write_text("[Service]\nNice=5\n")  # an operator's own drop-in, applied before ours
    commit(env, dropin(vendor, "env", "hello"))
    plan = env.run("plan")
    assert plan.returncode == 0, plan.stderr
    merged = plan.stdout[plan.stdout.index(f"{vendor} after this plan") :]
    order = [line for line in merged.splitlines() if line.startswith("# /")]
    assert order == [
        f"# /usr/lib/systemd/system/{vendor}",
        f"# /etc/systemd/system/{vendor}.d/10-local.conf",
        f"# /etc/systemd/system/{vendor}.d/50-reconciler-env.conf",
    ], merged
    assert "Environment=GREETING=hello" in merged and "Nice=5" in merged
    assert env.sync()["result"] == "applied"

    # ours edited by hand on a vendor unit: a drift finding (the operator's own is not ours)
    ours = env.host.unit_dir / f"{vendor}.d/50-reconciler-env.conf"
    ours.write_text(ours.read_text().replace("hello", "by hand"))
    monitor = json.loads(env.run("monitor", "--json", repo=None, host=None).stdout)
    drift = [(d["aspect"], d["have"]) for d in monitor["drift"] if d["unit"] == vendor]
    assert drift == [("dropin", "50-reconciler-env.conf edited by hand")], monitor["drift"]

    # a drop-in that makes the merged unit invalid is refused before it is written
    env.repo.commit({"templates/env.conf.j2": "[Service]\nNice={{ greeting }}\n"})
    refused = env.run("sync")
    assert refused.returncode == 1 and "systemd-analyze refused" in refused.stderr, refused
    assert "by hand" in ours.read_text(), "nothing written"


def test_plan_and_sync_say_what_a_dropin_does_not_do(
    dropin_env: tuple[FaultEnv, str, str],
) -> None:
    """README-only users' trials, both silent before: a drop-in for a unit this host has
    nowhere (a typo, or a package not installed yet: written all the same), and a drop-in
    changed with ``restart = false`` under a running unit, which keeps its old settings while
    systemd's properties already show the new ones."""
    env, vendor, _ = dropin_env
    ghost = f"ghost-{env.tag}.service"
    note_id = journal.message_id("sync.note")
    nowhere = f"{ghost}.d/50-reconciler-env.conf: {ghost} is not on this host"
    commit(env, dropin(vendor, "env", "hello"), dropin(ghost, "env", "boo"))
    plan = env.run("plan")
    assert plan.returncode == 0 and f"note: {nowhere}" in plan.stdout, plan.stdout + plan.stderr
    started = time.time()
    first = env.sync()
    assert first["result"] == "applied", first
    assert any(n.startswith(nowhere) for n in first["notes"]), first  # type: ignore[union-attr]
    assert (env.host.unit_dir / f"{ghost}.d/50-reconciler-env.conf").is_file(), "written"

    running = env.show(vendor, "InvocationID")["InvocationID"]
    commit(env, dropin(vendor, "env", "changed", restart=False), dropin(ghost, "env", "boo"))
    pending = f"{vendor} needs a restart to take its changed drop-in {vendor}.d/"
    plan = env.run("plan")
    assert f"note: {pending}" in plan.stdout, plan.stdout
    second = env.sync()
    assert second["result"] == "applied", second
    assert any(n.startswith(pending) for n in second["notes"]), second  # type: ignore[union-attr]
    assert env.show(vendor, "InvocationID")["InvocationID"] == running, "not restarted"
    env.host.journal_sync()
    said = [
        str(e["MESSAGE"])
        for e in env.host.journal(f"MESSAGE_ID={note_id}")
        if int(str(e["__REALTIME_TIMESTAMP"])) >= started * 1e6
    ]
    assert [m for m in said if m.startswith(nowhere)] and [m for m in said if m.startswith(pending)]
    status = env.run("status", repo=None, host=None)  # said after the sync too, until a restart
    assert f"restart pending: {vendor} runs on its old settings" in status.stdout, status.stdout
    data = json.loads(env.run("status", "--json", repo=None, host=None).stdout)
    assert [p["unit"] for p in data["pending_restart"]] == [vendor], data["pending_restart"]
    env.host.systemctl("restart", vendor)
    data = json.loads(env.run("status", "--json", repo=None, host=None).stdout)
    assert data["pending_restart"] == [], data["pending_restart"]

    commit(env, dropin(vendor, "env", "changed", restart=False))  # the ghost's is pruned
    assert env.sync()["result"] == "applied"
    assert not (env.host.unit_dir / f"{ghost}.d/50-reconciler-env.conf").exists()
    (env.host.unit_dir / f"{ghost}.d").rmdir()  # the directory stays, as for any unit
