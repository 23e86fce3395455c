"""Benchmark: ``reconciler job metrics`` as a whole process (spawns it; writes a temp store).

Runs the job N times on one SQLite store and N times on a fresh store each, interleaved
with ``python -c pass`` so all see the same machine load, and prints a Markdown section
for bench/RESULTS.md. A first run has no previous counters and samples over a 100 ms
window; later runs take their rates from the previous run. Target: under 300 ms as a
whole process, interpreter included; exits 1 if the median of either kind misses it.

Processes get the bytecode cache as an installed package has it (``PYTHONDONTWRITEBYTECODE``
is dropped and a warm-up run writes it). Peak RSS comes from GNU time.

    .venv/bin/python -m bench.bench_metrics_job [-n 15]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.machine import cpu_model, run_measured

TARGET_MS = 300.0
CLI = str(Path(sys.executable).parent / "reconciler")


def run(argv: list[str], env: dict[str, str]) -> float:
    """Wall time in ms of one process."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status = os.waitpid(proc.pid, 0)
    elapsed = (time.perf_counter() - started) * 1000
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} exited {proc.returncode}: {err.strip()}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_metrics_job")
    parser.add_argument("-n", type=int, default=15, help="runs of each (default 15)")
    opts = parser.parse_args(argv)

    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env["RECONCILER_JOURNAL_SOCKET"] = "/nonexistent/journal-socket"  # the entry to stderr
    env.pop("PYTHONDONTWRITEBYTECODE", None)

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:

        def job(state: str) -> list[str]:
            config = Path(tmp) / f"{state}.toml"
            config.write_text(f'state_dir = "{tmp}/{state}"\nhost = "bench"\n')
            return [CLI, "job", "metrics", "--config", str(config)]

        baseline = [sys.executable, "-c", "pass"]
        run(job("warm"), env)  # bytecode cache, page cache
        steady = job("steady")
        run(steady, env)
        firsts: list[float] = []
        jobs: list[float] = []
        bases: list[float] = []
        for i in range(opts.n):
            bases.append(run(baseline, env))
            firsts.append(run(job(f"first{i}"), env))  # a fresh store: the 100 ms window
            jobs.append(run(steady, env))  # rates from the previous run
        # Peak RSS through GNU time (a tiny parent), in runs of their own.
        rss = [run_measured(argv, env)[1] for argv in (job("rss"), steady, steady)]
        size = sum(p.stat().st_size for p in Path(tmp, "steady").iterdir())

    median, base = statistics.median(jobs), statistics.median(bases)
    first = statistics.median(firsts)
    ok = median < TARGET_MS and first < TARGET_MS
    uname = platform.uname()
    print(f"## metrics job (`reconciler job metrics`), {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print()
    print(
        f"- machine: {uname.system} {uname.release} {uname.machine}, {os.cpu_count()} CPUs, "
        f"{cpu_model()}; Python {platform.python_version()}; bytecode cache warm"
    )
    print(f"- load average before: {' '.join(f'{x:.2f}' for x in load_before)}")
    print(f"- runs: {opts.n} x (`python -c pass`, first run, later run) interleaved, SQLite")
    print(
        f"- later runs (rates from the previous run): median {median:.0f} ms, "
        f"min {min(jobs):.0f}, max {max(jobs):.0f}"
    )
    print(
        f"- first runs (fresh store, 100 ms window): median {first:.0f} ms, "
        f"min {min(firsts):.0f}, max {max(firsts):.0f}"
    )
    print(
        f"- baseline `python -c pass`: median {base:.0f} ms; job over baseline {median - base:.0f}"
    )
    print(f"- peak RSS: {max(rss):.1f} MB; store after {opts.n + 1} runs: {size} bytes")
    print(
        f"- target: median < {TARGET_MS:.0f} ms for both kinds of run: {'met' if ok else 'MISSED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
