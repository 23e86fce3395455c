"""``reconciler events`` and ``counters --reset`` against the disposable systemd (issue 12.7).

One real service, applied by a real ``reconciler sync`` of a real git repository, then
restarted by an operator (``systemctl restart``), changed by a pushed commit (the sync
restarts it), crashing with an exit code and with a signal (systemd restarts it). Each step
is followed by a monitoring pass (the ``reconciler monitor`` CLI, a new process each time);
the kept events must name each change and who made it.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.gitrepo import ConfigRepo
from tests.integration.test_monitor import RECONCILER, REPO_HOSTS, Mon, mon, wait_for

pytestmark = pytest.mark.host
__all__ = ["mon"]  # the fixture, shared with test_monitor

# Exits 3 on SIGUSR1 (the shell waits on a child, so the trap runs at once). Six starts in
# about 8 s: systemd's default start limit (5 in 10 s) would refuse the last one. 252 reset
# the limit's count on every daemon-reload (the second sync reloads), 257 keeps it across
# reloads, so the operator's restart after the counters' reset hit it there.
APP = """\
[Unit]
StartLimitBurst=20

[Service]
ExecStart=/bin/sh -c 'echo v={{ version }}; trap "exit 3" USR1; \\
  while :; do sleep 0.2 & wait $!; done'
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
"""


def services(name: str, version: int) -> str:
    return (
        f'[services.{name}]\ntemplate = "app.service.j2"\nhosts = ["testhost"]\n'
        f"vars = {{ version = {version} }}\n"
    )


class Setup:
    def __init__(self, mon: Mon, repo: ConfigRepo, name: str) -> None:
        self.mon, self.repo, self.name = mon, repo, name
        self.unit = f"{name}.service"

    def sync(self) -> None:
        env = {
            **os.environ,
            "RECONCILER_JOURNAL_SOCKET": str(self.mon.host.journal_socket),
            "RECONCILER_CONFIG": str(self.mon.config),
        }
        proc = subprocess.run(
            [RECONCILER, "sync", "--repo", self.repo.url, "--host", "testhost", "--state-dir",
             str(self.mon.state), "--unit-dir", str(self.mon.host.unit_dir), "--run-dir",
             str(self.mon.state / "run"), "--bus", self.mon.host.bus_address],
            capture_output=True, text=True, timeout=120, check=False, env=env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr

    def events(self, *args: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = json.loads(self.mon.cli("events", *args, "--json").stdout)
        return out

    def wait(self, sub_state: str, n_restarts: int) -> None:
        want = {"SubState": sub_state, "NRestarts": str(n_restarts)}
        wait_for(lambda: self.mon.show(self.unit, *want) == want, 15, f"{self.unit}: {want}")


@pytest.fixture
def app(mon: Mon, tmp_path: Path) -> Iterator[Setup]:
    name = f"ev-{uuid.uuid4().hex[:6]}"
    repo = ConfigRepo(tmp_path / "git")
    repo.commit(
        {
            "inventory/hosts.toml": REPO_HOSTS,
            "inventory/services.toml": services(name, 1),
            "templates/app.service.j2": APP,
        }
    )
    setup = Setup(mon, repo, name)
    yield setup
    mon.host.systemctl("stop", setup.unit, check=False)
    mon.host.systemctl("disable", setup.unit, check=False)
    (mon.host.unit_dir / setup.unit).unlink(missing_ok=True)
    mon.host.systemctl("daemon-reload", check=False)


def test_events_say_what_happened_and_who_did_it(app: Setup) -> None:
    mon, unit = app.mon, app.unit
    app.sync()  # started by the sync (its own monitoring pass is the first look)
    mon.cli("monitor")

    mon.host.systemctl("restart", unit)  # an operator
    mon.cli("monitor")

    app.repo.commit({"inventory/services.toml": services(app.name, 2)}, "version 2")
    app.sync()  # restarted by the sync

    mon.host.systemctl("kill", "-s", "USR1", "--kill-whom=main", unit)  # exits 3
    app.wait("auto-restart", 0)  # NRestarts grows with the restart itself
    mon.cli("monitor")
    app.wait("running", 1)
    mon.cli("monitor")  # restarted by systemd

    mon.host.systemctl("kill", "-s", "KILL", unit)
    app.wait("auto-restart", 1)
    mon.cli("monitor")
    app.wait("running", 2)
    mon.cli("monitor")

    got = [(e["kind"], e["by"], e["exit_code"], e["signal"]) for e in app.events(app.name)]
    assert got == [
        ("start", "sync", None, None),
        ("stop", "operator", None, None),
        ("start", "operator", None, None),
        ("stop", "sync", None, None),
        ("start", "sync", None, None),
        ("crash", "", 3, None),
        ("start", "systemd", None, None),
        ("crash", "", None, "SIGKILL"),
        ("start", "systemd", None, None),
    ]
    assert [e for e in app.events() if e["unit"] == unit] == app.events(unit)
    text = mon.cli("events", unit).stdout
    assert "crash  -         exit code 3" in text and "signal SIGKILL" in text

    # counters: as systemd counts (NRestarts 2), then cleared, and nothing counted again
    counted = json.loads(mon.cli("counters", "--json").stdout)
    (mine,) = [c for c in counted if c["unit"] == unit]
    assert (mine["starts"], mine["crashes"], mine["last_signal"]) == (5, 2, "SIGKILL")
    assert json.loads(mon.cli("counters", "--reset", app.name, "--json").stdout) == {
        "reset": [unit]
    }
    mon.cli("monitor")
    after = mon.counters(unit)
    assert (after["starts"], after["stops"], after["crashes"]) == (0, 0, 0)
    assert after["last_signal"] is None and after["last_exit_code"] is None
    assert after["last_result"] is None
    assert len(app.events(unit)) == len(got)  # the event log is history: kept
    mon.host.systemctl("restart", unit)
    mon.cli("monitor")
    assert mon.counters(unit)["starts"] == 1  # counting goes on from zero
    mon.cli("counters", "--reset", "--all")  # as the contract spells it
    assert mon.counters(unit)["starts"] == 0


def test_counters_reset_of_an_unknown_unit_is_one_line_and_exit_2(mon: Mon) -> None:
    proc = subprocess.run(
        [RECONCILER, "counters", "--reset", "never-seen", "--state-dir", str(mon.state)],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "RECONCILER_CONFIG": str(mon.config)},
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "cannot reset counters of 'never-seen.service'" in proc.stderr


LOOPER = """\
[Unit]
StartLimitIntervalSec=0
[Service]
ExecStart=/bin/sh -c 'echo v={{ version }}; sleep 0.5; exit 3'
Restart=always
RestartSec=1
[Install]
WantedBy=multi-user.target
"""


def test_last_exit_is_the_last_runs_never_a_success(app: Setup) -> None:
    """A README-only trial: ``counters`` said ``(success)`` under LAST EXIT for a unit whose
    runs all exited 3, read while it was between runs. Looks at every phase of the loop."""
    mon, unit = app.mon, app.unit
    app.repo.commit({"templates/app.service.j2": LOOPER}, "a crash loop")
    app.sync()
    seen = []
    for sub in ("auto-restart", "running", "auto-restart", "running"):
        wait_for(lambda s=sub: bool(mon.show(unit, "SubState")["SubState"] == s), 15, sub)
        mon.cli("monitor")
        rows = {c["unit"]: c for c in json.loads(mon.cli("counters", "--json").stdout)}
        table = mon.cli("counters").stdout
        line = next(x for x in table.splitlines() if x.startswith(unit))
        seen.append((sub, rows[unit]["last_exit_code"], rows[unit]["last_result"], line))
    assert all("success" not in line for *_, line in seen), seen
    assert [code for _, code, _, _ in seen[1:]] == [3, 3, 3], seen
