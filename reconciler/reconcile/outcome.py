"""What a sync did (pure data): its result, why units failed the gate, the outcome record.

The enums' values are the strings the history, the JSON output and the textfile have
always carried ("rolled-back", "start job failed"...): they are a contract, not labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from reconciler.model import CommitInfo, Plan


class Result(StrEnum):
    """How a sync ended; the value is what ``history`` and ``--json`` show."""

    APPLIED = "applied"
    NOOP = "noop"
    ROLLED_BACK = "rolled-back"
    FAILED = "failed"
    SUSPENDED = "suspended"
    HELD = "held"  # the fetched revision is marked bad; the host stays where it is
    DRY_RUN = "dry-run"


class Reason(StrEnum):
    """Why a touched unit failed its health gate; the value opens the reason's text."""

    START_JOB = "start job"  # the start/restart job itself ended other than "done"
    NOT_LOADED = "not loaded"
    FAILED = "failed"
    FINISHED = "finished with"  # a oneshot that ended without success
    TIMEOUT = "not healthy after"


@dataclass(frozen=True)
class Unhealthy:
    """One unit's failed gate: the reason and its detail (``str()`` is the text shown)."""

    reason: Reason
    detail: str

    def __str__(self) -> str:
        return f"{self.reason.value} {self.detail}"


@dataclass(frozen=True)
class Rollback:
    """What the rollback step did: history's second row of a rolled-back sync."""

    started_at: float
    duration_sec: float
    actions: list[str]


@dataclass
class Outcome:
    """What a sync did, for the CLI and the record."""

    result: Result
    revision: str | None = None
    plan: Plan = field(default_factory=Plan)
    actions: list[str] = field(default_factory=list)
    failed_units: dict[str, Unhealthy] = field(default_factory=dict)
    rolled_back_to: str | None = None
    rollback: Rollback | None = None
    message: str = ""
    dbus_calls: dict[str, int] = field(default_factory=dict)  # D-Bus method -> calls
    commit: CommitInfo | None = None  # the revision's author and subject
    commits: list[CommitInfo] = field(default_factory=list)  # since the applied one, newest first
    resolved: str = ""  # what the ref resolved to (refs/heads/main, refs/tags/v1, commit ...)
    merged: dict[str, str] = field(default_factory=dict)  # plan: unit -> systemctl cat, after

    @property
    def settled(self) -> bool:
        """A step already decided this sync failed (or rolled back) and said why."""
        return self.result in (Result.FAILED, Result.ROLLED_BACK)
