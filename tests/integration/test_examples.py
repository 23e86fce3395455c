"""The example inventory/ and templates/ start for real on the disposable systemd host."""

from __future__ import annotations

import dataclasses
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.core import inventory, render
from reconciler.devtools import sandbox
from reconciler.model import DesiredUnit

pytestmark = pytest.mark.host

REPO = Path(__file__).resolve().parents[2]


def example_files() -> dict[str, bytes]:
    paths = [*REPO.glob("inventory/*.toml"), *REPO.glob("templates/*")]
    return {str(p.relative_to(REPO)): p.read_bytes() for p in paths}


@dataclasses.dataclass
class Examples:
    units: dict[str, DesiredUnit]  # example unit name -> its uniquely named copy
    port: int  # the web service's port (the echo socket's: one more)
    tag: str


@pytest.fixture
def examples(host: sandbox.Host) -> Iterator[Examples]:
    """The sandbox host's example units, renamed ``NAME-<tag>``, web on a port of its own."""
    tag = uuid.uuid4().hex[:6]
    port = 20000 + int(tag, 16) % 20000
    files = example_files()
    instances = [
        dataclasses.replace(
            inst,
            name=f"{inst.name}-{tag}",
            vars={
                **inst.vars,
                "port": port,
                "etl_url": f"http://127.0.0.1:{port}/",
                "listen": f"127.0.0.1:{port + 1}",
                "server": f"echo-server-{tag}",
                "socket": f"echo-{tag}",
                "importer": f"inbox-import-{tag}",
                "inbox_dir": f"/srv/inbox-{tag}",
            },
        )
        for inst in inventory.load(files).select("sandbox")
    ]
    units = render.render(instances, render.decode_templates(files))
    for unit in units:
        (host.unit_dir / unit.name).write_text(unit.content)
    host.systemctl("daemon-reload")
    yield Examples({u.name.replace(f"-{tag}", ""): u for u in units}, port, tag)
    names = [u.name for u in units]
    host.systemctl("stop", *names, check=False)
    for name in names:
        (host.unit_dir / name).unlink(missing_ok=True)
    host.systemctl("daemon-reload", check=False)
    host.systemctl("reset-failed", *names, check=False)


def _show(host: sandbox.Host, unit: str, *props: str) -> dict[str, str]:
    out = host.systemctl("show", unit, *(f"--property={p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _wait_active(host: sandbox.Host, unit: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _show(host, unit, "ActiveState")["ActiveState"]
        if state == "active":
            return
        assert state in ("activating", "inactive"), (
            state,
            host.systemctl("status", unit, check=False).stdout,
        )
        time.sleep(0.1)
    raise AssertionError(f"{unit} not active after {timeout}s")


def _start_web(host: sandbox.Host, examples: Examples) -> None:
    web = examples.units["web.service"].name
    host.systemctl("start", web)
    _wait_active(host, web)
    url = f"http://127.0.0.1:{examples.port}/"
    code = (
        "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).status)"
    )
    for _ in range(50):  # the socket is bound a moment after the process started
        proc = host.run(["python3", "-c", code, url], check=False)
        if proc.returncode == 0:
            break
        time.sleep(0.1)
    assert proc.stdout.strip() == "200", proc.stderr


def test_web_starts_and_serves(host: sandbox.Host, examples: Examples) -> None:
    _start_web(host, examples)
    props = _show(host, examples.units["web.service"].name, "NRestarts", "SubState")
    assert props == {"NRestarts": "0", "SubState": "running"}


@pytest.mark.parametrize("service", ["system-metrics", "srv-backup", "readings-etl"])
def test_oneshots_succeed(host: sandbox.Host, examples: Examples, service: str) -> None:
    if service == "readings-etl":  # the ETL trigger calls the example web service
        _start_web(host, examples)
    unit = examples.units[f"{service}.service"].name
    proc = host.systemctl("start", unit, check=False)  # a oneshot: returns when it finished
    status = _show(host, unit, "Result", "ExecMainStatus")
    assert proc.returncode == 0 and status["Result"] == "success", (
        status,
        host.run(["journalctl", "--no-pager", "-u", unit], check=False).stdout[-3000:],
    )
    if service == "srv-backup":
        archives = list((host.root / "var/lib" / unit.removesuffix(".service")).glob("*.tar.gz"))
        assert len(archives) == 1, archives


def test_timers_are_scheduled(host: sandbox.Host, examples: Examples) -> None:
    timers = [u.name for key, u in examples.units.items() if key.endswith(".timer")]
    assert len(timers) == 3
    host.systemctl("start", *timers)
    for timer in timers:
        props = _show(host, timer, "ActiveState", "NextElapseUSecRealtime")
        assert props["ActiveState"] == "active", props
        assert props["NextElapseUSecRealtime"], props


def test_the_echo_socket_starts_its_server(host: sandbox.Host, examples: Examples) -> None:
    sock, server = examples.units["echo.socket"].name, examples.units["echo-server.service"].name
    host.systemctl("start", sock)
    assert _show(host, server, "ActiveState")["ActiveState"] == "inactive"
    with host.network(), socket.create_connection(("127.0.0.1", examples.port + 1), 5) as conn:
        conn.sendall(b"ping\n")
        assert conn.recv(16) == b"ping\n"
    assert _show(host, server, "ActiveState")["ActiveState"] == "active"


def test_the_inbox_path_runs_its_importer(host: sandbox.Host, examples: Examples) -> None:
    path, importer = examples.units["inbox.path"].name, examples.units["inbox-import.service"].name
    host.systemctl("start", path)
    inbox = host.root / f"srv/inbox-{examples.tag}"
    (inbox / "reading.csv").write_text("1,2\n")
    state = host.root / "var/lib" / importer.removesuffix(".service") / "reading.csv"
    deadline = time.monotonic() + 10
    while not state.exists():
        assert time.monotonic() < deadline, host.run(["journalctl", "-u", importer]).stdout
        time.sleep(0.1)
    assert not list(inbox.iterdir())
    assert _show(host, path, "SubState")["SubState"] == "waiting"
