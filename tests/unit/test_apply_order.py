"""apply runs the plan's actions in order and batches consecutive jobs (a fake systemd port)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler.model import (
    DaemonReload,
    DisableUnits,
    EnableUnits,
    LiveUnit,
    Plan,
    RemoveUnitFile,
    RestartUnit,
    StartUnit,
    StopUnit,
    WriteUnitFile,
)
from reconciler.reconcile.apply import apply


@dataclass
class Job:
    unit: str
    result: str


class RecordingSystemd:
    """Implements the port apply needs; records calls, fails the jobs it is told to."""

    def __init__(self, failing: dict[str, str] | None = None) -> None:
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.failing = failing or {}

    def reload(self) -> None:
        self.calls.append(("reload", ()))

    def enable_unit_files(self, files: Sequence[str]) -> object:
        self.calls.append(("enable", tuple(files)))
        return []

    def disable_unit_files(self, files: Sequence[str]) -> object:
        self.calls.append(("disable", tuple(files)))
        return []

    def run_jobs(
        self, jobs: Sequence[tuple[str, str]], *, timeout: float | None = None
    ) -> dict[str, Job]:
        self.calls.append(("jobs", tuple(f"{verb} {unit}" for verb, unit in jobs)))
        return {unit: Job(unit, self.failing.get(unit, "done")) for _, unit in jobs}

    def read_units(self, names: Sequence[str]) -> dict[str, LiveUnit]:
        return {}

    def reset_failed(self, name: str) -> None:
        self.calls.append(("reset-failed", (name,)))

    def reset_failed_units(self, names: Sequence[str]) -> None:
        for name in names:
            self.reset_failed(name)


def test_actions_run_in_plan_order_with_jobs_batched(tmp_path: Path) -> None:
    (tmp_path / "old.service").write_text("old")
    plan = Plan(
        actions=(
            StopUnit("old.service"),
            DisableUnits(("old.service",)),
            RemoveUnitFile("old.service", "old"),
            WriteUnitFile("a.service", "[Service]\nExecStart=/bin/true\n"),
            WriteUnitFile("b.service", "[Service]\nExecStart=/bin/true\n", previous="x"),
            DaemonReload(),
            EnableUnits(("a.service", "b.service")),
            StartUnit("a.service"),
            RestartUnit("b.service"),
        )
    )
    port = RecordingSystemd(failing={"b.service": "failed"})
    seen: list[object] = []
    result = apply(plan, tmp_path, port, on_action=seen.append)
    assert port.calls == [
        ("jobs", ("stop old.service",)),
        ("reset-failed", ("old.service",)),  # stopped on purpose: no failed state left
        ("disable", ("old.service",)),
        ("reload", ()),
        ("enable", ("a.service", "b.service")),
        ("reset-failed", ("a.service",)),
        ("jobs", ("start a.service",)),
        ("jobs", ("restart b.service",)),
    ]
    assert seen == list(plan.actions)
    assert result.failed_jobs == {"b.service": "failed"}
    assert result.removed == {"old.service"}
    assert not (tmp_path / "old.service").exists()
    assert (tmp_path / "a.service").stat().st_mode & 0o777 == 0o644
    assert not list(tmp_path.glob(".*.tmp"))


def test_consecutive_starts_are_one_batch(tmp_path: Path) -> None:
    plan = Plan(actions=(StartUnit("a.service"), StartUnit("b.service"), StartUnit("c.service")))
    port = RecordingSystemd()
    apply(plan, tmp_path, port)
    assert port.calls[-1] == ("jobs", ("start a.service", "start b.service", "start c.service"))
