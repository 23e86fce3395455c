"""Shared by the benchmarks: what machine this is, and one measured child process."""

from __future__ import annotations

import datetime
import os
import platform
import resource
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

GNU_TIME = Path("/usr/bin/time")  # a tiny parent: its %M is the child's own peak RSS


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe_machine() -> str:
    u = platform.uname()
    load = os.getloadavg()[0]
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return (
        f"  machine: {u.system} {u.release} {u.machine}, {os.cpu_count()} CPUs, "
        f"{cpu_model()}; python {platform.python_version()}; load {load:.1f}; {now}"
    )


def run_measured(
    argv: Sequence[str], env: Mapping[str, str] | None = None
) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """Run once: (wall seconds, peak RSS in MB of the child, the completed process)."""
    with tempfile.NamedTemporaryFile("r") as out:
        wrapped = [str(GNU_TIME), "-q", "-f", "%M", "-o", out.name, *argv]
        use_time = GNU_TIME.exists()
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        started = time.perf_counter()
        proc = subprocess.run(
            wrapped if use_time else list(argv),
            capture_output=True,
            text=True,
            env=dict(env) if env else None,
            check=False,
        )
        elapsed = time.perf_counter() - started
        if use_time:
            text = out.read().split()
            rss_kb = int(text[-1]) if text and text[-1].isdigit() else 0
        else:  # an upper bound: the largest child so far
            rss_kb = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return elapsed, rss_kb / 1024, proc
