"""Prometheus text for node_exporter's textfile collector (talks to the filesystem: one file).

node_exporter reads every ``*.prom`` file in its ``--collector.textfile.directory`` on each
scrape; a half-written file would be scraped as garbage, so the file is written to a
temporary name in the same directory, fsynced and renamed over the old one. Building the
text (:func:`build`) is pure and table-tested; only :func:`write` touches the disk.

Metric names follow Prometheus conventions: ``reconciler_`` prefix, base units (seconds,
bytes), ``_total`` for counters. Unit states are one-hot like node_exporter's own systemd
collector (``state="active"`` is 1, the other states 0), so ``sum by (state)`` works.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

STATES = ("active", "activating", "deactivating", "inactive", "failed")  # as node_exporter


@dataclass(frozen=True)
class UnitSample:
    """What the textfile says of one managed unit."""

    unit: str
    active_state: str
    drifted: bool = False
    n_restarts: int = 0
    starts: int = 0
    stops: int = 0
    crashes: int = 0
    memory_bytes: int | None = None


@dataclass(frozen=True)
class OpenFinding:
    kind: str
    unit: str
    severity: str


@dataclass(frozen=True)
class LastSync:
    started_at: float  # unix seconds
    duration_sec: float
    result: str  # applied | noop | rolled-back | failed | ...
    revision: str = ""


@dataclass(frozen=True)
class WatchFigures:
    """The watch daemon's collector, as it last stored them (``monitor_kv``)."""

    at: float  # unix seconds
    running: bool
    units: int
    events_total: int
    dropped_total: int
    events_per_sec: float
    queue_depth: int  # the fullest the signal queue was since the figures before
    queue_size: int

    FRESH_SEC: ClassVar[float] = 60.0  # the daemon stores them every few seconds


@dataclass(frozen=True)
class FleetSample:
    """The host in a rollout (``rollout = true``), as the promoter reads it from Prometheus."""

    host: str  # the inventory name
    wave: str
    revision: str  # applied, 40 hex ("" before the first sync)
    target: str  # the commit the wave ref pointed at when the host last polled
    healthy_since: float  # when the applied revision last became healthy; 0 while not
    failed: bool  # the host tried ``target`` and failed (gate, rollback, refused render)
    last_success: float | None  # when the last sync that left it at its revision ended
    rollbacks: int
    health_gate_failures: int


STATE_HELP = "Whether the managed unit is in this ActiveState (one-hot)."
DRIFTED_HELP = "1 when the live unit differs from the desired state (file, enablement, state)."
RESTARTS_HELP = "systemd's NRestarts: automatic restarts since the unit was last started by hand."
STARTS_HELP = "Starts seen by the monitor, kept across runs and reboots."
STOPS_HELP = "Clean stops seen by the monitor, kept across runs and reboots."
CRASHES_HELP = "Runs that ended on their own with a failure (or were restarted)."
MEMORY_HELP = "Memory of the unit (MemoryCurrent, else the RSS of its cgroup's processes)."

SUCCESS_RESULTS = frozenset({"applied", "noop", "success"})


@lru_cache(maxsize=8192)
def escape_label(value: str) -> str:
    """A label value as the text format wants it: backslash, quote and new line escaped."""
    if "\\" not in value and '"' not in value and "\n" not in value:
        return value
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class _Text:
    """Accumulates metric families: HELP and TYPE once, then the samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(
        self,
        name: str,
        kind: str,
        help_text: str,
        samples: Iterable[tuple[dict[str, str], float]],
    ) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        self.lines.extend(
            f"{name}{{{_labels(labels)}}} {_number(value)}"
            if labels
            else f"{name} {_number(value)}"
            for labels, value in samples
        )


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items())


def build(
    units: Sequence[UnitSample],
    findings: Sequence[OpenFinding],
    last_sync: LastSync | None,
    *,
    pass_at: float,
    pass_duration_sec: float,
    watch: WatchFigures | None = None,
    fleet: FleetSample | None = None,
) -> str:
    """The whole file's text (ends with a new line)."""
    out = _Text()
    ordered = sorted(units, key=lambda u: u.unit)
    # each unit's label rendered once: 11 lines a unit (110,000 at 10,000 units: 0.18 s -> 0.06 s)
    label = [f'unit="{escape_label(u.unit)}"' for u in ordered]
    out.lines += [
        "# HELP reconciler_unit_state " + STATE_HELP,
        "# TYPE reconciler_unit_state gauge",
    ]
    for u, lbl in zip(ordered, label, strict=True):
        extra = () if u.active_state in STATES else (u.active_state,)
        out.lines += [
            f'reconciler_unit_state{{{lbl},state="{escape_label(s)}"}} {int(u.active_state == s)}'
            for s in (*STATES, *extra)
        ]
    for name, kind, text, values in (
        ("drifted", "gauge", DRIFTED_HELP, [int(u.drifted) for u in ordered]),
        ("restarts", "gauge", RESTARTS_HELP, [u.n_restarts for u in ordered]),
        ("starts_total", "counter", STARTS_HELP, [u.starts for u in ordered]),
        ("stops_total", "counter", STOPS_HELP, [u.stops for u in ordered]),
        ("crashes_total", "counter", CRASHES_HELP, [u.crashes for u in ordered]),
        ("memory_bytes", "gauge", MEMORY_HELP, [u.memory_bytes for u in ordered]),
    ):
        out.lines += [
            f"# HELP reconciler_unit_{name} {text}",
            f"# TYPE reconciler_unit_{name} {kind}",
        ]
        out.lines += [
            f"reconciler_unit_{name}{{{lbl}}} {_number(v)}"
            for lbl, v in zip(label, values, strict=True)
            if v is not None
        ]
    out.family(
        "reconciler_finding_open",
        "gauge",
        "An open monitoring finding (1 per finding).",
        (
            ({"kind": f.kind, "unit": f.unit, "severity": f.severity}, 1)
            for f in sorted(findings, key=lambda f: (f.kind, f.unit))
        ),
    )
    by_kind = Counter(f.kind for f in findings)
    out.family(
        "reconciler_findings_open",
        "gauge",
        "Open findings per kind.",
        (({"kind": k}, n) for k, n in sorted(by_kind.items())),
    )
    if last_sync is not None:
        out.family(
            "reconciler_last_sync_timestamp_seconds",
            "gauge",
            "When the last sync started (unix time).",
            [({}, last_sync.started_at)],
        )
        out.family(
            "reconciler_last_sync_duration_seconds",
            "gauge",
            "How long the last sync took.",
            [({}, last_sync.duration_sec)],
        )
        out.family(
            "reconciler_last_sync_success",
            "gauge",
            "1 when the last sync left the host at its revision (applied or no-op).",
            [({}, int(last_sync.result in SUCCESS_RESULTS))],
        )
        out.family(
            "reconciler_last_sync_result",
            "gauge",
            "The result of the last sync (1 for the result it had).",
            [({"result": last_sync.result, "revision": last_sync.revision[:12]}, 1)],
        )
    out.family(
        "reconciler_monitor_last_pass_timestamp_seconds",
        "gauge",
        "When the last monitoring pass ran (unix time).",
        [({}, pass_at)],
    )
    out.family(
        "reconciler_monitor_pass_duration_seconds",
        "gauge",
        "How long the last monitoring pass took.",
        [({}, pass_duration_sec)],
    )
    if watch is not None:
        _watch(out, watch, pass_at)
    if fleet is not None:
        _fleet(out, fleet)
    return "\n".join(out.lines) + "\n"


def _fleet(out: _Text, f: FleetSample) -> None:
    """The contract of issue 15: every line carries ``host`` and ``wave``."""
    who = {"host": f.host, "wave": f.wave}
    out.family(
        "reconciler_rollout_info",
        "gauge",
        "The applied revision and the target its wave ref pointed at when the host polled.",
        [({**who, "revision": f.revision, "target": f.target}, 1)],
    )
    out.family(
        "reconciler_rollout_healthy_since_timestamp_seconds",
        "gauge",
        "When the applied revision last became healthy (unix time); 0 while unhealthy.",
        [({**who, "revision": f.revision}, f.healthy_since)],
    )
    out.family(
        "reconciler_rollout_failed",
        "gauge",
        "1 when the host tried the target and failed (health gate, rollback, refused render).",
        [({**who, "target": f.target}, int(f.failed))],
    )
    if f.last_success is not None:
        out.family(
            "reconciler_last_success_timestamp_seconds",
            "gauge",
            "When the last sync that left the host at its revision ended (unix time).",
            [(who, f.last_success)],
        )
    out.family(
        "reconciler_rollbacks_total", "counter", "Rollbacks after a failed health gate.",
        [(who, f.rollbacks)],
    )  # fmt: skip
    out.family(
        "reconciler_health_gate_failures_total", "counter", "Health gates that failed.",
        [(who, f.health_gate_failures)],
    )  # fmt: skip


def _watch(out: _Text, w: WatchFigures, now: float) -> None:
    up = w.running and now - w.at <= WatchFigures.FRESH_SEC
    for name, kind, text, value in (
        ("up", "gauge", "1 while the watch daemon runs and reports.", int(up)),
        ("units", "gauge", "Units the watch daemon watches.", w.units),
        ("events_total", "counter", "PropertiesChanged signals handled.", w.events_total),
        ("dropped_total", "counter", "Signals dropped (queue full).", w.dropped_total),
        ("events_per_second", "gauge", "Signals handled per second, lately.", w.events_per_sec),
        ("queue_depth", "gauge", "Fullest the signal queue was, lately.", w.queue_depth),
        ("queue_size", "gauge", "Places in the signal queue.", w.queue_size),
        ("report_timestamp_seconds", "gauge", "When these figures were taken.", w.at),
    ):
        out.family(f"reconciler_watch_{name}", kind, text, [({}, value)])


def write(path: Path, text: str) -> None:
    """Replace ``path`` atomically (temp file in the same directory, fsync, rename; 0644)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name of this process's own, not tempfile.mkstemp: tempfile (with shutil, random, bz2,
    # lzma) was 1.3 MB of the watch daemon's resident set, for this one call
    tmp = str(path.parent / f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
