"""The ``[backup]`` config section and the retention policy (pure: plain data in, out).

The section is read and checked by ``reconciler.config`` (a typo in a retention key can never
silently mean "keep everything"); ``from_section`` turns it into what the job uses.
``plan_retention`` decides which archives to delete; the caller does the deleting.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from reconciler.config import Backup, read_section

COMPRESSIONS = ("gzip", "bzip2", "xz", "none")
DEFAULT_KEEP_LAST = 7
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass(frozen=True)
class Retention:
    keep_last: int | None = None
    max_age_days: float | None = None
    max_total_bytes: int | None = None


@dataclass(frozen=True)
class Source:
    name: str
    path: Path | None = None  # a directory ...
    docker_volume: str | None = None  # ... or a Docker volume, resolved at run time


@dataclass(frozen=True)
class BackupConfig:
    dest: Path
    sources: tuple[Source, ...]
    compression: str = "gzip"
    retention: Retention = Retention(keep_last=DEFAULT_KEEP_LAST)


def parse_size(value: object, key: str = "max_total_bytes") -> int:
    """Bytes from an integer or a string such as ``"10G"``, ``"512 MiB"`` (checked by the
    config reader: a bad one raises ValueError)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    size = (
        int(float(match[1]) * _UNITS[(match[2] or "").upper()[:1].replace("B", "")]) if match else 0
    )
    if size <= 0:
        raise ValueError(f"{key}: expected a positive size in bytes or like '10G', got {value!r}")
    return size


def from_section(section: Backup, state_dir: Path) -> BackupConfig:
    """The ``[backup]`` section (read and checked by ``config``) as the job uses it."""
    sources = tuple(Source(s.name, s.path, s.docker_volume) for s in section.sources)
    limits = (section.keep_last, section.max_age_days, section.max_total_bytes)
    retention = Retention(
        keep_last=section.keep_last
        if section.keep_last is not None
        else (None if any(v is not None for v in limits) else DEFAULT_KEEP_LAST),
        max_age_days=section.max_age_days,
        max_total_bytes=parse_size(section.max_total_bytes)
        if section.max_total_bytes is not None
        else None,
    )
    return BackupConfig(
        section.dest or state_dir / "backups", sources, section.compression, retention
    )


def parse_config(section: Mapping[str, Any], state_dir: Path) -> BackupConfig:
    """``[backup]`` from a plain table (the config reader's checks, then ``from_section``)."""
    return from_section(read_section(Backup, section, "backup"), state_dir)


@dataclass(frozen=True)
class Candidate:
    """What retention needs to know about one archive."""

    name: str
    created: datetime
    size: int
    good: bool = True  # complete and not known to be damaged
    seq: int = 0  # orders archives made in the same second


def plan_retention(
    archives: Iterable[Candidate], policy: Retention, now: datetime
) -> list[tuple[str, str]]:
    """``(name, reason)`` for each archive to delete, newest first.

    Going from the newest, an archive is kept unless it is beyond ``keep_last``, older
    than ``max_age_days``, or would bring the kept total over ``max_total_bytes`` (then
    every older one goes too). The newest good archive is always kept, whatever the
    policy: a backup job failing for weeks must not age out the last usable backup.
    """
    ordered = sorted(archives, key=lambda a: (a.created, a.seq, a.name), reverse=True)
    protected = next((a.name for a in ordered if a.good), None)
    age_limit = None
    if policy.max_age_days is not None:
        age_limit = now - timedelta(days=policy.max_age_days)
    kept_count = kept_bytes = 0
    over_budget = False
    doomed: list[tuple[str, str]] = []
    for archive in ordered:
        reason = None
        if archive.name == protected:
            pass
        elif policy.keep_last is not None and kept_count >= policy.keep_last:
            reason = f"beyond keep_last={policy.keep_last}"
        elif age_limit is not None and archive.created < age_limit:
            reason = f"older than max_age_days={policy.max_age_days:g}"
        elif policy.max_total_bytes is not None and (
            over_budget or kept_bytes + archive.size > policy.max_total_bytes
        ):
            over_budget = True
            reason = f"over max_total_bytes={policy.max_total_bytes}"
        if reason:
            doomed.append((archive.name, reason))
        else:
            kept_count += 1
            kept_bytes += archive.size
    return doomed
