"""Every unit kind on the real disposable systemd: a socket starts its service (the sync does
not), a path unit waits, a mount is mounted, a target is active; a second sync is a no-op."""

from __future__ import annotations

import json
import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.core.unitkind import escape_path
from reconciler.devtools import sandbox
from tests.faults.conftest import FaultEnv, clean_units, make_env
from tests.integration.test_sync import HOSTS, MUTATING

pytestmark = pytest.mark.host

SOCKET = """\
[Socket]
ListenStream=127.0.0.1:{{ port }}
Service={{ target }}.service

[Install]
WantedBy=sockets.target
"""
ECHO = """\
[Service]
ExecStart=/bin/sleep infinity
"""
PATH = """\
[Path]
PathChanged=/run/{{ service }}.flag
Unit={{ job }}.service

[Install]
WantedBy=paths.target
"""
JOB = """\
[Service]
Type=oneshot
ExecStart=/bin/true
"""
MOUNT = """\
[Mount]
What=tmpfs
Where={{ where }}
Type=tmpfs

[Install]
WantedBy=multi-user.target
"""
TARGET = "[Unit]\nDescription={{ service }}\n"


def entry(name: str, kind: str, template: str, extra: str = "", **vars_: object) -> str:
    inline = ", ".join(f"{k} = {v!r}" for k, v in vars_.items())
    return (
        f'[services.\'{name}\']\nkind = "{kind}"\ntemplate = "{template}"\n'
        f'hosts = ["web"]\nvars = {{ {inline} }}\n{extra}\n'
    )


@pytest.fixture
def kinds_env(host: sandbox.Host, tmp_path: Path) -> Iterator[FaultEnv]:
    env = make_env(host, tmp_path)
    try:
        yield env
    finally:
        mount = f"{escape_path(f'/srv/kinds{env.tag}')}.mount"
        host.systemctl("stop", mount, check=False)
        (host.unit_dir / mount).unlink(missing_ok=True)
        host.systemctl("disable", mount, check=False)
        clean_units(env)


def test_every_kind_runs_as_systemd_means_it(kinds_env: FaultEnv) -> None:
    env = kinds_env
    port = random.randint(20000, 29999)
    echo, spool, job, stack = (env.name(n) for n in ("echo", "spool", "job", "stack"))
    mount = escape_path(f"/srv/kinds{env.tag}")
    inventory = "\n".join(
        [
            entry(echo, "socket", "echo.socket.j2", f"[services.'{echo}'.health]\ntimeout_sec = 6",
                  port=port, target=f"{echo}-svc"),
            entry(f"{echo}-svc", "service", "echo.service.j2", "enable = false"),
            entry(spool, "path", "spool.path.j2", job=job),
            entry(job, "service", "job.service.j2", "enable = false"),
            entry(mount, "mount", "data.mount.j2", where=f"/srv/kinds{env.tag}"),
            entry(stack, "target", "stack.target.j2", "enable = false"),
        ]
    )  # fmt: skip
    env.repo.commit(
        {
            "inventory/hosts.toml": HOSTS,
            "inventory/services.toml": inventory,
            "templates/echo.socket.j2": SOCKET,
            "templates/echo.service.j2": ECHO,
            "templates/spool.path.j2": PATH,
            "templates/job.service.j2": JOB,
            "templates/data.mount.j2": MOUNT,
            "templates/stack.target.j2": TARGET,
        }
    )
    first = env.sync()
    assert first["result"] == "applied", first
    state = "ActiveState,SubState"
    assert env.show(f"{echo}.socket", *state.split(",")) == {
        "ActiveState": "active",
        "SubState": "listening",
    }
    assert env.show(f"{spool}.path", "SubState")["SubState"] == "waiting"
    assert env.show(f"{mount}.mount", "SubState")["SubState"] == "mounted"
    assert env.show(f"{stack}.target", "ActiveState")["ActiveState"] == "active"
    for started_by_another in (f"{echo}-svc.service", f"{job}.service"):
        props = env.show(started_by_another, "ActiveState", "InvocationID")
        assert props == {"ActiveState": "inactive", "InvocationID": ""}, started_by_another

    with env.host.network(), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # the first connection starts the socket's service
    env.host.run(["touch", f"/run/{spool}.flag"])  # the path unit starts its job
    deadline = time.monotonic() + 10
    for started in (f"{echo}-svc.service", f"{job}.service"):
        while env.show(started, "InvocationID")["InvocationID"] == "":
            assert time.monotonic() < deadline, f"{started} was not started by its socket/path"
            time.sleep(0.1)

    env.host.run(["rm", f"/run/{spool}.flag"])
    env.host.run(["touch", f"/run/{spool}.flag"])  # a second run: a job, not a flapping unit
    time.sleep(0.5)
    monitor = json.loads(env.run("monitor", "--json", repo=None, host=None).stdout)
    ours = {f"{echo}.socket", f"{echo}-svc.service", f"{spool}.path", f"{job}.service"}
    ours |= {f"{mount}.mount", f"{stack}.target"}
    assert {u["unit"] for u in monitor["units"]} >= ours, monitor["units"]
    assert [d for d in monitor["drift"] if d["unit"] in ours] == []
    assert [f for f in monitor["findings"] if f["unit"] in ours] == []

    second = env.sync()
    assert second["result"] == "noop", second
    assert not MUTATING & set(second["dbus_calls"])  # type: ignore[arg-type]
