"""Quadlet faults (issue 14): a unit Podman's generator rejects, a container kind on a host
without Quadlet, and kill -9 between writing a Quadlet file and the Reload that generates its
service. Each is refused before anything is written, or finished by the next sync."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler.devtools import sandbox
from tests.conftest import TEST_ROOT, booted_host
from tests.faults.conftest import DBusTap, FaultEnv, Report, clean_units, make_env
from tests.integration.test_quadlet import clean_quadlets, import_image, inventory

pytestmark = pytest.mark.host


@pytest.fixture
def qfault(trixie_host: sandbox.Host, tmp_path: Path) -> Iterator[FaultEnv]:
    env = make_env(import_image(trixie_host), tmp_path)
    try:
        yield env
    finally:
        clean_quadlets(env)
        clean_units(env)


def quadlet_file(env: FaultEnv) -> Path:
    return env.host.root / f"etc/containers/systemd/{env.name('web')}.container"


def test_a_unit_the_generator_rejects_is_refused_before_anything(
    qfault: FaultEnv, fault_report: Report
) -> None:
    env = qfault
    web, app = f"{env.name('web')}.service", f"{env.name('app')}.service"
    inventory(env)
    env.sync()
    good, before = quadlet_file(env).read_text(), env.invocations(web, app)
    inventory(env, greeting="v2", template="bad.container.j2")  # v2: the app changes too
    planned = env.run("plan")  # plan asks the generator too
    proc = env.run("sync")
    line = proc.stderr.strip()
    untouched = quadlet_file(env).read_text() == good and env.invocations(web, app) == before
    inventory(env)
    started = time.monotonic()
    again = env.sync()["result"]
    fault_report(
        "Quadlet: a unit Podman's generator rejects (unknown key)",
        "refused by the generator's dry run in one line naming services.NAME.kind and "
        "Podman's words, before anything is written; the next good commit converges",
        time.monotonic() - started,
        untouched and again == "noop",
    )
    assert planned.returncode == 1 and "Quadlet refuses" in planned.stderr, planned.stderr
    assert proc.returncode == 1 and len(line.splitlines()) == 1, line
    assert f"services.{env.name('web')}.kind: Quadlet refuses" in line and "NoSuchKey" in line
    assert untouched and again == "noop"


@pytest.fixture
def debian12_env(host: sandbox.Host, tmp_path: Path) -> Iterator[FaultEnv]:
    """The shared host, or (RECONCILER_TEST_ROOT set) one on the machine's own root."""
    with contextlib.ExitStack() as stack:
        if TEST_ROOT is not None:
            host = stack.enter_context(booted_host(None))
        env = make_env(host, tmp_path)
        try:
            yield env
        finally:
            clean_units(env)


def test_a_container_kind_on_a_host_without_quadlet_is_refused(
    debian12_env: FaultEnv, fault_report: Report
) -> None:
    """The machine's own Debian 12 root: Podman 4.3 at most, no Quadlet generator."""
    env = debian12_env
    inventory(env, container=False)
    env.sync()
    app = f"{env.name('app')}.service"
    before = env.invocations(app)
    inventory(env, greeting="v2")
    proc = env.run("sync")
    line = proc.stderr.strip()
    untouched = not quadlet_file(env).exists() and env.invocations(app) == before
    fault_report(
        "Quadlet: a container kind on a host without Podman >= 4.4",
        "refused in one line naming services.NAME.kind (Podman missing or older than 4.4), "
        "nothing written, the host's other units untouched",
        None,
        untouched,
    )
    assert proc.returncode == 1 and len(line.splitlines()) == 1, line
    assert f"services.{env.name('web')}.kind: this host cannot run a Quadlet unit" in line
    assert "Quadlet needs Podman >= 4.4" in line
    assert untouched


STEPS = {
    "after writing the Quadlet file, before the Reload": ("Reload", "call"),
    "while its service restarts": ("RestartUnit", "reply"),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_kill_9_between_the_quadlet_file_and_its_service(
    qfault: FaultEnv, dbus_tap: Callable[[str], DBusTap], fault_report: Report, step: str
) -> None:
    from tests.faults.test_host_faults import popen_sync

    env = qfault
    web = f"{env.name('web')}.service"
    inventory(env, app=False)
    env.sync()
    before = env.invocations(web)[web]
    inventory(env, greeting="v2", app=False)
    tap = dbus_tap(env.host.bus_address)
    tap.arm(*STEPS[step])
    argv = env.argv("sync", "--no-monitor")
    argv[argv.index("--bus") + 1] = tap.address
    proc = popen_sync(argv, env.env())
    tap.victim = proc.pid
    proc.communicate(timeout=60)
    killed_at = time.monotonic()
    assert tap.fired.is_set() and proc.returncode == -9, (proc.returncode, tap.calls)
    converge = env.converge(killed_at)
    props = env.show(web, "ActiveState", "InvocationID")
    again = env.sync()["result"]
    nothing_lost = (
        props["ActiveState"] == "active"
        and props["InvocationID"] != before
        and "v2" in quadlet_file(env).read_text()
        and "v2" in env.host.systemctl("cat", web).stdout  # generated from the new file
        and again == "noop"
    )
    fault_report(
        f"Quadlet: kill -9 {step}",
        "next sync converges: the generator runs (Reload), the container restarts once "
        "from the new file (pending list)",
        converge,
        nothing_lost,
    )
    assert nothing_lost, (props, again)
