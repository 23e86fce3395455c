"""Benchmark (spawns processes, runs Prometheus and git daemon): ``reconciler promote``, whole
process, per step.

A real Prometheus (Debian's) scrapes the fleet's rollout series for N hosts (3 waves: a
5-host canary group, then 20 % and 80 % by hash bucket), a bare repository is served by
``git daemon`` with pushes enabled, and each run is a whole ``reconciler promote`` process
that reads the refs, the rollout definition, one Prometheus answer, decides, and pushes one
wave ref (the ref is put back between runs). Interleaved with a bare ``python -c pass``.
Target (issue 15): a step < 1 s at 50 hosts; larger fleets are reported, not targeted.

    .venv/bin/python -m bench.bench_promote [--runs 10] [--hosts 50 1000 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import describe_machine
from reconciler.core import rollout
from tests.integration.fleetworld import Metrics, World, query, running_prometheus
from tests.integration.gitrepo import ConfigRepo, git, git_daemon

TARGET_SEC = 1.0
ROLLOUT = """\
[rollout]
source = "main"
[[rollout.waves]]
name = "canary"
hosts = ["canary"]
soak_sec = 60
[[rollout.waves]]
name = "early"
percent = 20
soak_sec = 60
[[rollout.waves]]
name = "rest"
percent = 80
soak_sec = 60
"""


def fleet_files(n: int) -> dict[str, str]:
    lines = []
    for i in range(n):
        group = ', groups = ["canary"]' if i < 5 else ""
        lines.append(f"[hosts.h{i:06d}]\n{group.removeprefix(', ')}\n")
    return {"inventory/hosts.toml": "\n".join(lines), "inventory/rollout.toml": ROLLOUT}


def metrics_text(files: dict[str, str], revisions: dict[str, str], generation: int) -> str:
    found = rollout.parse({k: v.encode() for k, v in files.items()})
    assert found is not None
    now = time.time()
    out = [f"test_generation {generation}"]
    for host, wave in found.assignment.items():
        rev = revisions[wave]
        out.append(
            f'reconciler_rollout_info{{host="{host}",wave="{wave}",revision="{rev}",'
            f'target="{rev}"}} 1'
        )
        out.append(
            f'reconciler_rollout_healthy_since_timestamp_seconds{{host="{host}",wave="{wave}",'
            f'revision="{rev}"}} {now - 600:.0f}'
        )
        out.append(f'reconciler_rollout_failed{{host="{host}",wave="{wave}",target="{rev}"}} 0')
        out.append(
            f'reconciler_last_success_timestamp_seconds{{host="{host}",wave="{wave}"}} {now:.0f}'
        )
    return "\n".join(out) + "\n"


CPU: list[float] = []  # CPU seconds (user + sys) of each spawn, its git children included


def spawn(argv: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    took = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return took, proc


def measure(base: Path, prom: str, metrics: Metrics, hosts: int, runs: int) -> dict[str, float]:
    (base / f"w{hosts}").mkdir()
    repo = ConfigRepo(base / f"srv{hosts}")
    files = fleet_files(hosts)
    with git_daemon(base / f"srv{hosts}", push=True) as port:
        world = World(base / f"w{hosts}", prom, metrics, port, repo)
        world.write_config(prom, timeout=60)  # a loaded machine: measured, not refused
        a = repo.commit(files, "A")
        b = repo.commit({"templates/x": "1"}, "B")
        with metrics.lock:
            metrics.generation += 1
            metrics.text = metrics_text(files, {"canary": b, "early": a, "rest": a}, 0)
            want = metrics.generation
            metrics.text = metrics.text.replace("test_generation 0", f"test_generation {want}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # scraped
            result = query(prom, "test_generation")
            if result and result[0][1] >= want:
                break
            time.sleep(0.2)
        argv = [sys.executable, "-m", "reconciler", "promote", "--json", "--config"]
        argv.append(str(world.config))
        steps, bare, parts, cpu = [], [], [], []
        for _ in range(runs):
            world.set_waves(canary=b, early=a, rest=a)
            took, proc = spawn(argv)
            assert proc.returncode == 0, proc.stderr
            data = json.loads(proc.stdout)
            assert data["moved"] == {"early": [a, b]}, data
            steps.append(took)
            cpu.append(CPU[-1])
            parts.append(data["timings"])
            bare.append(spawn([sys.executable, "-c", "pass"])[0])
        git(repo.remote, "gc", "-q")
    keys = sorted({k for p in parts for k in p})
    return {
        "median": statistics.median(steps),
        "max": max(steps),
        "bare": statistics.median(bare),
        "cpu": statistics.median(cpu),
        **{f"part_{k}": statistics.median(p.get(k, 0.0) for p in parts) for k in keys},
    }


def _made(path: Path) -> Path:
    path.mkdir()
    return path


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_promote")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--hosts", type=int, nargs="*", default=[50, 1000, 10000])
    opts = parser.parse_args()
    print(describe_machine().strip())
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(
        f"reconciler promote, whole process, one step that moves one wave ref "
        f"({opts.runs} runs each, interleaved with python -c pass)"
    )
    ok = True
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_prometheus(_made(Path(tmp) / "prom")) as (
            prom,
            metrics,
        ),
    ):
        for hosts in opts.hosts:
            r = measure(Path(tmp), prom, metrics, hosts, opts.runs)
            parts = ", ".join(
                f"{k.removeprefix('part_')} {v * 1000:.0f} ms"
                for k, v in r.items()
                if k.startswith("part_")
            )
            print(
                f"  {hosts:>6} hosts: median {r['median']:.3f} s, max {r['max']:.3f} s, "
                f"CPU {r['cpu']:.3f} s (bare python {r['bare'] * 1000:.0f} ms); inside: {parts}"
            )
            if hosts <= 50 and r["median"] >= TARGET_SEC:
                ok = False
    print(f"target: a step < {TARGET_SEC:g} s at 50 hosts: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
