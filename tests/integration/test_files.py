"""Config files (``[files."PATH"]``) on the real disposable systemd: written atomically with
their mode and owner (the host's groups), the service restarted or reloaded when they change,
shown in ``plan``, adopted and put back, pruned, drift-checked by the monitor, restored by a
rollback; never outside ``files_roots``."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.devtools import sandbox
from tests.faults.conftest import FaultEnv, clean_units, make_env
from tests.faults.test_ownership_faults import lose_database
from tests.integration.test_sync import HOSTS

pytestmark = pytest.mark.host

# SIGHUP appends to a log: a ReloadUnit is seen, a restart changes the InvocationID
APP = """\
[Unit]
Description={{ service }}

[Service]
ExecStart=/bin/sh -c 'trap "echo hup >> /run/{{ service }}.hups" HUP; while :; do sleep .2; done'
ExecReload=/bin/kill -HUP $MAINPID

[Install]
WantedBy=multi-user.target
"""
CONF = "# {{ service }} for {{ host.name }}\nport = {{ port }}\ngreeting = {{ greeting }}\n"
BLOB = bytes(range(256)) * 4


def file_entry(path: str, extra: str) -> str:
    return (
        f'[files."{path}"]\nhosts = ["web"]\nvars = {{ port = 80, greeting = "GREETING" }}\n'
        f"{extra}\n"
    )


@pytest.fixture
def files_env(host: sandbox.Host, tmp_path: Path) -> Iterator[tuple[FaultEnv, str]]:
    env = make_env(host, tmp_path)
    top = f"/etc/app-{env.tag}"
    env.configure(f'files_roots = ["{top}"]\n')
    (host.root / top.lstrip("/")).mkdir()
    try:
        yield env, top
    finally:
        clean_units(env)
        shutil.rmtree(host.root / top.lstrip("/"), ignore_errors=True)


def commit(env: FaultEnv, files: str, greeting: str = "hello", blob: bytes = BLOB) -> None:
    app = env.name("app")
    env.repo.commit(
        {
            "inventory/hosts.toml": HOSTS,
            "inventory/services.toml": f'[services.{app}]\ntemplate = "app.service.j2"\n'
            f'hosts = ["web"]\n\n' + files.replace("GREETING", greeting),
            "templates/app.service.j2": APP,
            "templates/app.conf.j2": CONF,
            "files/blob.bin": blob,
        }
    )


def test_config_files_lifecycle(files_env: tuple[FaultEnv, str]) -> None:
    env, top = files_env
    root = env.host.root
    app = f"{env.name('app')}.service"
    conf, blob = f"{top}/app.conf", f"{top}/sub/blob.bin"
    entries = file_entry(
        conf, f'template = "app.conf.j2"\nmode = "0640"\ngroup = "daemon"\nrestart = ["{app}"]'
    ) + file_entry(blob, f'source = "blob.bin"\nreload = ["{app}"]')
    commit(env, entries)
    first = env.sync()
    assert first["result"] == "applied", first
    on_host = root / conf.lstrip("/")
    st = on_host.stat()
    assert on_host.read_text() == f"# {conf} for testhost\nport = 80\ngreeting = hello\n"
    group_daemon = 1  # Debian's base-passwd: daemon is gid 1
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 0, group_daemon)
    assert (root / blob.lstrip("/")).read_bytes() == BLOB
    assert not list((root / top.lstrip("/")).glob(".reconciler-*")), "no temp file left"
    assert not Path(top).exists(), "written under the host's root, never this machine's /etc"
    assert env.sync()["result"] == "noop"

    # a changed template: plan shows the diff; the sync restarts the service that uses it
    before = env.show(app, "InvocationID")["InvocationID"]
    commit(env, entries, greeting="bonjour")
    plan = env.run("plan")
    assert plan.returncode == 0, plan.stderr
    assert f"--- a{conf}" in plan.stdout and "+greeting = bonjour" in plan.stdout, plan.stdout
    second = env.sync()
    assert second["result"] == "applied", second
    assert f"restart {app}" in second["actions"]  # type: ignore[operator]
    assert env.show(app, "InvocationID")["InvocationID"] != before

    # a changed binary file: plan shows sizes and sha256; the service is reloaded (SIGHUP)
    running = env.show(app, "InvocationID")["InvocationID"]
    commit(env, entries, greeting="bonjour", blob=BLOB[::-1])
    plan = env.run("plan")
    assert f"Binary file {blob}: 1024 bytes, sha256" in plan.stdout, plan.stdout
    third = env.sync()
    assert f"reload {app}" in third["actions"], third  # type: ignore[operator]
    assert env.show(app, "InvocationID")["InvocationID"] == running, "reloaded, not restarted"
    reloads = root / f"run/{env.name('app')}.hups"
    deadline = time.monotonic() + 5  # the trap runs once the shell's sleep ends
    while not reloads.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert reloads.read_text() == "hup\n"

    # edited by hand: the monitor reports it (content, mode), the file is not rewritten
    on_host.write_text("edited\n")
    os.chmod(on_host, 0o666)
    monitor = json.loads(env.run("monitor", "--json", repo=None, host=None).stdout)
    drift = sorted((d["aspect"], d["have"]) for d in monitor["drift"] if d["unit"] == conf)
    assert drift == [("config", "content edited by hand"), ("config", "mode 0666")], monitor
    assert on_host.read_text() == "edited\n"
    status = json.loads(env.run("status", "--json", repo=None, host=None).stdout)
    listed = {f["path"]: f for f in status["files"]}
    assert listed[conf]["drift"] == [
        "config: content edited by hand (want content as rendered)",
        "config: mode 0666 (want mode 0640)",
    ], listed
    assert listed[blob]["mode"] == "0644" and listed[blob]["owner"] == "0:0"
    # a first user's trial: MODE showed the desired 0640 of a file that was 0666; it is the
    # live file's mode (the desired one in want_mode and in the DRIFT column)
    assert (listed[conf]["mode"], listed[conf]["want_mode"]) == ("0666", "0640"), listed
    assert (listed[conf]["owner"], listed[conf]["want_owner"]) == ("0:1", "0:1"), listed
    text = env.run("status", repo=None, host=None).stdout
    row = next(line.split() for line in text.splitlines() if line.startswith(conf))
    assert row[:4] == [conf, "0666", "0:1", "config:"], text
    assert "mode 0666 (want mode 0640)" in text, text
    bundles = list((env.state / "diagnostics").glob("*-drift-_etc_app-*.tar.gz"))
    with tarfile.open(bundles[0]) as tar:  # the finding's bundle: no unit, not the file's content
        assert not [m for m in tar.getnames() if m.startswith("unit/")], tar.getnames()

    # removed from the repository: pruned (and the edit goes with it: the file was ours)
    commit(env, file_entry(conf, 'template = "app.conf.j2"'))
    fourth = env.sync()
    assert fourth["result"] == "applied", fourth
    assert not (root / blob.lstrip("/")).exists()
    assert stat.S_IMODE(on_host.stat().st_mode) == 0o644
    # a rollback to the first revision brings the binary file back
    env.run("rollback", str(first["revision"])[:12])
    assert (root / blob.lstrip("/")).read_bytes() == BLOB


def test_adopt_keeps_and_restores_the_original(files_env: tuple[FaultEnv, str]) -> None:
    env, top = files_env
    path = f"{top}/existing.conf"
    on_host = env.host.root / path.lstrip("/")
    on_host.write_text("the operator's\n")
    os.chmod(on_host, 0o600)
    commit(env, file_entry(path, 'template = "app.conf.j2"'))
    refused = env.run("sync")
    assert refused.returncode == 1
    line = refused.stderr.strip()
    assert f'files."{path}": exists and is not managed' in line and "adopt" in line, line
    assert len(line.splitlines()) == 1 and on_host.read_text() == "the operator's\n"

    commit(env, file_entry(path, 'template = "app.conf.j2"\nadopt = true'))
    assert env.sync()["result"] == "applied"
    assert "port = 80" in on_host.read_text()
    commit(env, "")
    assert env.sync()["result"] == "applied"
    assert on_host.read_text() == "the operator's\n"
    assert stat.S_IMODE(on_host.stat().st_mode) == 0o600


def test_lost_database_keeps_units_dropins_and_files_known(files_env: tuple[FaultEnv, str]) -> None:
    """Issue 11.6: after the state database is lost, the first sync (a no-op: the host
    matches) leaves status and the monitor knowing the units, drop-ins and config files."""
    env, top = files_env
    app = f"{env.name('app')}.service"
    conf = f"{top}/app.conf"
    dropin = f'[dropins."{app}".env]\ntemplate = "env.conf.j2"\nhosts = ["web"]\n'
    files = file_entry(conf, 'template = "app.conf.j2"') + dropin
    env.repo.commit(
        {
            "inventory/hosts.toml": HOSTS,
            "inventory/services.toml": f"[services.{env.name('app')}]\n"
            f'template = "app.service.j2"\nhosts = ["web"]\n\n'
            + files.replace("GREETING", "hello"),
            "templates/app.service.j2": APP,
            "templates/app.conf.j2": CONF,
            "templates/env.conf.j2": "[Service]\nEnvironment=GREETING=hello\n",
        }
    )
    try:
        assert env.sync()["result"] == "applied"
        lose_database(env, "deleted")
        assert env.sync()["result"] == "noop"
        status = json.loads(env.run("status", "--json", repo=None, host=None).stdout)
        assert [u["unit"] for u in status["units"]] == [app], status["units"]
        assert [f["path"] for f in status["files"]] == [conf], status["files"]
        monitor = json.loads(env.run("monitor", "--json", repo=None, host=None).stdout)
        assert [u["unit"] for u in monitor["units"]] == [app], monitor["units"]
        assert monitor["drift"] == [] and monitor["findings"] == [], monitor
        # the drop-in is known too: edited by hand, it is drift
        (env.host.unit_dir / f"{app}.d/env.conf").write_text("[Service]\nEnvironment=X=1\n")
        monitor = json.loads(env.run("monitor", "--json", repo=None, host=None).stdout)
        assert [d["unit"] for d in monitor["drift"]] == [app], monitor["drift"]
    finally:  # clean_units removes files, not the drop-in directory
        shutil.rmtree(env.host.unit_dir / f"{app}.d", ignore_errors=True)
