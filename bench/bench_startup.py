"""Benchmark (spawns processes): cold start of ``reconciler --version`` and ``--help``.

Each run is a whole new process of the venv's console script, spawned with
``posix_spawn``; the peak RSS comes from a second run under GNU ``/usr/bin/time``. Runs
are interleaved with a bare ``python -c pass`` of the same interpreter, so the ratio
says what the project adds on top of Python itself. Targets (issue 2): ``--version``
median under 120 ms and peak RSS under 30 MB; the exit code is 1 when missed.

    .venv/bin/python -m bench.bench_startup [--runs 20] [--importtime]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.machine import cpu_model

TARGET_MEDIAN_MS = 120.0
TARGET_RSS_MB = 30.0


# Installed code has its bytecode cached (pip compiles it); so must the runs measured here.
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
TIME = Path("/usr/bin/time")  # GNU time: a tiny parent, so %M is the child's own peak RSS


@dataclass
class Series:
    name: str
    argv: list[str]
    wall_ms: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)

    def run_once(self) -> None:
        """One timed run, then (with GNU time) one more for the peak RSS."""
        usage = _spawn(self.argv)
        self.wall_ms.append(usage[0] * 1000)
        if TIME.exists():
            with tempfile.NamedTemporaryFile("r") as out:
                _spawn([str(TIME), "-q", "-f", "%M", "-o", out.name, *self.argv])
                self.rss_mb.append(int(out.read().split()[-1]) / 1024)
        else:
            self.rss_mb.append(usage[1])

    @property
    def median(self) -> float:
        return statistics.median(self.wall_ms)

    def line(self, baseline: Series | None) -> str:
        ratio = f"  x{self.median / baseline.median:.2f} of bare python" if baseline else ""
        return (
            f"{self.name:<22} median {self.median:6.1f} ms  min {min(self.wall_ms):6.1f} ms"
            f"  max {max(self.wall_ms):6.1f} ms  peak RSS {max(self.rss_mb):5.1f} MB{ratio}"
        )


def _spawn(argv: list[str]) -> tuple[float, float]:
    """Run argv with stdout/stderr to /dev/null: (wall seconds, ru_maxrss in MB).

    ru_maxrss of a spawned child also counts the spawning process's own RSS at exec time
    (the kernel keeps the old mm's high-water mark), so without GNU time it is an upper bound.
    """
    devnull = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_WRONLY, 0) for fd in (1, 2)]
    started = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, CHILD_ENV, file_actions=devnull)
    _, status, usage = os.wait4(pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench: {' '.join(argv)} exited {status}")
    return elapsed, usage.ru_maxrss / 1024  # Linux reports KiB


def machine() -> list[str]:
    u = platform.uname()
    return [
        f"date     {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"machine  {u.system} {u.release} {u.machine}; {os.cpu_count()} CPUs; {cpu_model()}",
        f"python   {platform.python_version()} ({sys.executable})",
        f"rss      {'GNU time %M per child' if TIME.exists() else 'wait4 ru_maxrss (upper bound)'}",
    ]


def importtime(script: Path, args: list[str], top: int = 12) -> list[str]:
    """The slowest imports (cumulative microseconds) of one run, from ``-X importtime``."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(script), *args],
        capture_output=True,
        text=True,
        check=False,
        env=CHILD_ENV,
    )
    rows: list[tuple[int, str]] = []
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].rstrip()[1:]))  # nesting = extra indent
    rows.sort(reverse=True)
    total = sum(us for us, name in rows if not name.startswith(" "))
    lines = [f"  all top-level imports: {total / 1000:.1f} ms"]
    lines += [f"  {us / 1000:7.1f} ms {name}" for us, name in rows[:top]]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_startup")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--importtime", action="store_true", help="also show the slow imports")
    opts = parser.parse_args(argv)
    script = Path(sys.prefix) / "bin" / "reconciler"
    if not script.exists():
        raise SystemExit(f"bench: {script} not found; install the package in this venv first")
    series = [
        Series("python -c pass", [sys.executable, "-c", "pass"]),
        Series("reconciler --version", [str(script), "--version"]),
        Series("reconciler --help", [str(script), "--help"]),
    ]
    for each in series:  # warm the page cache and the bytecode caches: measure start-up only
        each.run_once()
        each.wall_ms.clear()
        each.rss_mb.clear()
    for _ in range(opts.runs):
        for each in series:
            each.run_once()
    baseline, version, help_ = series
    print(*machine(), f"runs     {opts.runs} of each, interleaved", sep="\n")
    print(baseline.line(None), version.line(baseline), help_.line(baseline), sep="\n")
    ok = version.median < TARGET_MEDIAN_MS and max(version.rss_mb) < TARGET_RSS_MB
    verdict = "met" if ok else "MISSED"
    print(
        f"target   --version median < {TARGET_MEDIAN_MS:.0f} ms"
        f" and peak RSS < {TARGET_RSS_MB:.0f} MB: {verdict}"
    )
    if opts.importtime or not ok:
        for args in (["--version"], ["--help"]):
            print(f"imports of reconciler {' '.join(args)}:")
            print(*importtime(script, args), sep="\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
