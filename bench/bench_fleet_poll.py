"""Benchmark (boots a few disposable systemd hosts on a private LAN; runs git http-backend,
Prometheus, Alertmanager and node-exporters): what one fleet host costs the machine between
two polls, on the harness of tests/scenarios/test_fleet.py (``tests/integration/realfleet.py``).

The 50-host fleet test is CPU-bound: its polls set how much of the machine is left for the
promoter, Prometheus and the waves' deadlines. Printed:

- each host's CPU (its cgroup's ``usage_usec``) per poll period over a window of no-change
  polls, and where it goes (the transient sync, node-exporter, systemd, the watch daemon);
- inside one host, a no-change ``reconciler sync`` run by hand as a whole process (the CPU
  of the child, median) beside a bare ``python -c pass`` interleaved with it (the baseline),
  and the ratio; and the packages that sync imported.

Target (issue 13, a no-op reads nothing it does not need): a no-change poll imports neither
pydantic nor Jinja2 (the inventory's models alone cost ~0.11 s of CPU a poll).

    sudo .venv/bin/python -m bench.bench_fleet_poll [--hosts 6] [--period 20] [--window 120]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bench.machine import describe_machine
from tests.conftest import ENV_INSIDE, PYTHON_INSIDE
from tests.integration.realfleet import real_fleet

HEAVY = ("pydantic", "pydantic_core", "jinja2")
RUNS = 8
# Run inside a host: each command RUNS times, interleaved; the children's CPU, median.
MEASURE = """\
import json, resource, statistics, subprocess, sys
commands = json.loads(sys.argv[1])
cpu = {name: [] for name in commands}
imported = set()
for _ in range(int(sys.argv[2])):
    for name, argv in commands.items():
        env = {"PYTHONPROFILEIMPORTTIME": "1"} if name == "sync" else {}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run(argv, capture_output=True, text=True, env={**ENV, **env})
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        assert proc.returncode == 0, proc.stderr[-2000:]
        cpu[name].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        for line in proc.stderr.splitlines():
            if line.startswith("import time:"):
                imported.add(line.rpartition("|")[2].strip().partition(".")[0])
print(json.dumps({"cpu": {n: statistics.median(v) for n, v in cpu.items()},
                  "imported": sorted(imported)}))
"""


def usage_sec(name: str) -> dict[str, float]:
    """CPU seconds of a host's cgroup and of its units' cgroups, by path below the host."""
    root = Path("/sys/fs/cgroup/unified") / name
    found: dict[str, float] = {}
    for dirpath, _, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if "cpu.stat" not in files or rel.count("/") > 1:
            continue
        for line in Path(dirpath, "cpu.stat").read_text().splitlines():
            if line.startswith("usage_usec "):
                found[rel] = int(line.split()[1]) / 1e6
    return found


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_fleet_poll")
    parser.add_argument("--hosts", type=int, default=6)
    parser.add_argument("--period", type=int, default=20, help="each host polls every N s")
    parser.add_argument("--window", type=int, default=120)
    opts = parser.parse_args()
    print(describe_machine(), flush=True)
    with real_fleet(opts.hosts, period_sec=opts.period, soak_sec=5) as fleet:
        hosts = list(fleet.hosts.values())
        time.sleep(opts.period)  # every host past its first no-change poll
        before = {h.name: usage_sec(h.name) for h in hosts}
        started = time.monotonic()
        time.sleep(opts.window)
        periods = (time.monotonic() - started) / opts.period
        spent: dict[str, float] = {}
        for host in hosts:
            for path, sec in usage_sec(host.name).items():
                spent[path] = spent.get(path, 0.0) + sec - before[host.name].get(path, 0.0)
        per = {path: sec / len(hosts) / periods for path, sec in spent.items()}
        lasting = sum(v for k, v in per.items() if k.startswith("system.slice/"))
        one = hosts[-1]
        one.systemctl("stop", "gitops-sync.timer")
        sync = [PYTHON_INSIDE, "-m", "reconciler", "sync", "--json"]
        commands = {"sync": sync, "bare": [PYTHON_INSIDE, "-c", "pass"]}
        code = f"ENV = {ENV_INSIDE!r}\n" + MEASURE
        proc = one.run(
            [PYTHON_INSIDE, "-c", code, json.dumps(commands), str(RUNS)],
            env=ENV_INSIDE,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        found = json.loads(proc.stdout)
    cpu, heavy = found["cpu"], sorted(set(HEAVY) & set(found["imported"]))
    print(
        f"{opts.hosts} hosts on a private LAN, polling every {opts.period} s "
        f"(`rollout = true`, no change), a window of {opts.window} s"
    )
    print(
        f"  a host's CPU per poll period: {per.get('.', 0):.3f} s; the poll (transient "
        f"gitops-sync.service) ~{per.get('system.slice', 0) - lasting:.3f} s; lasting units: "
        + ", ".join(
            f"{k.removeprefix('system.slice/')} {v:.3f} s"
            for k, v in sorted(per.items(), key=lambda kv: -kv[1])
            if k.startswith("system.slice/") and v >= 0.005
        )
        + f"; init {per.get('init.scope', 0):.3f} s"
    )
    print(
        f"  so 50 hosts every {opts.period} s keep {50 * per.get('.', 0) / opts.period:.2f} "
        f"CPUs busy ({os.cpu_count()} here)"
    )
    print(
        f"  no-change sync by hand, whole process: {cpu['sync']:.3f} s of CPU (median of "
        f"{RUNS}); bare python -c pass {cpu['bare']:.3f} s (ratio "
        f"{cpu['sync'] / max(cpu['bare'], 1e-6):.1f}); {len(found['imported'])} top-level "
        f"packages imported; pydantic/jinja2: {', '.join(heavy) or 'none'} (target none)"
    )
    print("targets MET" if not heavy else "targets MISSED")
    print(describe_machine(), flush=True)
    return 0 if not heavy else 1


if __name__ == "__main__":
    sys.exit(main())
