"""Fixtures of the fault matrix (issue 7): the report, sync environments, a D-Bus tap.

Every fault test calls ``fault_report(fault, behaviour, converge_sec, nothing_lost)``, which
attaches the row to the test's report; tests/faultmatrix.py prints the matrix at the end.
The sync environments reuse ``Env`` of tests/integration/test_sync.py (the CLI as a whole
process, a real bare repo) with a config file of short timeouts, on the shared ``host`` or on
an ``own_host`` for faults that break a host (restarting dbus-daemon, re-executing systemd, a
full disk).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler.devtools import sandbox
from reconciler.systemd.wire import ERROR, METHOD_CALL, METHOD_RETURN, split_frames
from tests import faultmatrix
from tests.conftest import booted_host
from tests.integration.gitrepo import ConfigRepo
from tests.integration.test_sync import Env

FAST_MONITOR = """
[monitor]
restart_threshold = 3
restart_window_sec = 120
"""

# ---- the report (collected and printed by tests/faultmatrix.py) --------------------------

Report = Callable[[str, str, float | None, bool | None], None]


@pytest.fixture
def fault_report(request: pytest.FixtureRequest) -> Report:
    """Record one fault: what the reconciler did, seconds to converge, nothing lost."""
    area = request.node.module.__name__.rpartition(".")[2].removeprefix("test_")
    area = area.removesuffix("_faults")

    def report(
        fault: str, behaviour: str, converge_sec: float | None, nothing_lost: bool | None
    ) -> None:
        row = {
            "area": area,
            "fault": fault,
            "behaviour": behaviour,
            "converge_sec": None if converge_sec is None else round(converge_sec, 2),
            "nothing_lost": nothing_lost,
            "test": request.node.nodeid,
        }
        request.node.user_properties.append((faultmatrix.ROW, row))

    return report


# ---- sync environments --------------------------------------------------------------------


class FaultEnv(Env):
    """``Env`` with a config file (short timeouts) and the checks every fault test needs."""

    @property
    def config(self) -> Path:
        return self.state / "config.toml"

    def configure(self, top: str = "", sections: str = "", fetch_timeout: float = 30) -> None:
        """A fast monitor, the host's journal for bundles, a fetch bound a loaded CI machine
        keeps (3 s was shorter than one local fetch at a load of 60); plus ``top``-level
        settings and more ``sections``."""
        self.config.write_text(
            f"lock_timeout_sec = 30\nfetch_timeout_sec = {fetch_timeout:g}\n"
            + top
            + FAST_MONITOR
            + f'\n[diagnostics]\njournal_command = ["journalctl", "--root={self.host.root}"]\n'
            + sections
        )

    def env(self) -> dict[str, str]:
        return {**super().env(), "RECONCILER_CONFIG": str(self.config)}

    def run(self, *args: str, **flags: str | None) -> subprocess.CompletedProcess[str]:
        """The CLI, whatever its exit code; ``flags`` replace flags (``repo="..."``) or, when
        None, drop them (the value then comes from the config file)."""
        if not flags:
            return self.reconciler(*args, check=False)
        argv = self.argv(*args)
        for key, value in flags.items():
            at = argv.index("--" + key.replace("_", "-"))
            if value is None:
                del argv[at : at + 2]
            else:
                argv[at + 1] = value
        return subprocess.run(
            argv, capture_output=True, text=True, env=self.env(), timeout=120, check=False
        )

    def invocations(self, *units: str) -> dict[str, str]:
        return {u: self.show(u, "InvocationID")["InvocationID"] for u in units}

    def states(self, *units: str) -> dict[str, tuple[str, str]]:
        out = {}
        for u in units:
            p = self.show(u, "ActiveState", "UnitFileState")
            out[u] = (p.get("ActiveState", ""), p.get("UnitFileState", ""))
        return out

    def history(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = json.loads(
            self.reconciler("history", "--json", "-n", "1000").stdout
        )
        return data

    def converge(self, since: float, *, timeout: float = 60, extra: tuple[str, ...] = ()) -> float:
        """Sync until one succeeds (applied or noop); seconds from ``since`` (a monotonic time)."""
        deadline = time.monotonic() + timeout
        while True:
            proc = self.run("sync", "--json", *extra)
            if proc.returncode == 0 and json.loads(proc.stdout)["result"] in ("applied", "noop"):
                return time.monotonic() - since
            assert time.monotonic() < deadline, f"no successful sync: {proc.stderr}{proc.stdout}"
            time.sleep(0.2)

    def settled(self, units: list[str], timeout: float = 20) -> None:
        """Every unit active and enabled (or the test fails)."""
        deadline = time.monotonic() + timeout
        while self.states(*units) != {u: ("active", "enabled") for u in units}:
            assert time.monotonic() < deadline, self.states(*units)
            time.sleep(0.1)


def make_env(host: sandbox.Host, base: Path) -> FaultEnv:
    state = base / "state"
    state.mkdir(parents=True)
    env = FaultEnv(host, ConfigRepo(base / "git"), state, uuid.uuid4().hex[:6])
    env.configure()
    return env


def clean_units(env: Env) -> None:
    """Stop, disable and remove this env's units (named ``*-<tag>.*``)."""
    host = env.host
    owned = [p.name for p in host.unit_dir.glob(f"*-{env.tag}.*")]
    if owned:
        host.systemctl("stop", *owned, check=False)
        host.systemctl("disable", *owned, check=False)
        for name in owned:
            (host.unit_dir / name).unlink(missing_ok=True)
        host.systemctl("daemon-reload", check=False)
        host.systemctl("reset-failed", check=False)


@pytest.fixture
def fenv(host: sandbox.Host, tmp_path: Path) -> Iterator[FaultEnv]:
    """A fault environment on the shared disposable host."""
    env = make_env(host, tmp_path)
    try:
        yield env
    finally:
        clean_units(env)


@pytest.fixture
def own_host() -> Iterator[sandbox.Host]:
    """A disposable host of this test's own (~0.6 s to boot): for faults that break a host."""
    with booted_host() as h:
        yield h


@pytest.fixture
def own_env(own_host: sandbox.Host, tmp_path: Path) -> FaultEnv:
    return make_env(own_host, tmp_path)


# ---- a D-Bus tap: kill a sync at an exact call --------------------------------------------


@dataclass
class Trigger:
    member: str  # e.g. "Reload", "RestartUnit"
    when: str  # "call": before the call reaches systemd; "reply": before its reply is read


class DBusTap:
    """A unix socket relaying to a D-Bus socket that SIGKILLs ``victim`` at a trigger.

    It parses the messages after the authentication (``split_frames``), so the kill happens
    at a known point of the apply: e.g. on the ``Reload`` call, every unit file is written
    and systemd has not reloaded; on ``Reload``'s reply, systemd has. Nothing is forwarded
    after the kill.
    """

    def __init__(self, upstream: str, path: Path) -> None:
        self.upstream = upstream.removeprefix("unix:path=")
        self.path = path
        self.victim: int | None = None
        self.trigger: Trigger | None = None
        self.fired = threading.Event()
        self.calls: list[str] = []
        self._stop = threading.Event()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(16)
        self._server.settimeout(0.05)
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    @property
    def address(self) -> str:
        return f"unix:path={self.path}"

    def arm(self, member: str, when: str) -> None:
        """Kill ``self.victim`` (set it once the process runs) at ``member``'s call or reply."""
        self.trigger = Trigger(member, when)

    def close(self) -> None:
        self._stop.set()
        self._accepter.join(5)
        for t in self._threads:
            t.join(5)
        self._server.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            t = threading.Thread(target=self._relay, args=(client,), daemon=True)
            self._threads.append(t)
            t.start()

    def _fire(self) -> None:
        deadline = time.monotonic() + 5
        while self.victim is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.victim is not None and not self.fired.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.victim, signal.SIGKILL)
            self.fired.set()

    def _relay(self, client: socket.socket) -> None:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(self.upstream)
            self._pump(client, upstream)
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        began = False
        auth = bytearray()
        from_client, from_server = bytearray(), bytearray()
        calls: dict[int, str] = {}  # serial -> member of this connection's calls
        while not self._stop.is_set():
            ready, _, _ = select.select([client, upstream], [], [], 0.05)
            for sock in ready:
                data = sock.recv(1 << 16)
                if not data:
                    return
                if sock is client:
                    if not began:
                        auth += data
                        at = auth.find(b"BEGIN\r\n")
                        if at < 0:
                            upstream.sendall(data)
                            continue
                        began = True
                        cut = at + 7 - (len(auth) - len(data))  # the rest of data is binary
                        upstream.sendall(data[:cut])
                        from_client += data[cut:]
                    else:
                        from_client += data
                    for msg in split_frames(from_client):
                        if msg.type == METHOD_CALL:
                            self.calls.append(msg.member)
                            calls[msg.serial] = msg.member
                            if self._matches(msg.member, "call"):
                                self._fire()
                                return
                        upstream.sendall(msg.data)
                else:
                    if not began:
                        client.sendall(data)
                        continue
                    from_server += data
                    for msg in split_frames(from_server):
                        if msg.type in (METHOD_RETURN, ERROR):
                            member = calls.pop(msg.reply_serial, "")
                            if self._matches(member, "reply"):
                                self._fire()
                                return
                        client.sendall(msg.data)

    def _matches(self, member: str, when: str) -> bool:
        t = self.trigger
        return t is not None and t.member == member and t.when == when and not self.fired.is_set()


@pytest.fixture
def dbus_tap() -> Iterator[Callable[[str], DBusTap]]:
    """``dbus_tap(bus_address)``: a tap in front of that bus, closed after the test."""
    taps: list[DBusTap] = []

    def make(upstream: str) -> DBusTap:
        tap = DBusTap(upstream, Path(f"/tmp/tap-{uuid.uuid4().hex[:8]}.sock"))
        taps.append(tap)
        return tap

    yield make
    for tap in taps:
        tap.close()
        tap.path.unlink(missing_ok=True)
