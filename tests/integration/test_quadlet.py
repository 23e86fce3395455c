"""Debian 13 hosts (systemd 257, Podman 5) and Quadlet containers, for real.

The host boots the Debian 13 root built by ``reconciler.devtools.rootfs`` (cached in
``.roots/``); the container's image is a busybox tarball ``podman import``-ed on the host
(no registry). Podman in the disposable host: the ``vfs`` storage driver (the root's
``/etc/containers/storage.conf``; overlay on the host's overlay fails) and ``Network=none``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.devtools import sandbox
from tests.faults.conftest import FaultEnv, clean_units, make_env
from tests.integration.test_sync import APP, HOSTS, MUTATING

pytestmark = pytest.mark.host

IMAGE = "localhost/reconciler-bb"
# busybox sh as the container's PID 1: without a TERM trap it would ignore systemd's stop
# (podman then waits 10 s and kills it: a failed unit)
CONTAINER = """\
[Unit]
Description={{ service }} in a container

[Container]
Image=localhost/reconciler-bb
Exec=/bin/sh -c "trap 'exit 0' TERM; echo {{ greeting }}; while :; do sleep 1 & wait; done"
Network=none
{{ extra }}

[Install]
WantedBy=multi-user.target
"""
VOLUME = "[Volume]\n"
TEMPLATES = {
    "web.container.j2": CONTAINER,
    # Podman knows no such key: its generator refuses the file
    "bad.container.j2": CONTAINER.replace("Network=none", "Network=none\nNoSuchKey=1"),
    # the container's command exits at once: the health gate fails
    "crash.container.j2": CONTAINER.replace("Exec=/bin/sh -c", "Exec=/bin/false -c"),
}


def import_image(host: sandbox.Host) -> sandbox.Host:
    """The test image, imported from a busybox tarball on ``host`` (~0.1 s; again: a no-op)."""
    if host.run(["podman", "image", "exists", IMAGE], check=False).returncode == 0:
        return host
    host.run(
        ["sh", "-c", "mkdir -p /tmp/bb/bin && cp /bin/busybox /tmp/bb/bin/ && "
         "for c in sh sleep true false; do ln -sf busybox /tmp/bb/bin/$c; done && "
         f"tar -C /tmp/bb -cf /tmp/bb.tar . && podman import -q /tmp/bb.tar {IMAGE}"],
        env={"PODMAN_IGNORE_CGROUPSV1_WARNING": "1"},
    )  # fmt: skip
    return host


@pytest.fixture(scope="module")
def podman_host(trixie_host: sandbox.Host) -> sandbox.Host:
    """The 257 host with the test image (once per module)."""
    return import_image(trixie_host)


def clean_quadlets(env: FaultEnv) -> None:
    """Stop this env's generated services and remove its Quadlet files."""
    qdir = env.host.root / "etc/containers/systemd"
    files = list(qdir.glob(f"*-{env.tag}.*"))
    if files:
        env.host.run(["sh", "-c", f"systemctl stop '*-{env.tag}*.service'"], check=False)
        for f in files:
            f.unlink(missing_ok=True)
        env.host.systemctl("daemon-reload", check=False)
        env.host.systemctl("reset-failed", check=False)


@pytest.fixture
def qenv(podman_host: sandbox.Host, tmp_path: Path) -> Iterator[FaultEnv]:
    env = make_env(podman_host, tmp_path)
    try:
        yield env
    finally:
        clean_quadlets(env)
        clean_units(env)


def inventory(env: FaultEnv, *, greeting: str = "hi", template: str = "web.container.j2",
              health: float = 20, app: bool = True, container: bool = True,
              volume: bool = False) -> None:  # fmt: skip
    web, plain, data = env.name("web"), env.name("app"), env.name("data")
    entries = []
    if container:
        entries.append(
            f'[services.{web}]\nkind = "container"\ntemplate = "{template}"\n'
            f'hosts = ["web"]\nvars = {{ greeting = "{greeting}", extra = "" }}\n'
            f"[services.{web}.health]\ntimeout_sec = {health}\n"
        )
    if app:
        entries.append(f'[services.{plain}]\ntemplate = "app.service.j2"\nhosts = ["web"]\n')
    if volume:
        entries.append(
            f'[services.{data}]\nkind = "volume"\ntemplate = "data.volume.j2"\nhosts = ["web"]\n'
        )
    env.repo.commit(
        {
            "inventory/hosts.toml": HOSTS,
            "inventory/services.toml": "\n".join(entries),
            **{f"templates/{name}": text for name, text in TEMPLATES.items()},
            "templates/app.service.j2": APP,
            "templates/data.volume.j2": VOLUME,
        },
        message=f"greeting {greeting} {template}",
    )


def test_257_host_boots_and_syncs_a_plain_service(qenv: FaultEnv) -> None:
    version = qenv.host.run(["systemctl", "--version"]).stdout.split()[1]
    assert int(version) >= 257, version
    inventory(qenv, container=False)
    assert qenv.sync()["result"] == "applied"
    app = f"{qenv.name('app')}.service"
    assert qenv.states(app) == {app: ("active", "enabled")}
    again = qenv.sync()
    assert again["result"] == "noop", again
    assert not MUTATING & set(again["dbus_calls"])  # type: ignore[arg-type]


def test_container_synced_changed_refused_rolled_back_and_removed(qenv: FaultEnv) -> None:
    env, host = qenv, qenv.host
    web, app, vol = f"{env.name('web')}.service", f"{env.name('app')}.service", "data"
    path = host.root / f"etc/containers/systemd/{env.name('web')}.container"
    inventory(env, volume=True)
    first = env.sync()
    assert first["result"] == "applied", first
    assert env.show(web, "ActiveState", "SubState") == {"ActiveState": "active",
                                                        "SubState": "running"}  # fmt: skip
    assert env.show(f"{env.name(vol)}-volume.service", "ActiveState")["ActiveState"] == "active"
    assert path.read_text().startswith("# Managed by reconciler")
    ps = host.run(["podman", "ps", "--format", "{{.Names}}"]).stdout.split()
    assert f"systemd-{env.name('web')}" in ps
    again = env.sync()
    assert again["result"] == "noop" and not MUTATING & set(again["dbus_calls"])  # type: ignore[arg-type]

    # monitored: no drift while it runs as synced; a hand edit and a stop are drift
    monitor = json.loads(env.run("monitor", "--json", repo=None, host=None).stdout)
    assert monitor["drift"] == [], monitor["drift"]
    quadlet_path = f"/etc/containers/systemd/{env.name('web')}.container"
    path.write_text(path.read_text() + "# edited\n")
    host.systemctl("stop", web)
    monitor = json.loads(env.run("monitor", "--json", repo=None, host=None).stdout)
    drift = {(d["unit"], d["aspect"], d["have"]) for d in monitor["drift"]}
    stale = (web, "reload", "changed on disk since the last daemon-reload")  # its SourcePath=
    edited = (quadlet_path, "config", "content edited by hand")
    assert drift == {edited, (web, "active", "inactive"), stale}, drift
    assert env.sync()["result"] == "applied"  # puts the file back, starts the container

    # a change restarts the container's service only
    before = env.invocations(web, app)
    inventory(env, greeting="changed", volume=True)
    changed = env.sync()
    assert changed["result"] == "applied", changed
    after = env.invocations(web, app)
    assert after[web] != before[web] and after[app] == before[app]
    assert f"restart {web}" in changed["actions"]  # type: ignore[operator]
    good = path.read_text()

    # a key Podman does not know: refused by the generator's dry run, host untouched
    inventory(env, greeting="bad", template="bad.container.j2", volume=True)
    proc = env.run("sync")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert f"services.{env.name('web')}.kind: Quadlet refuses" in lines[0], lines
    assert "NoSuchKey" in lines[0]
    assert path.read_text() == good and env.invocations(web, app) == after

    # a container that exits at once fails the health gate: rolled back to the good file
    inventory(env, greeting="crash", template="crash.container.j2", health=4, volume=True)
    proc = env.run("sync")
    assert proc.returncode != 0 and "rolled back" in proc.stderr, proc.stderr
    assert path.read_text() == good
    assert env.show(web, "ActiveState")["ActiveState"] == "active"

    # removed from the inventory: stopped, its file pruned, the unit gone
    inventory(env, container=False)
    pruned = env.sync("--force")
    assert pruned["result"] == "applied", pruned
    assert not path.exists()
    assert env.show(web, "LoadState")["LoadState"] == "not-found"
    ps = host.run(["podman", "ps", "-a", "--format", "{{.Names}}"]).stdout.split()
    assert f"systemd-{env.name('web')}" not in ps
    assert env.show(app, "ActiveState")["ActiveState"] == "active"


def test_plan_shows_the_quadlet_file_and_its_service(qenv: FaultEnv) -> None:
    inventory(qenv, app=False)
    out = json.loads(qenv.reconciler("plan", "--json").stdout)
    text = json.dumps(out)
    assert f"/etc/containers/systemd/{qenv.name('web')}.container" in text
    assert f"start {qenv.name('web')}.service" in text
    assert not (
        qenv.host.root / "etc/containers/systemd" / f"{qenv.name('web')}.container"
    ).exists()
    started = time.monotonic()
    assert qenv.sync()["result"] == "applied"
    assert time.monotonic() - started < 30


def test_the_examples_container_passes_podman_5s_dry_run() -> None:
    from reconciler.devtools import rootfs
    from reconciler.reconcile import quadlet
    from reconciler.reconcile.render import render_all
    from reconciler.reconcile.working_tree import read
    from tests.conftest import REPO

    units, files = render_all(read(REPO), "apps1")
    assert [f.path for f in files if f.quadlet] == ["/etc/containers/systemd/whoami.container"]
    assert "whoami.service" in [u.name for u in units]
    assert quadlet.check(files, rootfs.ensure()) is None


def test_a_plain_service_becomes_a_container(qenv: FaultEnv) -> None:
    """Same name, kind changed: our unit file goes (it would shadow the generated unit)."""
    env, web = qenv, f"{qenv.name('web')}.service"
    env.repo.commit(
        {"inventory/hosts.toml": HOSTS, "templates/app.service.j2": APP,
         "inventory/services.toml":
             f'[services.{env.name("web")}]\ntemplate = "app.service.j2"\nhosts = ["web"]\n'}
    )  # fmt: skip
    assert env.sync()["result"] == "applied"
    assert (env.host.unit_dir / web).exists()
    inventory(env, app=False)
    assert env.sync()["result"] == "applied"
    assert not (env.host.unit_dir / web).exists()
    assert env.show(web, "ActiveState", "FragmentPath") == {
        "ActiveState": "active",
        "FragmentPath": f"/run/systemd/generator/{web}",
    }
    assert env.sync()["result"] == "noop"
    # and back: refused in one line while the generated unit holds the name
    plain = f'[services.{env.name("web")}]\ntemplate = "app.service.j2"\nhosts = ["web"]\n'
    env.repo.commit({"inventory/services.toml": plain})
    proc = env.run("sync")
    assert proc.returncode == 1 and f"/run/systemd/generator/{web}" in proc.stderr, proc.stderr
    assert env.show(web, "ActiveState")["ActiveState"] == "active"
