"""A disposable systemd host in Linux namespaces (talks to unshare, mount, cgroupfs, nsenter).

The host boots the machine's own ``/lib/systemd/systemd --system`` as PID 1 of new
PID/mount/UTS/IPC/network namespaces, on an overlayfs over ``/`` whose upper layer is a
tmpfs: nothing it writes reaches the real machine, and everything vanishes when it stops.
It gets a cgroup subtree of its own (``name=systemd`` and ``unified``), so two hosts
never share ``/system.slice``, and a network of its own (loopback only), so its units
never bind the machine's ports and two hosts both listen on ``*:9420``. Reach it with
``Host.network()`` (a socket from this process) or ``Host.nsenter_net()`` (a process that
keeps the machine's files, e.g. a git daemon serving a repository to a sync inside).
Tests and ``reconciler demo`` use it.

Safety: systemd's boot-time cleanup empties ``/tmp``. The boot script refuses to exec
systemd unless the overlay is mounted and ``/tmp`` and ``/run`` are fresh tmpfs mounts.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.devtools import teardown
from reconciler.devtools.teardown import CGROUP_HIERARCHIES, CGROUP_ROOT, NAME_PREFIX, cleanup_stale
from reconciler.devtools.teardown import stop_kept as stop_kept
from reconciler.errors import SandboxError

# Units that would touch the real machine, or are noise in a throwaway host.
DEFAULT_MASK: tuple[str, ...] = (
    "postgresql.service",
    "getty@.service",
    "serial-getty@.service",
    "console-getty.service",
    "container-getty@.service",
    "getty.target",
    "systemd-sysctl.service",
    "systemd-modules-load.service",
    "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount",
    "proc-sys-fs-binfmt_misc.mount",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "man-db.timer",
    "fstrim.timer",
    "e2scrub_all.timer",
    "systemd-timesyncd.service",
    "systemd-networkd.service",
    "systemd-resolved.service",
    "networking.service",
    "ssh.service",
    "cron.service",
    "docker.service",
    "docker.socket",
    "containerd.service",
    # servers the test suite installs on the machine (ci/test): the machine's own
    # packages are the host's root, so Debian's enabled units would start in every host
    "prometheus.service",
    "prometheus-alertmanager.service",
    "prometheus-node-exporter.service",
    "dpkg-db-backup.timer",
)

PR_SET_PDEATHSIG = 1

_BOOT_SCRIPT = r"""
set -eu
D=$1; NAME=$2; HOSTNAME_=$3; LOWER=$4; shift 4
mount -t tmpfs -o mode=0755 reconciler-host "$D"
mkdir "$D/upper" "$D/work" "$D/root"
mount -t overlay overlay -o "lowerdir=$LOWER,upperdir=$D/upper,workdir=$D/work" "$D/root"
R="$D/root"
mountpoint -q "$R" || { echo "overlay not mounted on $R" >&2; exit 97; }
mount -t proc proc "$R/proc"
mount --rbind /sys "$R/sys"
mount --rbind /dev "$R/dev"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
mount -t tmpfs -o mode=0755 tmpfs "$R/run"
[ "$(stat -f -c %T "$R/tmp")" = tmpfs ] || { echo "/tmp is not a tmpfs" >&2; exit 97; }
[ "$(stat -f -c %T "$R/run")" = tmpfs ] || { echo "/run is not a tmpfs" >&2; exit 97; }
for h in HIERARCHIES; do
  mkdir -p "/sys/fs/cgroup/$h/$NAME"
  echo $$ > "/sys/fs/cgroup/$h/$NAME/cgroup.procs"
done
while [ $# -gt 0 ]; do
  case "$1" in
    mask) ln -sfn /dev/null "$R/etc/systemd/system/$2" ;;
    unmask) rm -f "$R/etc/systemd/system/$2" ;;
    bind) mkdir -p "$R$3"; mount --bind -o ro "$2" "$R$3"; shift ;;
  esac
  shift 2
done
ip link set lo up
echo "$HOSTNAME_" > "$R/etc/hostname"
hostname "$HOSTNAME_"
export container=reconciler
exec chroot "$R" /lib/systemd/systemd --system --unit=multi-user.target
"""


INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
MIN_INOTIFY_INSTANCES = 8192


def _raise_inotify_limit() -> None:
    """Raise root's inotify instance limit (128 by default) for many hosts side by side.

    Each host's systemd, journald and dbus-daemon hold about three instances, all counted
    against the one root user: past ~40 hosts on a machine a new host's systemd exited 255
    at once (measured: a 50-host fleet beside the test suite). Only ever raised."""
    try:
        if int(INOTIFY_INSTANCES.read_text()) < MIN_INOTIFY_INSTANCES:
            INOTIFY_INSTANCES.write_text(f"{MIN_INOTIFY_INSTANCES}\n")
    except (OSError, ValueError):
        pass  # not fatal: only many hosts at once need it


def _set_pdeathsig() -> None:
    """In the forked unshare: die with the process that booted the host."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass
class Host:
    """A running disposable systemd host, seen from outside."""

    pid: int  # systemd (PID 1 inside), as seen from outside
    name: str
    workdir: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    binds: Mapping[str, str] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        """The host's ``/`` as seen from outside: write unit files under it."""
        return Path(f"/proc/{self.pid}/root")

    @property
    def bus_address(self) -> str:
        return f"unix:path={self.root}/run/dbus/system_bus_socket"

    @property
    def private_bus_address(self) -> str:
        """systemd's own peer-to-peer socket (no dbus-daemon hop)."""
        return f"unix:path={self.root}/run/systemd/private"

    @property
    def journal_socket(self) -> Path:
        return self.root / "run/systemd/journal/socket"

    @property
    def unit_dir(self) -> Path:
        return self.root / "etc/systemd/system"

    @property
    def netns(self) -> Path:
        """The host's network namespace (loopback only)."""
        return Path(f"/proc/{self.pid}/ns/net")

    def nsenter(self, argv: Sequence[str]) -> list[str]:
        """The argv that runs ``argv`` inside the host (its namespaces, root and cwd)."""
        return ["nsenter", "-t", str(self.pid), "-m", "-p", "-u", "-i", "-n", "-r", "-w", *argv]

    def nsenter_net(self, argv: Sequence[str]) -> list[str]:
        """The argv that runs ``argv`` on the host's network but the machine's files."""
        return ["nsenter", f"--net={self.netns}", *argv]

    @contextlib.contextmanager
    def network(self) -> Iterator[None]:
        """Run the block on the host's network: sockets made in it stay there afterwards.

        Switches only the calling thread (``setns``), and back on exit.
        """
        with network_of(self.netns):
            yield

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the host and capture its output."""
        full_env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "SYSTEMD_PAGER": "",
            "SYSTEMD_COLORS": "0",
        }
        full_env.update(env or {})
        proc = subprocess.run(
            self.nsenter(["env", "-i", *(f"{k}={v}" for k, v in full_env.items()), *argv]),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            input=input,
        )
        if check and proc.returncode != 0:
            raise SandboxError(
                f"cannot run {shlex.join(argv)!r} in host '{self.name}': exit {proc.returncode}: "
                f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
            )
        return proc

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", "--no-pager", *args], check=check)

    def journal(self, *match: str, since_cursor: str | None = None) -> list[dict[str, Any]]:
        """Journal entries inside the host as dicts (``journalctl -o json``), e.g. ``UNIT=x``."""
        argv = ["journalctl", "--no-pager", "-o", "json", "--all"]
        if since_cursor:
            argv += ["--after-cursor", since_cursor]
        proc = self.run([*argv, *match], check=False)
        return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]

    def journal_sync(self) -> None:
        """Make every entry sent so far readable (``journalctl --sync``)."""
        self.run(["journalctl", "--sync"], check=False)

    def keep(self, remove: Sequence[Path] = ()) -> None:
        """Record what ``stop_kept(name)`` needs to stop this host from another process and
        remove it with ``remove`` (boot it with ``kept=True`` so that it outlives us)."""
        record = {
            "pid": self.pid,
            "starttime": teardown.starttime(self.pid),
            "remove": [str(p) for p in remove],
        }
        (self.workdir / teardown.RECORD).write_text(json.dumps(record))

    def stop(self, timeout: float = 20.0) -> None:
        """Power the host off, then remove its cgroups and work dir. Safe to call twice."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGRTMIN + 4)  # systemd: orderly poweroff
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)  # kills the whole PID namespace
                self.process.wait(timeout=10)
        if self.process.stderr:
            self.process.stderr.close()
        teardown.remove_cgroups(self.name)
        shutil.rmtree(self.workdir, ignore_errors=True)


CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def network_of(netns: Path) -> Iterator[None]:
    """Run the block on the network namespace ``netns`` (this thread only), e.g. a fleet's
    LAN held by a process of its own: sockets made in it stay there afterwards."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    try:
        target = os.open(netns, os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise SandboxError(f"cannot enter network '{netns}': {os.strerror(err)}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:  # pragma: no cover - would strand the thread
                raise SandboxError(
                    f"cannot leave network '{netns}': {os.strerror(ctypes.get_errno())}"
                )
    finally:
        os.close(own)


def check_supported() -> None:
    """Raise SandboxError with what is missing, in one line, if a host cannot boot here."""
    if os.geteuid() != 0:
        raise SandboxError(
            "cannot boot a disposable systemd host: needs root",
            "run as root (sudo), on Linux with namespaces and overlayfs",
        )
    for tool in ("unshare", "nsenter", "chroot", "mount", "ip"):
        if not shutil.which(tool):
            raise SandboxError(
                f"cannot boot a disposable systemd host: '{tool}' not found",
                "install util-linux, coreutils and iproute2",
            )
    if not Path("/lib/systemd/systemd").exists():
        raise SandboxError(
            "cannot boot a disposable systemd host: /lib/systemd/systemd missing",
            "install the systemd package",
        )
    if not Path("/usr/bin/dbus-daemon").exists():
        raise SandboxError(
            "cannot boot a disposable systemd host: dbus-daemon missing", "install the dbus package"
        )
    for hierarchy in CGROUP_HIERARCHIES:
        if not (CGROUP_ROOT / hierarchy / "cgroup.procs").exists():
            raise SandboxError(
                f"cannot boot a disposable systemd host: no cgroup hierarchy "
                f"{CGROUP_ROOT / hierarchy}",
                "needs the name=systemd and unified cgroup mounts",
            )


def check_bind(src: str, dst: str) -> tuple[str, str]:
    """The resolved source and the target of one bind, or a SandboxError naming both."""
    if not dst.startswith("/") or dst.startswith(("/tmp", "/run")):
        raise SandboxError(
            f"cannot bind '{src}' at '{dst}': needs an absolute path outside /tmp and /run"
        )
    source = Path(src).resolve()
    if not source.exists():
        raise SandboxError(f"cannot bind '{src}' at '{dst}': no such file or directory")
    return str(source), dst


def parse_bind(text: str) -> tuple[str, str]:
    """``SRC:DST`` from the command line, or a SandboxError naming it."""
    src, colon, dst = text.partition(":")
    if not (src and colon and dst):
        raise SandboxError(f"cannot bind '{text}': expected SRC:DST (e.g. /srv/data:/srv/data)")
    return check_bind(src, dst)


def boot(
    *,
    binds: Mapping[str, str] | None = None,
    mask: Sequence[str] = DEFAULT_MASK,
    unmask: Sequence[str] = (),
    hostname: str = "sandbox",
    timeout: float = 60.0,
    kept: bool = False,
    root: Path | None = None,
) -> Host:
    """Boot a host and wait until systemd reports running (or degraded).

    ``root``: the lower layer of its overlay (default the machine's ``/``), e.g. a Debian 13
    root from ``rootfs.ensure()`` to boot systemd 257 and Podman 5.

    ``binds`` maps outside paths to paths inside the host (mounted read-only), e.g. a
    checkout under /tmp, which the host's own /tmp would hide. A ``kept`` host outlives
    this process (no parent-death signal, a session of its own) until ``stop_kept``.
    """
    check_supported()
    return _come_up(_start(binds or {}, mask, unmask, hostname, kept, root), timeout)


def boot_many(
    hostnames: Sequence[str],
    *,
    binds: Mapping[str, str] | None = None,
    mask: Sequence[str] = DEFAULT_MASK,
    timeout: float = 120.0,
    root: Path | None = None,
) -> list[Host]:
    """Boot one host per name side by side (a fleet): all or none.

    Every host is started from the calling thread, then waited for together: a host gets
    SIGKILL when the *thread* that started it ends (``PR_SET_PDEATHSIG``), so booting each
    from a worker thread would kill it as soon as its worker finished."""
    from concurrent.futures import ThreadPoolExecutor

    check_supported()
    started = []
    try:
        for name in hostnames:
            started.append(_start(binds or {}, mask, (), name, False, root))
    except BaseException:
        for booting in started:
            _abandon(booting)
        raise
    hosts: list[Host] = []
    error: BaseException | None = None
    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(_come_up, b, timeout) for b in started]:
            try:
                hosts.append(future.result())
            except BaseException as exc:  # noqa: BLE001 - the first one is raised below
                error = error or exc
    if error is not None:
        stop_many(hosts)
        raise error
    return hosts


def stop_many(hosts: Sequence[Host]) -> None:
    """Power hosts off side by side (one at a time, 50 hosts took ~50 s)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda h: h.stop(), hosts))


@dataclass
class _Booting:
    process: subprocess.Popen[bytes]
    workdir: Path
    name: str
    binds: Mapping[str, str]


def _start(
    binds: Mapping[str, str],
    mask: Sequence[str],
    unmask: Sequence[str],
    hostname: str,
    kept: bool,
    root: Path | None,
) -> _Booting:
    if root is not None and not (root / "lib/systemd/systemd").exists():
        raise SandboxError(f"cannot boot a disposable systemd host: no {root}/lib/systemd/systemd")
    args: list[str] = []
    for unit in mask:
        if unit not in unmask:
            args += ["mask", unit]
    for unit in unmask:
        args += ["unmask", unit]
    for src, dst in binds.items():  # checked before anything is created
        args += ["bind", *check_bind(src, dst)]
    cleanup_stale()
    _raise_inotify_limit()
    workdir = Path(tempfile.mkdtemp(prefix=NAME_PREFIX))
    name = workdir.name
    script = _BOOT_SCRIPT.replace("HIERARCHIES", " ".join(CGROUP_HIERARCHIES))
    process = subprocess.Popen(
        [
            "unshare",
            "--pid",
            "--fork",
            "--kill-child=SIGKILL",
            "--mount",
            "--uts",
            "--ipc",
            "--net",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            script,
            "boot",
            str(workdir),
            name,
            hostname,
            str(root or "/"),
            *args,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL if kept else subprocess.PIPE,  # no pipe to a dead reader
        preexec_fn=None if kept else _set_pdeathsig,
        start_new_session=kept,  # a kept host ignores the terminal's Ctrl-C
    )
    return _Booting(process, workdir, name, dict(binds))


def _abandon(booting: _Booting) -> None:
    booting.process.kill()
    booting.process.wait()
    if booting.process.stderr:
        booting.process.stderr.close()
    teardown.remove_cgroups(booting.name)
    shutil.rmtree(booting.workdir, ignore_errors=True)


def _come_up(booting: _Booting, timeout: float) -> Host:
    host: Host | None = None
    try:
        pid = _wait_for_child(booting.process, timeout)
        host = Host(
            pid=pid,
            name=booting.name,
            workdir=booting.workdir,
            process=booting.process,
            binds=booting.binds,
        )
        _wait_until_up(host, timeout)
        return host
    except BaseException:
        if host is not None:
            host.stop()
        else:
            _abandon(booting)
        raise


def _wait_for_child(process: subprocess.Popen[bytes], timeout: float) -> int:
    """The PID of unshare's child once it runs systemd."""
    deadline = time.monotonic() + timeout
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().decode(errors="replace").strip() if process.stderr else ""
            raise SandboxError(
                f"cannot boot a disposable systemd host: boot script exited "
                f"{process.returncode}: {err[-1000:] or 'no output'}"
            )
        try:
            kids = children.read_text().split()
        except OSError:
            kids = []
        if kids:
            pid = int(kids[0])
            try:
                if os.readlink(f"/proc/{pid}/exe").endswith("/systemd"):
                    return pid
            except OSError:
                pass
        time.sleep(0.02)
    raise SandboxError(
        f"cannot boot a disposable systemd host: systemd not started within {timeout:.0f}s"
    )


def _wait_until_up(host: Host, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    socket_path = host.root / "run/dbus/system_bus_socket"
    while not socket_path.exists():
        if host.process.poll() is not None or time.monotonic() > deadline:
            raise SandboxError(
                "cannot boot a disposable systemd host: the system bus never came up",
                "see the host's journal; try --keep with the demo",
            )
        time.sleep(0.05)
    remaining = max(1.0, deadline - time.monotonic())
    proc = host.run(
        ["timeout", f"{remaining:.0f}", "systemctl", "is-system-running", "--wait"],
        check=False,
        timeout=remaining + 5,
    )
    state = proc.stdout.strip()
    if state not in ("running", "degraded"):
        raise SandboxError(
            f"cannot boot a disposable systemd host: system state "
            f"'{state or proc.stderr.strip()}' after {timeout:.0f}s"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m reconciler.devtools.sandbox``: boot a host and keep it until Ctrl-C (for ci/)."""
    parser = argparse.ArgumentParser(
        prog="python -m reconciler.devtools.sandbox",
        description=(
            "boot a disposable systemd host; print one JSON line (pid, name, bus, root, "
            "boot_sec, enter, enter_network) and keep it until SIGTERM or Ctrl-C"
        ),
    )
    parser.add_argument(
        "--bind",
        action="append",
        default=[],
        metavar="SRC:DST",
        help="mount SRC (a path on this machine) read-only at DST inside the host "
        "(absolute, outside /tmp and /run, which the host has of its own); repeat",
    )
    parser.add_argument(
        "--unmask",
        action="append",
        default=[],
        metavar="UNIT",
        help="let UNIT run (the host masks units it has no use for or cannot run, "
        "e.g. postgresql.service, getty@.service, apt-daily.timer); repeat",
    )
    parser.add_argument("--check", action="store_true", help="boot, print the state, stop")
    opts = parser.parse_args(argv)
    try:
        binds = dict(parse_bind(b) for b in opts.bind)
    except SandboxError as exc:  # one line, before anything is created
        print(f"sandbox-host: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        host = boot(binds=binds, unmask=opts.unmask)
    except SandboxError as exc:
        print(f"sandbox-host: {exc}", file=sys.stderr)
        return 1
    try:
        print(
            json.dumps(
                {
                    "pid": host.pid,
                    "name": host.name,
                    "bus": host.bus_address,
                    "root": str(host.root),
                    "boot_sec": round(time.monotonic() - started, 2),
                    "enter": shlex.join(host.nsenter(["bash"])),
                    "enter_network": shlex.join(host.nsenter_net(["bash"])),
                }
            ),
            flush=True,
        )
        if not opts.check:
            stop_signals = {signal.SIGINT, signal.SIGTERM}
            signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
            signal.sigwait(stop_signals)
    finally:
        host.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
