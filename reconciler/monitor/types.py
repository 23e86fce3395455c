"""The monitor's data (pure): its settings, a view of the host, a pass's changes and result.

Apart from the pass so that its outputs (``publish``, ``textfile``) and the watch daemon
name these types without importing the pass that produces them (no cycle).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.core.drift import DriftItem, UnitState
from reconciler.core.patterns import Finding, Thresholds
from reconciler.model import DesiredUnit
from reconciler.store.finding_store import Retention, StoredFinding


@dataclass(frozen=True)
class MonitorConfig:
    thresholds: Thresholds = field(default_factory=Thresholds)
    retention: Retention = field(default_factory=Retention)
    textfile: Path | None = None  # None: no textfile
    impact_depth: int = 3
    detect_window_sec: float = 6 * 3600.0  # observations patterns look at (events: history)


@dataclass
class HostView:
    """The managed units as desired and as they are, with their drift."""

    desired: list[DesiredUnit]
    states: dict[str, UnitState]
    drift: dict[str, list[DriftItem]]
    read_sec: float = 0.0
    own: frozenset[str] = frozenset()  # the reconciler's own units (install's, not the repo's)
    scheduled: frozenset[str] = frozenset()  # the services a timer or path unit runs


@dataclass
class Changes:
    opened: list[Finding] = field(default_factory=list)
    still: list[tuple[StoredFinding, Finding]] = field(default_factory=list)
    resolved: list[StoredFinding] = field(default_factory=list)


@dataclass
class Applied:
    opened: list[StoredFinding] = field(default_factory=list)
    still: list[StoredFinding] = field(default_factory=list)
    resolved: list[StoredFinding] = field(default_factory=list)


@dataclass
class UnitReport:
    unit: str
    service: str
    file: str  # matches | drifted | missing
    enable: bool
    unit_file_state: str
    load_state: str
    active_state: str
    sub_state: str
    n_restarts: int
    memory: int | None
    counters: dict[str, Any]
    drift: list[str]


@dataclass
class PassResult:
    at: float
    duration_sec: float
    revision: str | None
    units: list[UnitReport]
    drift: list[DriftItem]
    open: list[StoredFinding]
    opened: list[StoredFinding]
    resolved: list[StoredFinding]
    bundles: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "duration_sec": round(self.duration_sec, 4),
            "revision": self.revision,
            "units": [u.__dict__ for u in self.units],
            "drift": [d.to_dict() for d in self.drift],
            "findings": [f.to_dict() for f in self.open],
            "opened": [f.to_dict() for f in self.opened],
            "resolved": [f.to_dict() for f in self.resolved],
            "bundles": self.bundles,
            "warnings": self.warnings,
        }
