"""sd_notify against a real AF_UNIX datagram socket (path and abstract), as systemd listens."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.host import sd_notify


class Manager:
    """A stand-in for systemd's notify socket: collects the datagrams sent to it."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(5)

    def receive(self) -> list[str]:
        return self.sock.recv(4096).decode().split("\n")

    def pending(self) -> list[list[str]]:
        messages = []
        self.sock.setblocking(False)
        try:
            while True:
                messages.append(self.receive())
        except BlockingIOError:
            return messages
        finally:
            self.sock.settimeout(5)


@pytest.fixture(params=["path", "abstract"])
def manager(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Manager]:
    if request.param == "path":
        address = str(tmp_path / "notify")
        env = address
    else:
        name = f"reconciler-test-{uuid.uuid4().hex}"
        address, env = "\0" + name, "@" + name
    manager = Manager(address)
    monkeypatch.setenv("NOTIFY_SOCKET", env)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield manager
    manager.sock.close()


def test_ready_status_stopping(manager: Manager) -> None:
    assert sd_notify.ready()
    assert manager.receive() == ["READY=1"]
    assert sd_notify.ready("serving 3 units")
    assert manager.receive() == ["READY=1", "STATUS=serving 3 units"]
    assert sd_notify.status("line one\nline two")
    assert manager.receive() == ["STATUS=line one line two"]
    assert sd_notify.watchdog()
    assert manager.receive() == ["WATCHDOG=1"]
    assert sd_notify.stopping()
    assert manager.receive() == ["STOPPING=1"]
    assert sd_notify.notify("RELOADING=1", "MONOTONIC_USEC=5")
    assert manager.receive() == ["RELOADING=1", "MONOTONIC_USEC=5"]


@pytest.mark.parametrize("bad", ["READY", "STATUS=a\nWATCHDOG=1"])
def test_refuses_malformed_assignments(manager: Manager, bad: str) -> None:
    with pytest.raises(ValueError, match="KEY=value"):
        sd_notify.notify(bad)
    assert manager.pending() == []


@pytest.mark.parametrize("value", [None, "", "vsock:2:999"])
def test_noop_outside_systemd(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert not sd_notify.ready("x")
    assert not sd_notify.watchdog()


def test_nobody_listening_is_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert not sd_notify.stopping()


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("", None, None),
        ("junk", None, None),
        ("0", None, None),
        ("2000000", None, 1.0),
        ("30000000", "self", 15.0),
        ("2000000", "1", None),  # meant for another process
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    for key, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, str(os.getpid()) if value == "self" else value)
    assert sd_notify.watchdog_interval() == expected


def test_watchdog_thread_pings_until_stopped(
    manager: Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # ping every 50 ms
    with sd_notify.Watchdog() as dog:
        assert dog.interval == 0.05
        assert dog.running
        time.sleep(0.3)
    assert not dog.running
    pings = manager.pending()
    assert 3 <= len(pings) <= 8
    assert set(map(tuple, pings)) == {("WATCHDOG=1",)}
    assert dog.pings == len(pings)
    time.sleep(0.1)
    assert manager.pending() == []  # stopped means stopped


def test_watchdog_skips_pings_when_not_alive(manager: Manager) -> None:
    healthy = [True]
    with sd_notify.Watchdog(0.02, alive=lambda: healthy[0]):
        time.sleep(0.1)
        healthy[0] = False
        time.sleep(0.02)
        manager.pending()
        time.sleep(0.1)
        assert manager.pending() == []


def test_watchdog_without_watchdog_configured_does_nothing(manager: Manager) -> None:
    with sd_notify.Watchdog() as dog:
        assert dog.interval is None
        assert not dog.running
    assert manager.pending() == []
