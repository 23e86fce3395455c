"""Config-file and drop-in faults: bad ``[files."PATH"]`` / ``[dropins]`` entries pushed by an
operator, and ``kill -9`` while files and drop-ins are half applied. Real commits, a whole
``reconciler sync`` process, the disposable systemd.

Each bad entry comes in a revision that also changes a good file: the sync must refuse it in
one line naming ``inventory/services.toml`` and the key, with nothing written (the good file
keeps its old content, the service its InvocationID, the operator's own file its content).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.devtools import sandbox
from tests.faults.conftest import DBusTap, FaultEnv, Report, clean_units, make_env
from tests.integration.test_files import APP, CONF
from tests.integration.test_sync import HOSTS

pytestmark = pytest.mark.host

THEIRS = "the operator's own\n"


@dataclass
class FilesEnv:
    env: FaultEnv
    top: str  # the host path allowed by files_roots

    @property
    def app(self) -> str:
        return f"{self.env.name('app')}.service"

    def on_host(self, path: str) -> Path:
        return self.env.host.root / path.lstrip("/")

    def entries(self, greeting: str, extra: str = "", dropin: str = "") -> dict[str, str]:
        app = self.env.name("app")
        services = (
            f'[services.{app}]\ntemplate = "app.service.j2"\nhosts = ["web"]\n\n'
            f'[files."{self.top}/good.conf"]\ntemplate = "app.conf.j2"\nhosts = ["web"]\n'
            f'vars = {{ port = 80, greeting = "{greeting}" }}\nrestart = ["{app}.service"]\n\n'
            f'[dropins."{app}.service".env]\ntemplate = "env.conf.j2"\nhosts = ["web"]\n'
            f'vars = {{ greeting = "{dropin or greeting}" }}\n\n' + extra
        )
        return {
            "inventory/hosts.toml": HOSTS,
            "inventory/services.toml": services,
            "templates/app.service.j2": APP,
            "templates/app.conf.j2": CONF,
            "templates/env.conf.j2": "[Service]\nEnvironment=GREETING={{ greeting }}\n",
        }


def files_env(host: sandbox.Host, base: Path) -> Iterator[FilesEnv]:
    env = make_env(host, base)
    top = f"/etc/app-{env.tag}"
    env.configure(f'files_roots = ["{top}"]\n')
    fe = FilesEnv(env, top)
    fe.on_host(top).mkdir()
    fe.on_host(f"{top}/real").mkdir()
    os.symlink(fe.on_host(f"{top}/real"), fe.on_host(f"{top}/link"))
    fe.on_host(f"{top}/theirs.conf").write_text(THEIRS)
    env.repo.commit(fe.entries("v1"), message="good")
    assert env.sync()["result"] == "applied"
    try:
        yield fe
    finally:
        shutil.rmtree(env.host.unit_dir / f"{fe.app}.d", ignore_errors=True)
        clean_units(env)
        shutil.rmtree(fe.on_host(top), ignore_errors=True)


@pytest.fixture(scope="module")
def applied(host: sandbox.Host, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FilesEnv]:
    yield from files_env(host, tmp_path_factory.mktemp("files"))


def entry(path: str, extra: str = "") -> str:
    return f'[files."{path}"]\ntemplate = "app.conf.j2"\nhosts = ["web"]\n' + (
        f'vars = {{ port = 1, greeting = "x" }}\n{extra}\n'
    )


# (fault, bad entry given the allowed root and the env's tag, what the one line says)
BAD: dict[str, tuple[Callable[[str, str], str], str]] = {
    "path outside files_roots": (
        lambda top, tag: entry(f"/etc/other-{tag}/x.conf"),
        "is outside this host's files_roots",
    ),
    "symlink in the path": (
        lambda top, tag: entry(f"{top}/link/x.conf"),
        "/link' is a symlink or not a directory",
    ),
    "'..' in the path": (
        lambda top, tag: entry(f"{top}/../shadow"),
        "'..', '.', '//' and a trailing '/' are not allowed",
    ),
    "a protected path inside a root": (
        lambda top, tag: entry(f"{top}/.ssh/authorized_keys"),
        "is a protected path (never written: authorized_keys)",
    ),
    "mode not octal": (
        lambda top, tag: entry(f"{top}/m.conf", 'mode = "rw-r--r--"'),
        '.mode: Input should be an octal mode string like "0644"',
    ),
    "owner not on the host": (
        lambda top, tag: entry(f"{top}/o.conf", f'owner = "nobody-{tag}"'),
        ".owner: user 'nobody-{tag}' does not exist on this host",
    ),
    "an unmanaged existing file without adopt": (
        lambda top, tag: entry(f"{top}/theirs.conf"),
        "exists and is not managed by reconciler (set adopt = true",
    ),
    "reload of a running unit that cannot reload": (
        lambda top, tag: entry(f"{top}/r.conf", 'reload = ["systemd-journald.service"]'),
        ".reload: 'systemd-journald.service' cannot reload (it has no ExecReload=)",
    ),
    "reload of a unit that is nowhere": (
        lambda top, tag: entry(f"{top}/n.conf", 'reload = ["nosuch.service"]'),
        ".reload: 'nosuch.service' is no unit of this host or its inventory",
    ),
    "a drop-in for an invalid unit name": (
        lambda top, tag: (
            '[dropins."bad name.service".x]\ntemplate = "env.conf.j2"\n'
            'hosts = ["web"]\nvars = { greeting = "x" }\n'
        ),
        "invalid unit name 'bad name.service'",
    ),
}


@pytest.mark.parametrize("fault", list(BAD))
def test_bad_file_entry_is_refused_before_anything(
    applied: FilesEnv, fault_report: Report, fault: str
) -> None:
    env, top = applied.env, applied.top
    make, says = BAD[fault]
    says = says.replace("{tag}", env.tag)
    before = env.invocations(applied.app)
    dropin = env.host.unit_dir / f"{applied.app}.d/50-reconciler-env.conf"
    env.repo.commit(applied.entries("v2", make(top, env.tag)), message=fault)
    proc = env.run("sync")
    line = proc.stderr.strip()
    untouched = (
        applied.on_host(f"{top}/good.conf").read_text().endswith("greeting = v1\n")
        and "GREETING=v1" in dropin.read_text()
        and applied.on_host(f"{top}/theirs.conf").read_text() == THEIRS
        and not list(applied.on_host(f"{top}/real").iterdir())
        and not applied.on_host(f"{top}/.ssh").exists()
        and env.invocations(applied.app) == before
    )
    env.repo.commit(applied.entries("v1"), message="good again")
    started = time.monotonic()
    again = env.sync()["result"]
    converge = time.monotonic() - started
    fault_report(
        f"config files: {fault}",
        "refused in one line naming inventory/services.toml and the key, before anything is "
        "written; the next good commit converges",
        converge,
        untouched and again == "noop",
    )
    assert proc.returncode == 1 and len(line.splitlines()) == 1, (proc.returncode, line)
    assert "inventory/services.toml:" in line and says in line, line
    assert untouched and again == "noop"


STEPS = {
    "after writing files": ("Reload", "call"),
    "during restarts": ("RestartUnit", "reply"),
}


@pytest.fixture
def own_files(host: sandbox.Host, tmp_path: Path) -> Iterator[FilesEnv]:
    yield from files_env(host, tmp_path)


@pytest.mark.parametrize("step", list(STEPS))
def test_kill_9_while_files_and_dropins_are_applied(
    own_files: FilesEnv, dbus_tap: Callable[[str], DBusTap], fault_report: Report, step: str
) -> None:
    """A config file and a drop-in of one running service changed in one revision, the sync
    killed once both are written (before the Reload) or while the service restarts; a temp
    file of a killed write left beside them. The next sync restarts the service once, keeps
    both, removes only its own temp file."""
    from tests.faults.test_host_faults import popen_sync

    env, top = own_files.env, own_files.top
    before = env.invocations(own_files.app)[own_files.app]
    env.repo.commit(own_files.entries("v2", dropin="d2"), message="change both")
    tap = dbus_tap(env.host.bus_address)
    tap.arm(*STEPS[step])
    argv = env.argv("sync", "--no-monitor")
    argv[argv.index("--bus") + 1] = tap.address
    proc = popen_sync(argv, env.env())
    tap.victim = proc.pid
    proc.communicate(timeout=60)
    killed_at = time.monotonic()
    assert tap.fired.is_set() and proc.returncode == -9, (proc.returncode, tap.calls)
    leftover = own_files.on_host(f"{top}/.reconciler-file-killed00.tmp")
    leftover.write_text("half")  # what a kill during a write leaves
    mine = own_files.on_host(f"{top}/.editor-swap.tmp")
    mine.write_text("the operator's")

    converge = env.converge(killed_at)
    props = env.show(own_files.app, "Environment", "InvocationID", "ActiveState")
    again = env.sync()["result"]
    good = own_files.on_host(f"{top}/good.conf").read_text()
    nothing_lost = (
        props["InvocationID"] != before
        and props["Environment"] == "GREETING=d2"
        and props["ActiveState"] == "active"
        and good.endswith("greeting = v2\n")
        and again == "noop"
        and not leftover.exists()
        and mine.read_text() == "the operator's"
        and own_files.on_host(f"{top}/theirs.conf").read_text() == THEIRS
    )
    fault_report(
        f"kill -9 {step} of config files and drop-ins",
        "next sync converges: the file and drop-in kept, the restart redone (pending list), "
        "its own leftover temp file removed, nobody else's",
        converge,
        nothing_lost,
    )
    assert nothing_lost, (props, again, good, leftover.exists())
