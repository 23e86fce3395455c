"""The disposable host itself: booted, isolated, and able to run the project inside."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.devtools import sandbox
from tests.conftest import ENV_INSIDE, PYTHON_INSIDE, REPO, booted_host

pytestmark = pytest.mark.host


def test_host_is_running_systemd(host: sandbox.Host) -> None:
    state = host.systemctl("is-system-running", check=False).stdout.strip()
    assert state in ("running", "degraded")
    assert Path(f"/proc/{host.pid}/exe").resolve().name == "systemd"
    assert host.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"


def test_machine_servers_do_not_start_in_the_host(host: sandbox.Host) -> None:
    """The machine's own packages are the host's root: a server ci/test installs there
    (Prometheus, Alertmanager, node-exporter: enabled by Debian) must not start and fail in
    every host, where an operator's day asserts that nothing is failed."""
    out = host.systemctl("list-units", "--failed", "--plain", "--no-legend", check=False).stdout
    failed = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert not failed & set(sandbox.DEFAULT_MASK)  # other tests' units may fail on purpose
    for unit in ("prometheus.service", "prometheus-alertmanager.service"):
        state = host.systemctl("is-enabled", unit, check=False).stdout.strip()
        assert state in ("masked", ""), (unit, state)  # "" where the package is not installed


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


LISTENER = "[Socket]\nListenStream=9420\n"
LISTENER_SERVICE = "[Service]\nExecStart=/bin/true\n"


def _listening_inodes(tcp_tables: list[str], port: int) -> set[str]:
    """Inodes of the sockets listening on ``port`` in /proc/net/tcp{,6} tables (state 0A)."""
    found = set()
    for table in tcp_tables:
        for line in table.splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                found.add(fields[9])
    return found


def test_two_hosts_listen_on_9420_and_the_machine_stays_free(host: sandbox.Host) -> None:
    """Each host has a network of its own (loopback up): the same port in both, none here."""
    with booted_host(hostname="second") as second:
        inodes = {}
        for h in (host, second):
            (h.unit_dir / "port-9420.socket").write_text(LISTENER)
            (h.unit_dir / "port-9420.service").write_text(LISTENER_SERVICE)
        try:
            for h in (host, second):
                h.systemctl("daemon-reload")
                h.systemctl("start", "port-9420.socket")
                assert h.systemctl("is-active", "port-9420.socket").stdout.strip() == "active"
                # the machine's ip on the host's network: a test root (Debian 13) has none
                links = subprocess.run(
                    h.nsenter_net(["ip", "-o", "link"]), capture_output=True, text=True,
                    timeout=30, check=True,
                ).stdout.splitlines()  # fmt: skip
                assert [line.split(":")[1].strip() for line in links] == ["lo"]
                assert "state UNKNOWN" in links[0] or "state UP" in links[0]
                with h.network():  # reachable from here through the host's own loopback
                    socket.create_connection(("127.0.0.1", 9420), timeout=5).close()
                inodes[h.name] = _listening_inodes(
                    [Path(f"/proc/{h.pid}/net", t).read_text() for t in ("tcp", "tcp6")], 9420
                )
                assert inodes[h.name], h.name
            machine = _listening_inodes(
                [Path("/proc/self/net", t).read_text() for t in ("tcp", "tcp6")], 9420
            )
            assert not machine & (inodes[host.name] | inodes[second.name])
            assert inodes[host.name].isdisjoint(inodes[second.name])
        finally:
            host.systemctl("stop", "port-9420.socket", check=False)
            for name in ("port-9420.socket", "port-9420.service"):
                (host.unit_dir / name).unlink(missing_ok=True)
            host.systemctl("daemon-reload", check=False)


def test_ci_sandbox_host_prints_how_to_enter_the_host_and_its_network(host: sandbox.Host) -> None:
    del host  # boots its own; this fixture only proves hosts can boot here
    proc = subprocess.run(
        [str(REPO / "ci" / "sandbox-host"), "--check"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["enter"].startswith("nsenter -t ") and " -n " in info["enter"]
    assert info["enter_network"].startswith(f"nsenter --net=/proc/{info['pid']}/ns/net ")


@pytest.mark.parametrize(
    "bind", ["nocolon", "/srv:relative", "/srv:/tmp/x", "/no/such/path:/srv/x"]
)
def test_ci_sandbox_host_refuses_a_bad_bind_in_one_line(tmp_path: Path, bind: str) -> None:
    """A user's trial: a traceback, and an empty /tmp/reconciler-host-XXXX left behind."""
    proc = subprocess.run(
        [str(REPO / "ci" / "sandbox-host"), "--bind", bind, "--check"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    assert proc.returncode != 0 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("sandbox-host: cannot bind ") and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_ci_sandbox_host_help_and_interpreter_without_a_venv(tmp_path: Path) -> None:
    """``--help`` describes every option; without .venv the script uses the interpreter of the
    ``reconciler`` on PATH (it used to hard-code .venv/bin/python)."""
    (tmp_path / "ci").mkdir()
    shutil.copy(REPO / "ci" / "sandbox-host", tmp_path / "ci" / "sandbox-host")
    path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    proc = subprocess.run(
        [str(tmp_path / "ci" / "sandbox-host"), "--help"],
        capture_output=True, text=True, timeout=60, check=False, env={**env, "PATH": path},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "read-only at DST inside the host" in text and "let UNIT run" in text
    assert "until SIGTERM or Ctrl-C" in text
    nothing = subprocess.run(
        [str(tmp_path / "ci" / "sandbox-host"), "--help"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**env, "PATH": "/usr/bin:/bin", "PYTHON": "/bin/false"},
    )  # fmt: skip
    assert nothing.returncode == 1 and "cannot import reconciler" in nothing.stderr


def test_boot_raises_the_inotify_instance_limit_for_many_hosts() -> None:
    """Debian's default of 128 inotify instances for root let ~40 hosts boot; the next one's
    systemd exited 255 with no output (a 50-host fleet). ``boot`` raises it, never lowers."""
    before = int(sandbox.INOTIFY_INSTANCES.read_text())
    try:
        sandbox.INOTIFY_INSTANCES.write_text("128\n")
        with booted_host() as host:
            assert host.systemctl("is-system-running", check=False).stdout.strip() in (
                "running",
                "degraded",
            )
        assert int(sandbox.INOTIFY_INSTANCES.read_text()) == sandbox.MIN_INOTIFY_INSTANCES
        sandbox.INOTIFY_INSTANCES.write_text("65536\n")
        sandbox._raise_inotify_limit()
        assert int(sandbox.INOTIFY_INSTANCES.read_text()) == 65536
    finally:
        sandbox.INOTIFY_INSTANCES.write_text(f"{max(before, sandbox.MIN_INOTIFY_INSTANCES)}\n")
