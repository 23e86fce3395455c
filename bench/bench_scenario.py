"""Benchmark: the operator's day of ``tests/scenarios`` as monitoring-precision figures.

Runs the scenario (pytest, as ``./ci/test`` does; it boots its own disposable host, so run
it as root) with ``$SCENARIO_FIGURES`` set, then prints what the day measured (issue 12):

- false findings per scenario hour: findings opened while nothing was wrong (the healthy
  stretches, and the quiet after a fix), scaled by the time spent in them (goal 0);
- findings opened per incident: each incident the day causes on purpose (a crash-looping
  push, a hand edit, a hand stop) must open exactly one (goal 1 each);
- adoption: seconds from a sync's end to the watch daemon watching the unit it added
  (its ``STATUS=`` count grows; goal < 1 s; the daemon updates ``STATUS=`` at most once a
  second, and the wait is cut at 10 s).

Exits 1 when a goal is missed (the scenario itself marks those as strict xfails naming the
open item of issue 12), 2 when the scenario could not produce its figures.

    sudo .venv/bin/python -m bench.bench_scenario [--healthy-sec 600]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import describe_machine

ROOT = Path(__file__).resolve().parent.parent
WAIT_SEC = 10.0  # how long the scenario waits for the watch daemon to adopt a pushed unit


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_scenario")
    parser.add_argument(
        "--healthy-sec",
        type=float,
        default=600.0,
        help="the first healthy stretch (the test's default is 40 s; longer gives a "
        "false-findings-per-hour figure worth the name)",
    )
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "figures.json"
        env = {**os.environ, "CI": "true", "SCENARIO_FIGURES": str(out)}
        env["SCENARIO_HEALTHY_SEC"] = str(opts.healthy_sec)
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "tests/scenarios", "-q", "-rxXf", "-p", "no:randomly"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        took = time.monotonic() - started
        if not out.exists():
            print(proc.stdout[-3000:] + proc.stderr[-2000:])
            return 2
        figures = json.loads(out.read_text())
    summary = [line for line in proc.stdout.splitlines() if line.startswith(("XFAIL", "FAILED"))]
    summary += proc.stdout.strip().splitlines()[-1:]
    per_incident = figures["findings_per_incident"]
    adoption = figures["adoption_sec"]
    print(describe_machine().strip())
    print(f"scenario    tests/scenarios, {took:.0f} s wall (pytest exit {proc.returncode})")
    print(
        f"healthy     {figures['healthy_sec']:.0f} s in healthy stretches; "
        f"{figures['false_findings']} false findings = "
        f"{figures['false_findings_per_hour']:g} per scenario hour (goal 0)"
    )
    for name, count in per_incident.items():
        print(f"incident    {name}: {count} finding(s) opened (goal 1)")
    for sec in adoption:
        seen = f"{sec:.3f} s" if sec < WAIT_SEC else f"not within the {WAIT_SEC:g} s waited"
        print(f"adoption    a pushed unit watched {seen} after its sync ended (goal < 1 s)")
    print("pytest      " + "\n            ".join(summary))
    met = (
        figures["false_findings"] == 0
        and set(per_incident.values()) == {1}
        and all(sec < 1.0 for sec in adoption)
    )
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
