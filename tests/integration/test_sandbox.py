"""The disposable host itself: booted, isolated, and able to run the project inside."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.devtools import sandbox
from tests.conftest import ENV_INSIDE, PYTHON_INSIDE

pytestmark = pytest.mark.host


def test_host_is_running_systemd(host: sandbox.Host) -> None:
    state = host.systemctl("is-system-running", check=False).stdout.strip()
    assert state in ("running", "degraded")
    assert Path(f"/proc/{host.pid}/exe").resolve().name == "systemd"
    assert host.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"


def test_host_has_its_own_tmp_and_cgroup(host: sandbox.Host, tmp_path: Path) -> None:
    marker = tmp_path / "outside-marker"
    marker.write_text("x")
    assert host.run(["test", "-e", str(marker)], check=False).returncode != 0
    assert marker.exists()  # the host's boot-time cleanup never reaches the real /tmp
    cgroup = Path(f"/proc/{host.pid}/cgroup").read_text()
    assert f"/{host.name}/" in cgroup


def test_masked_units_stay_masked(host: sandbox.Host) -> None:
    out = host.systemctl("is-enabled", "postgresql.service", check=False).stdout.strip()
    assert out == "masked"


def test_project_runs_inside(host: sandbox.Host) -> None:
    env = [f"{k}={v}" for k, v in ENV_INSIDE.items()]
    out = host.run(["env", *env, PYTHON_INSIDE, "-m", "reconciler", "--version"]).stdout
    assert out.startswith("reconciler ")
