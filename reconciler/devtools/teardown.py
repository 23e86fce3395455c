"""What a disposable host leaves behind, removed (talks to /proc and cgroupfs).

A host's cgroup subtrees (the kernel frees a cgroup only after its last task), those of
hosts killed with ``kill -9`` (``cleanup_stale``), and a host ``Host.keep`` left running,
powered off by name from another process (``stop_kept``, for ``reconciler demo --stop``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path

from reconciler.errors import SandboxError

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_HIERARCHIES = ("systemd", "unified")
NAME_PREFIX = "reconciler-host-"
RECORD = "kept-host.json"  # in a kept host's work dir (outside view): what stop_kept needs


def starttime(pid: int) -> int:
    """The process's start time in clock ticks (tells a reused PID apart)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[19])


def stop_kept(name: str, *, timeout: float = 20.0) -> None:
    """Power off a host ``Host.keep`` left running (from another process), then remove its
    cgroups, its work dir and the paths it recorded. Nothing is left once this returns."""
    if not re.fullmatch(re.escape(NAME_PREFIX) + r"[A-Za-z0-9_]{1,64}", name):
        raise SandboxError(
            f"cannot stop host '{name}': not a disposable host's name",
            f"names look like {NAME_PREFIX}abc123 (printed by 'reconciler demo --keep')",
        )
    workdir = Path(tempfile.gettempdir()) / name
    try:
        record = json.loads((workdir / RECORD).read_text())
    except (OSError, ValueError) as exc:
        raise SandboxError(
            f"cannot stop host '{name}': no record of a kept host in {workdir}: {exc}",
            "it may be stopped already",
        ) from exc
    pid = int(record["pid"])
    with contextlib.suppress(OSError):
        if starttime(pid) == record["starttime"]:
            os.kill(pid, signal.SIGRTMIN + 4)  # systemd: orderly poweroff
            deadline = time.monotonic() + timeout
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)  # kills the whole PID namespace
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline + 10:
                time.sleep(0.05)
    remove_cgroups(name)
    shutil.rmtree(workdir, ignore_errors=True)
    for path in record.get("remove", []):
        shutil.rmtree(path, ignore_errors=True)


def remove_cgroups(name: str) -> None:
    for hierarchy in CGROUP_HIERARCHIES:
        top = CGROUP_ROOT / hierarchy / name
        if not top.is_dir():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
            for _ in range(50):
                try:
                    os.rmdir(dirpath)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)  # the kernel frees a cgroup shortly after its last task


STALE_AFTER_SEC = 60.0  # a younger subtree may be a host booting beside us right now


def cleanup_stale() -> None:
    """Remove cgroup subtrees left by hosts whose processes are all gone (e.g. after kill -9).

    Hosts booted side by side (a fleet) run this concurrently: a subtree created in the last
    minute is left alone (its boot script may not have moved in yet), and one whose files
    change under the walk counts as alive (a host's unit cgroups come and go)."""
    now = time.time()
    for hierarchy in CGROUP_HIERARCHIES:
        base = CGROUP_ROOT / hierarchy
        if not base.is_dir():
            continue
        for top in base.glob(f"{NAME_PREFIX}*"):
            try:
                if now - top.stat().st_mtime < STALE_AFTER_SEC or _has_tasks(top):
                    continue
            except OSError:
                continue  # removed by its own host meanwhile
            remove_cgroups(top.name)


def _has_tasks(top: Path) -> bool:
    for p, _, _ in os.walk(top):
        try:
            if (Path(p) / "cgroup.procs").read_text().strip():
                return True
        except FileNotFoundError:
            return True  # changing under us: a live host's unit came or went
    return False
