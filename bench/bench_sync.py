"""Benchmark: whole-process `reconciler sync` with 200 services on a disposable systemd host.

Measures the first full apply, a no-op sync (target: median < 0.5 s, peak RSS < 60 MB) and a
one-service change including that unit's restart (target < 1.5 s), each with its D-Bus
calls, against a bare `python -c pass` baseline run interleaved in the same process.

With ``--compare REV`` the package as it was at REV (``git archive``) runs the same no-op
sync, interleaved with this tree's, in the same run and on the same host and state, and
``import git`` is timed against ``python -c pass``: a before/after of a change in one run.

Run (as root): .venv/bin/python -m bench.bench_sync [--services 200] [--repeat 7] [--compare REV]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.machine import describe_machine, run_measured
from reconciler.devtools import sandbox
from tests.integration.gitrepo import ConfigRepo

RECONCILER = str(Path(sys.executable).parent / "reconciler")
ROOT = Path(__file__).resolve().parents[1]
LAUNCH = (
    "import sys; from reconciler.cli import main; sys.exit(main())"  # the package on PYTHONPATH
)
# CPU time of ``import git`` inside one process
IMPORT_CPU = (
    "import time; t = time.process_time(); import git; print((time.process_time() - t) * 1e3)"
)
TEMPLATE = """\
[Unit]
Description={{ service }} (bench)

[Service]
Type=simple
ExecStart=/bin/sleep infinity
Environment=VERSION={{ version }}

[Install]
WantedBy=multi-user.target
"""


def inventory(n: int, changed: int | None = None, version: int = 0) -> dict[str, str]:
    services = []
    for i in range(n):
        v = version if i == changed else 0
        services.append(
            f'[services.bench{i:04d}]\ntemplate = "bench.service.j2"\nhosts = ["all"]\n'
            f"vars = {{ version = {v} }}\n"
        )
    return {
        "inventory/hosts.toml": "[hosts.bench]\ngroups = []\n",
        "inventory/services.toml": "\n".join(services),
        "templates/bench.service.j2": TEMPLATE,
    }


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, dict[str, object]]:
    """Wall seconds, peak RSS (MB) of the child, parsed --json output (if any)."""
    elapsed, rss, proc = run_measured(argv, env)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[1:3]} failed: {proc.stderr}")
    data = json.loads(proc.stdout) if proc.stdout.startswith("{") else {}
    return elapsed, rss, data


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--compare", metavar="REV", help="also time the package at REV")
    parser.add_argument(
        "--after", metavar="REV", help="with --compare: the package at REV, not this tree"
    )
    opts = parser.parse_args()
    host = sandbox.boot(hostname="bench")
    work = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    try:
        repo = ConfigRepo(work / "git")
        repo.commit(inventory(opts.services))
        state = work / "state"
        argv = [
            RECONCILER,
            "sync",
            "--json",
            "--repo",
            repo.url,
            "--host",
            "bench",
            "--state-dir",
            str(state),
            "--unit-dir",
            str(host.unit_dir),
            "--run-dir",
            str(work / "run"),
            "--bus",
            host.bus_address,
        ]
        env = {**os.environ, "RECONCILER_CONFIG": str(work / "none.toml")}
        (work / "none.toml").write_text("")
        first, _, first_out = timed(argv, env)
        versions: dict[str, tuple[list[str], dict[str, str]]] = {}
        if opts.compare:
            old = work / "old"
            old.mkdir()
            subprocess.run(
                f"git -C {ROOT} archive {opts.compare} reconciler | tar -x -C {old}",
                shell=True,
                check=True,
            )
            new = ROOT
            if opts.after:
                new = work / "new"
                new.mkdir()
                subprocess.run(
                    f"git -C {ROOT} archive {opts.after} reconciler | tar -x -C {new}",
                    shell=True,
                    check=True,
                )
            launch = [sys.executable, "-c", LAUNCH, *argv[1:]]
            versions = {
                f"at {opts.compare}": (launch, {**env, "PYTHONPATH": str(old)}),
                f"at {opts.after}" if opts.after else "this tree": (
                    launch,
                    {**env, "PYTHONPATH": str(new)},
                ),
            }
        compared: dict[str, list[float]] = {name: [] for name in versions}
        imports: list[float] = []
        import_cpu: list[float] = []
        noop, noop_rss, base = [], [], []
        change: list[float] = []
        noop_calls: object = None
        change_calls: object = None
        for i in range(opts.repeat):
            base.append(timed([sys.executable, "-c", "pass"], env)[0])
            for name, (version_argv, version_env) in versions.items():
                t, _, out = timed(version_argv, version_env)
                assert out["result"] == "noop", (name, out)
                compared[name].append(t)
            if opts.compare:
                imports.append(timed([sys.executable, "-c", "import git"], env)[0])
                cpu = subprocess.run(
                    [sys.executable, "-c", IMPORT_CPU], capture_output=True, text=True, check=True
                )
                import_cpu.append(float(cpu.stdout))
            t, rss, out = timed(argv, env)
            assert out["result"] == "noop", out
            noop.append(t)
            noop_rss.append(rss)
            noop_calls = out["dbus_calls"]
            repo.commit(inventory(opts.services, changed=i % opts.services, version=i + 1))
            t, _, out = timed(argv, env)
            assert out["result"] == "applied", out
            change.append(t)
            change_calls = out["dbus_calls"]
            repo.commit(inventory(opts.services))
            timed(argv, env)  # back to the baseline revision
        bare = statistics.median(base)
        print(f"bench_sync: {opts.services} services, {opts.repeat} repeats")
        print(describe_machine())
        print(f"  python -c pass (baseline)  median {bare * 1000:7.1f} ms")
        print(
            f"  first full apply           {first * 1000:7.1f} ms  "
            f"D-Bus calls {first_out.get('dbus_calls')}"
        )
        print(
            f"  no-op sync                 median {statistics.median(noop) * 1000:7.1f} ms  "
            f"min {min(noop) * 1000:7.1f} ms  x{statistics.median(noop) / bare:.1f} baseline  "
            f"peak RSS {max(noop_rss):.1f} MB  D-Bus calls {noop_calls}"
        )
        print(
            f"  one-service change         median {statistics.median(change) * 1000:7.1f} ms  "
            f"min {min(change) * 1000:7.1f} ms  D-Bus calls {change_calls}"
        )
        for name, times in compared.items():
            print(
                f"  no-op sync, {name:<15} median {statistics.median(times) * 1000:7.1f} ms  "
                f"min {min(times) * 1000:7.1f} ms"
            )
        if imports:
            cost = (statistics.median(imports) - bare) * 1000
            print(f"  import git (GitPython)     median {cost:7.1f} ms over python -c pass")
            print(
                f"  import git, CPU time       median {statistics.median(import_cpu):7.1f} ms  "
                f"min {min(import_cpu):7.1f} ms (in process: less sensitive to load)"
            )
        ok = statistics.median(noop) < 0.5 and max(noop_rss) < 60
        ok = ok and statistics.median(change) < 1.5
        print("  targets: no-op < 500 ms and < 60 MB, change < 1500 ms:", "met" if ok else "MISSED")
        return 0 if ok else 1
    finally:
        host.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    raise SystemExit(main())
