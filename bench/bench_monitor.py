"""Benchmark (boots a disposable systemd host): a whole-process monitoring pass over 1,000 units.

In the host: 1,000 loaded, enabled units (oneshot ``RemainAfterExit`` units, every 7th
failing, two thirds started, and every 10th a running ``sleep`` service, so the cgroup memory
fallback is exercised), all marked desired by writing the store's desired kv directly, as
the last sync would. Then, interleaved in one run: ``reconciler monitor`` as a whole process
(interpreter start, store, one pipelined read, drift, counters, patterns, findings, textfile; the
default
bus inside the host as root: systemd's private socket) and one ``systemctl show -p <the
properties the monitor reads>`` subprocess over the same units. The first pass opens the
findings of the failed units (journal entries, diagnostics bundles) and is reported on its
own; the median is over the passes after it (the steady state every timer-fired pass is in).
Peak RSS per child via GNU time.

Targets (issue 4): median under 600 ms, peak RSS under 60 MB, at least 2x faster than
systemctl show; the exit code is 1 when one is missed.

    .venv/bin/python -m bench.bench_monitor [--units 1000] [--repeats 9]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from bench.machine import describe_machine, run_measured

TARGET_MS, TARGET_RSS_MB, TARGET_RATIO = 600.0, 60.0, 2.0
REPO = Path(__file__).resolve().parent.parent
SRC_INSIDE, VENV_INSIDE = "/opt/reconciler", "/opt/reconciler-venv"
STATE_INSIDE = "/var/lib/reconciler-bench"
PROPS = (
    "LoadState,ActiveState,SubState,UnitFileState,NeedDaemonReload,InvocationID,Result,"
    "NRestarts,ExecMainCode,ExecMainStatus,MemoryCurrent,Type,ControlGroup,"
    "ExecMainExitTimestamp,Restart"
)
ONESHOT = """[Unit]
Description=bench unit {i}
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={cmd}
[Install]
WantedBy=multi-user.target
"""
SLEEPER = """[Unit]
Description=bench unit {i}
[Service]
ExecStart=/bin/sleep infinity
[Install]
WantedBy=multi-user.target
"""


def unit_names(n: int) -> list[str]:
    return [f"benchmon-{i:04d}.service" for i in range(n)]


def content(i: int) -> str:
    if i % 10 == 5:
        return SLEEPER.format(i=i)
    return ONESHOT.format(i=i, cmd="/bin/false" if i % 7 == 0 else "/bin/true")


def prepare(host: object, n: int) -> None:
    unit_dir: Path = host.unit_dir  # type: ignore[attr-defined]
    for i, name in enumerate(unit_names(n)):
        (unit_dir / name).write_text(content(i))
    host.systemctl("daemon-reload")  # type: ignore[attr-defined]
    # Enabled, as managed units are: referenced units stay loaded. (An inactive unit nothing
    # references is unloaded by systemd's GC and loaded again by every D-Bus call on it.)
    host.systemctl("enable", *unit_names(n))  # type: ignore[attr-defined]
    started = [name for i, name in enumerate(unit_names(n)) if i % 3 or i % 10 == 5]
    host.systemctl("start", *started, check=False)  # type: ignore[attr-defined]


def measure_inside(n: int, repeats: int) -> dict[str, object]:
    """Runs in the host: desired state into a fresh store, then interleaved samples."""
    from reconciler.model import DesiredUnit
    from reconciler.store import sync_store
    from reconciler.store.sync_store import Store

    names = unit_names(n)
    desired = [DesiredUnit(name, content(i), name[:-8]) for i, name in enumerate(names)]
    with Store.open(Path(STATE_INSIDE) / "state.db") as store:
        store.kv_set(sync_store.DESIRED_KEY, sync_store.encode_desired(desired))
    monitor = [
        f"{VENV_INSIDE}/bin/python", "-m", "reconciler", "monitor", "--state-dir", STATE_INSIDE,
    ]  # fmt: skip
    env = {"PYTHONPATH": SRC_INSIDE, "PATH": "/usr/bin:/bin", "RECONCILER_CONFIG": "/dev/null"}
    show = ["systemctl", "show", "-p", PROPS, *names]
    first_ms, first_rss, first = run_measured([*monitor, "--json"], env)
    assert first.returncode == 0, first.stderr
    first_out = json.loads(first.stdout)
    samples: dict[str, list[float]] = {"monitor": [], "systemctl": []}
    rss: dict[str, list[float]] = {"monitor": [], "systemctl": []}
    for _ in range(repeats):
        for label, argv in (("monitor", monitor), ("systemctl", show)):
            sec, mb, proc = run_measured(argv, env)
            assert proc.returncode == 0, proc.stderr
            samples[label].append(sec * 1000)
            rss[label].append(mb)
    final = subprocess.run([*monitor, "--json"], env=env, capture_output=True, text=True)
    last = json.loads(final.stdout)  # for the report only: the timed runs print the summary
    return {
        "first": {
            "ms": first_ms * 1000,
            "rss_mb": first_rss,
            "opened": len(first_out["opened"]),
            "bundles": len(first_out["bundles"]),
        },
        "samples_ms": samples,
        "rss_mb": rss,
        "units": len(last["units"]),  # type: ignore[arg-type]
        "open_findings": len(last["findings"]),  # type: ignore[arg-type]
        "pass_ms": float(last["duration_sec"]) * 1000,  # type: ignore[arg-type]
        "states": _count(u["active_state"] for u in last["units"]),  # type: ignore[attr-defined]
        "with_memory": sum(u["memory"] is not None for u in last["units"]),  # type: ignore[attr-defined]
    }


def _count(items: object) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:  # type: ignore[attr-defined]
        out[item] = out.get(item, 0) + 1
    return out


def summary(data: dict[str, object], n: int, repeats: int) -> tuple[str, bool]:
    samples: dict[str, list[float]] = data["samples_ms"]  # type: ignore[assignment]
    rss: dict[str, list[float]] = data["rss_mb"]  # type: ignore[assignment]
    med = {k: statistics.median(v) for k, v in samples.items()}
    peak = max(rss["monitor"])
    ratio = med["systemctl"] / med["monitor"]
    ok = med["monitor"] < TARGET_MS and peak < TARGET_RSS_MB and ratio >= TARGET_RATIO
    first: dict[str, float] = data["first"]  # type: ignore[assignment]
    lines = [
        f"bench_monitor: {n} loaded desired units, {repeats} interleaved repeats",
        describe_machine(),
        f"  unit states: {data['states']}; memory known for {data['with_memory']} units; "
        f"{data['open_findings']} findings open",
        f"  first pass (opens findings): {first['ms']:.0f} ms, {first['rss_mb']:.1f} MB, "
        f"{first['opened']} findings opened, {first['bundles']} diagnostics bundles",
    ]
    for key, label in (
        ("monitor", "reconciler monitor (whole process)"),
        ("systemctl", "systemctl show (1 subprocess)"),
    ):
        lines.append(
            f"  {label:<36} median {med[key]:7.1f} ms  min {min(samples[key]):7.1f} ms  "
            f"peak RSS {max(rss[key]):5.1f} MB"
        )
    lines.append(f"  the pass itself (as reported by a --json run): {data['pass_ms']:.0f} ms")
    lines.append(
        f"  monitor median {med['monitor']:.0f} ms (target < {TARGET_MS:.0f}), peak RSS "
        f"{peak:.1f} MB (target < {TARGET_RSS_MB:.0f}), {ratio:.1f}x faster than systemctl "
        f"show (target >= {TARGET_RATIO:.0f}x): " + ("OK" if ok else "MISSED")
    )
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_monitor")
    parser.add_argument("--units", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.inside:
        print(json.dumps(measure_inside(opts.units, opts.repeats)))
        return 0

    import compileall

    from reconciler.devtools import sandbox

    # As on an installed host: bytecode compiled (the host mounts the checkout read-only,
    # so a stale __pycache__ would be recompiled by every process).
    compileall.compile_dir(REPO / "reconciler", quiet=1)
    host = sandbox.boot(binds={str(REPO): SRC_INSIDE, sys.prefix: VENV_INSIDE})
    try:
        prepare(host, opts.units)
        inner = [f"{VENV_INSIDE}/bin/python", "-m", "bench.bench_monitor", "--inside"]
        proc = host.run(
            [*inner, "--units", str(opts.units), "--repeats", str(opts.repeats)],
            env={"PYTHONPATH": SRC_INSIDE},
            timeout=900,
        )
    finally:
        host.stop()
    text, ok = summary(json.loads(proc.stdout), opts.units, opts.repeats)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
