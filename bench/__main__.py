"""Run every benchmark and rewrite bench/RESULTS.md (spawns each benchmark; boots hosts).

    sudo .venv/bin/python -m bench [--only NAME ...] [--no-write]

Each benchmark runs in a process of its own, one after the other (they share the machine,
so never in parallel), prints its figures (medians, the baseline run beside it in the same
process, the ratio, peak RSS, the machine and the date) and exits 1 when it misses its
target. RESULTS.md gets each one's output verbatim; bench/NOTES.md keeps the analysis.
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import time
from pathlib import Path

from bench.machine import describe_machine

HERE = Path(__file__).resolve().parent
BENCHMARKS = {
    "startup": (
        "bench_startup",
        [],
        "`reconciler --version` cold start: median < 120 ms, peak RSS < 30 MB (issue 2)",
    ),
    "read_units": (
        "bench_read_units",
        [],
        "read 1,000 units: < 300 ms and >= 3x faster than `systemctl show` (issue 2)",
    ),
    "sync": (
        "bench_sync",
        [],
        "200 services: no-op sync < 0.5 s and < 60 MB, one-service change < 1.5 s (issue 3)",
    ),
    "monitor": (
        "bench_monitor",
        [],
        "monitoring pass over 1,000 units: < 600 ms, < 60 MB, "
        ">= 2x faster than `systemctl show` (issue 4)",
    ),
    "watch": (
        "bench_watch",
        [],
        ">= 10,000 PropertiesChanged/s, RSS < 40 MB with 1,000 units watched (issue 4)",
    ),
    "metrics_job": (
        "bench_metrics_job",
        [],
        "`reconciler job metrics` < 300 ms as a whole process (issue 5)",
    ),
    "scenario": (
        "bench_scenario",
        [],
        "an operator's day: 0 false findings per hour, 1 finding per incident, "
        "a pushed unit watched < 1 s after its sync (issue 12)",
    ),
    "promote": (
        "bench_promote",
        [],
        "`reconciler promote`, whole process, one step that moves a wave ref: < 1 s (issue 15)",
    ),
    "fleet": (
        "bench_fleet",
        [],
        "50 real hosts on a LAN, good commit, 3 waves with 60 s soak: every host on it < 5 min, "
        "1 git request per no-change poll, `reconciler promote` < 1 s per step (issue 15)",
    ),
    "fleet_poll": (
        "bench_fleet_poll",
        [],
        "6 real fleet hosts polling every 20 s: a host's CPU per poll period, a no-change sync "
        "beside a bare python; a no-change poll imports neither pydantic nor Jinja2 (issue 13)",
    ),
    "fleet_sim": (
        "bench_fleet_sim",
        [],
        "virtual-clock fleet, 3 waves: time for a commit to reach every host and git "
        "requests/min at 1,000 / 10,000 / 100,000 hosts; 10,000 hosts every 5 min < 600/min "
        "(issue 15)",
    ),
}


def run_one(module: str, args: list[str]) -> tuple[int, str, float]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *args],
        cwd=HERE.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    output = proc.stdout.rstrip()
    if proc.returncode not in (0, 1):
        output += "\n" + proc.stderr.rstrip()[-3000:]
    return proc.returncode, output, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), default=None)
    parser.add_argument("--no-write", action="store_true", help="print, don't rewrite")
    opts = parser.parse_args()
    chosen = opts.only or list(BENCHMARKS)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmark results",
        "",
        f"Rewritten by `sudo .venv/bin/python -m bench` on {now}.",
        describe_machine().strip().replace("machine:", "Machine:"),
        "",
        "The machine is shared and noisy: every benchmark runs its baseline (a bare",
        "`python -c pass`, or `systemctl show` over the same units) interleaved in the same",
        "process and quotes medians and ratios. Rerun one with the command in its section.",
        "Analysis (where the time goes, what mattered): bench/NOTES.md.",
        "",
        "| benchmark | target | result |",
        "| --- | --- | --- |",
    ]
    sections: list[str] = []
    worst = 0
    for name in chosen:
        module, args, target = BENCHMARKS[name]
        if not (HERE / f"{module}.py").exists():
            continue
        code, output, took = run_one(module, args)
        worst = max(worst, code)
        verdict = {0: "met", 1: "**missed**"}.get(code, f"**error (exit {code})**")
        print(f"{name}: {verdict} ({took:.0f}s)", flush=True)
        lines.append(f"| [{name}](#{name.replace('_', '-')}) | {target} | {verdict} |")
        sections += [
            "",
            f"## {name.replace('_', '-')}",
            "",
            f"`sudo .venv/bin/python -m bench.{module}` ({took:.0f} s): target {verdict}.",
            "",
            "```",
            output,
            "```",
        ]
    text = "\n".join(lines + sections) + "\n"
    if opts.no_write:
        print(text)
    else:
        (HERE / "RESULTS.md").write_text(text)
        print(f"wrote {HERE / 'RESULTS.md'}")
    return worst


if __name__ == "__main__":
    raise SystemExit(main())
