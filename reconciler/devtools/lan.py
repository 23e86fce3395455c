"""A private LAN for disposable hosts (talks to unshare, ip and nsenter).

A network namespace held by a process of its own (``unshare --net sleep``), a bridge in it,
and one veth pair per host from the bridge into the host's own network namespace
(``Host.netns``), with a private address: hosts reach each other and the LAN's servers (a
git server, Prometheus) without the machine's own network namespace ever being touched.
Stopping the holder removes the bridge and every pair with it. For a fleet of hosts in the
tests and ``bench/bench_fleet.py``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from reconciler.devtools import sandbox
from reconciler.errors import SandboxError

PREFIX = "10.77"  # the LAN is 10.77.0.0/16
GATEWAY = f"{PREFIX}.0.1"  # the bridge's address: the LAN's servers listen here
BRIDGE = "br0"


def address(index: int) -> str:
    """The ``index``-th host's address (0-based): 10.77.1.1, 10.77.1.2, ..."""
    return f"{PREFIX}.{1 + index // 250}.{1 + index % 250}"


class Lan:
    """The LAN's namespace, seen from outside (``run``, ``network``)."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.attached = 0

    @property
    def netns(self) -> Path:
        return Path(f"/proc/{self.process.pid}/ns/net")

    def nsenter(self, argv: Sequence[str]) -> list[str]:
        """The argv that runs ``argv`` on the LAN (the machine's files, the LAN's network)."""
        return ["nsenter", f"--net={self.netns}", *argv]

    def run(self, argv: Sequence[str], input: str | None = None) -> str:
        proc = subprocess.run(
            self.nsenter(argv), input=input, capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise SandboxError(f"cannot run {' '.join(argv)!r} on the LAN: {proc.stderr.strip()}")
        return proc.stdout

    @contextlib.contextmanager
    def network(self) -> Iterator[None]:
        """Run the block (this thread) on the LAN: e.g. a server's socket bound there."""
        with sandbox.network_of(self.netns):
            yield

    def attach(self, hosts: Sequence[sandbox.Host]) -> list[str]:
        """One veth pair per host (``eth0`` inside, up, with the next free address); their
        addresses in order."""
        first = self.attached
        batch = []
        for i, host in enumerate(hosts, start=first):
            batch += [
                f"link add vh{i} type veth peer name eth0 netns {host.pid}",
                f"link set vh{i} master {BRIDGE}",
                f"link set vh{i} up",
            ]
        self.run(["ip", "-batch", "-"], input="\n".join(batch) + "\n")
        found = []
        for i, host in enumerate(hosts, start=first):
            found.append(address(i))
            inside = f"addr add {address(i)}/16 dev eth0\nlink set eth0 up\n"
            proc = subprocess.run(
                host.nsenter_net(["ip", "-batch", "-"]),
                input=inside,
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise SandboxError(f"cannot address host '{host.name}': {proc.stderr.strip()}")
        self.attached = first + len(hosts)
        return found

    def stop(self) -> None:
        """End the holder: its namespace, bridge and every veth pair go with it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)


@contextlib.contextmanager
def lan() -> Iterator[Lan]:
    """A LAN with its bridge up at ``GATEWAY``; removed at the end."""
    sandbox.check_supported()
    process = subprocess.Popen(
        ["unshare", "--net", "--", "sleep", "infinity"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=sandbox._set_pdeathsig,  # never outlives the process that made it
    )
    net = Lan(process)
    try:
        _wait_for_own_namespace(process.pid)
        net.run(
            ["ip", "-batch", "-"],
            input=(
                "link set lo up\n"
                f"link add {BRIDGE} type bridge\n"
                f"addr add {GATEWAY}/16 dev {BRIDGE}\n"
                f"link set {BRIDGE} up\n"
            ),
        )
        yield net
    finally:
        net.stop()


def _wait_for_own_namespace(pid: int) -> None:
    """unshare has made its namespace once the holder's differs from ours (before its exec,
    ``nsenter`` would configure the machine's own network)."""
    own = os.readlink("/proc/self/ns/net")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/ns/net") != own:
                return
        time.sleep(0.01)
    raise SandboxError("cannot make the LAN: no network namespace of its own within 10 s")
