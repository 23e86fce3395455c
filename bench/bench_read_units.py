"""Benchmark (boots a disposable systemd host): what the monitor reads of 1,000 loaded units.

Compares, in one process and interleaved, ``Systemd.read_units`` over the dbus-daemon
system bus, the same over systemd's private socket, and ``systemctl show -p <the same
properties> <all units>`` as one subprocess. The timing loop runs *inside* the host, as
the reconciler does in production: systemd refuses private-socket peers outside its PID
namespace (``SO_PEERCRED`` has no pid for them). Each sample connects anew, so it counts
what a monitor pass pays (connect + read), like ``systemctl`` does.

Targets (issue 2): best path median under 300 ms and at least 3x faster than systemctl;
the exit code is 1 when missed.

    .venv/bin/python -m bench.bench_read_units [--units 1000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.machine import describe_machine

TARGET_MS = 300.0
TARGET_RATIO = 3.0
PROPS = (
    "LoadState,ActiveState,SubState,NRestarts,Result,InvocationID,ExecMainCode,ExecMainStatus,"
    "MemoryCurrent"
)
BUS = "unix:path=/run/dbus/system_bus_socket"
PRIVATE = "unix:path=/run/systemd/private"
REPO = Path(__file__).resolve().parent.parent
SRC_INSIDE, VENV_INSIDE = "/opt/reconciler", "/opt/reconciler-venv"

UNIT = """[Unit]
Description=bench unit {i}
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={cmd}
[Install]
WantedBy=multi-user.target
"""


def unit_names(n: int) -> list[str]:
    return [f"bench-{i:04d}.service" for i in range(n)]


def measure_inside(n: int, repeats: int) -> dict[str, object]:
    """Runs in the host: interleaved samples of the three paths, plus a consistency check."""
    from reconciler.systemd.client import Systemd

    names = unit_names(n)
    samples: dict[str, list[float]] = {"bus": [], "private": [], "systemctl": []}
    read_ms: dict[str, list[float]] = {"bus": [], "private": []}
    calls: dict[str, dict[str, int]] = {}
    results = {}

    def ours(label: str, address: str) -> Callable[[], None]:
        def run() -> None:
            started = time.perf_counter()
            with Systemd(address) as sd:
                connected = time.perf_counter()
                results[label] = sd.read_units(names)
                done = time.perf_counter()
                calls[label] = dict(sd.calls)
            samples[label].append((done - started) * 1000)
            read_ms[label].append((done - connected) * 1000)

        return run

    def systemctl() -> None:
        started = time.perf_counter()
        proc = subprocess.run(
            ["systemctl", "show", "-p", PROPS, *names], capture_output=True, text=True, check=True
        )
        samples["systemctl"].append((time.perf_counter() - started) * 1000)
        results["systemctl"] = proc.stdout  # type: ignore[assignment]

    runs = [ours("bus", BUS), ours("private", PRIVATE), systemctl]
    for _ in range(repeats):
        for run in runs:
            run()
    return {
        "samples_ms": samples,
        "read_only_ms": read_ms,
        "calls": calls,
        "mismatches": _compare(results["private"], str(results["systemctl"])),
        "states": _state_counts(results["private"]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "systemctl_peak_rss_mb": _systemctl_rss(names),
    }


def _systemctl_rss(names: list[str]) -> float:
    """systemctl's own peak RSS, from GNU time (a child's ru_maxrss counts its parent's)."""
    if not Path("/usr/bin/time").exists():
        return float("nan")
    argv = ["/usr/bin/time", "-f", "%M", "systemctl", "show", "-p", PROPS, *names]
    proc = subprocess.run(argv, capture_output=True, text=True, check=True)
    return int(proc.stderr.split()[-1]) / 1024


def _compare(ours: object, shown: str) -> list[str]:
    """Units where read_units and systemctl show disagree (states may move in between)."""
    blocks = [dict(line.split("=", 1) for line in b.splitlines()) for b in shown.split("\n\n")]
    bad = []
    for unit, block in zip(ours.values(), blocks, strict=True):  # type: ignore[attr-defined]
        mine = (unit.load_state, unit.active_state, unit.sub_state, str(unit.n_restarts))
        theirs = (block["LoadState"], block["ActiveState"], block["SubState"], block["NRestarts"])
        if mine != theirs or unit.invocation_id != block["InvocationID"]:
            bad.append(f"{unit.name}: {mine} vs {theirs}")
    return bad


def _state_counts(units: object) -> dict[str, int]:
    counts: dict[str, int] = {}
    for unit in units.values():  # type: ignore[attr-defined]
        counts[unit.active_state] = counts.get(unit.active_state, 0) + 1
    return counts


def prepare(host: object, n: int) -> None:
    """Write n oneshot units (every 7th fails), enable them, reload, start two thirds.

    Enabled (wanted by multi-user.target) so that they stay loaded: systemd unloads an
    inactive unit nothing refers to, and reloads it from disk on every call about it.
    """
    unit_dir: Path = host.unit_dir  # type: ignore[attr-defined]
    wants = unit_dir / "multi-user.target.wants"
    wants.mkdir(exist_ok=True)
    names = unit_names(n)
    for i, name in enumerate(names):
        cmd = "/bin/false" if i % 7 == 0 else "/bin/true"
        (unit_dir / name).write_text(UNIT.format(i=i, cmd=cmd))
        (wants / name).symlink_to(f"/etc/systemd/system/{name}")
    host.systemctl("daemon-reload")  # type: ignore[attr-defined]
    started = [name for i, name in enumerate(names) if i % 3]
    host.systemctl("start", *started, check=False)  # type: ignore[attr-defined]


def summary(data: dict[str, object], n: int, repeats: int) -> tuple[str, bool]:
    samples: dict[str, list[float]] = data["samples_ms"]  # type: ignore[assignment]
    read_only: dict[str, list[float]] = data["read_only_ms"]  # type: ignore[assignment]
    med = {k: statistics.median(v) for k, v in samples.items()}
    best = min(("bus", "private"), key=lambda k: med[k])
    ratio = med["systemctl"] / med[best]
    ok = med[best] <= TARGET_MS and ratio >= TARGET_RATIO
    calls: dict[str, dict[str, int]] = data["calls"]  # type: ignore[assignment]
    lines = [
        f"bench_read_units: {n} loaded units, {repeats} interleaved repeats, "
        f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        describe_machine().strip(),
        f"unit states: {data['states']}",
    ]
    for key, label in (
        ("bus", "read_units via dbus-daemon"),
        ("private", "read_units via /run/systemd/private"),
        ("systemctl", "systemctl show (1 subprocess)"),
    ):
        extra = ""
        if key in read_only:
            extra = (
                f"  (read only: median {statistics.median(read_only[key]):.1f} ms; "
                f"calls {sum(calls[key].values())}: {calls[key]})"
            )
        lines.append(
            f"  {label:<38} median {med[key]:7.1f} ms  min {min(samples[key]):7.1f} ms"
            f"  x{med['systemctl'] / med[key]:.1f} vs systemctl{extra}"
        )
    lines.append(
        f"peak RSS: measuring process {data['peak_rss_mb']:.1f} MB, "
        f"systemctl {data['systemctl_peak_rss_mb']:.1f} MB"
    )
    mismatches: list[str] = data["mismatches"]  # type: ignore[assignment]
    lines.append(f"read_units vs systemctl show: {len(mismatches)} units differ {mismatches[:3]}")
    lines.append(
        f"best path: {best}, median {med[best]:.1f} ms (target < {TARGET_MS:.0f}), "
        f"{ratio:.1f}x faster than systemctl (target >= {TARGET_RATIO:.0f}x): "
        + ("OK" if ok else "MISSED")
    )
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_read_units")
    parser.add_argument("--units", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.inside:
        print(json.dumps(measure_inside(opts.units, opts.repeats)))
        return 0

    from reconciler.devtools import sandbox

    host = sandbox.boot(binds={str(REPO): SRC_INSIDE, sys.prefix: VENV_INSIDE})
    try:
        prepare(host, opts.units)
        inner = [f"{VENV_INSIDE}/bin/python", "-m", "bench.bench_read_units", "--inside"]
        proc = host.run(
            [*inner, "--units", str(opts.units), "--repeats", str(opts.repeats)],
            env={"PYTHONPATH": SRC_INSIDE},
            timeout=600,
        )
    finally:
        host.stop()
    text, ok = summary(json.loads(proc.stdout), opts.units, opts.repeats)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
