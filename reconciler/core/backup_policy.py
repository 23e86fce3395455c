"""The ``[backup]`` config section and the retention policy (pure: plain data in, out).

``parse_config`` refuses anything it does not know, naming ``config.toml: backup.KEY``,
so a typo in a retention key can never silently mean "keep everything".
``plan_retention`` decides which archives to delete; the caller does the deleting.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from reconciler.errors import JobError

COMPRESSIONS = ("gzip", "bzip2", "xz", "none")
DEFAULT_KEEP_LAST = 7
_KEYS = {"dest", "sources", "compression", "keep_last", "max_age_days", "max_total_bytes"}
_SOURCE_KEYS = {"name", "path", "docker_volume"}
_SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
WHERE = "config.toml: backup"


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


def _fail(key: str, cause: str) -> JobError:
    return JobError(f"{WHERE}.{key}: {cause}", "fix /etc/reconciler/config.toml")


def parse_size(value: object, key: str) -> int:
    """Bytes from an integer or a string such as ``"10G"``, ``"512 MiB"``."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if not match:
        raise _fail(key, f"expected a positive size in bytes or like '10G', got {value!r}")
    unit = (match[2] or "").upper()[:1].replace("B", "")
    size = int(float(match[1]) * _UNITS[unit])
    if size <= 0:
        raise _fail(key, "expected a positive size")
    return size


def _positive(value: object, key: str, kind: type) -> Any:
    ok_type = isinstance(value, kind) or (kind is float and isinstance(value, int))
    if not ok_type or isinstance(value, bool) or value <= 0:  # type: ignore[operator]
        raise _fail(key, f"expected a positive {'integer' if kind is int else 'number'}")
    return value


def _source(index: int, raw: object) -> Source:
    key = f"sources[{index}]"
    if not isinstance(raw, Mapping):
        raise _fail(key, "expected a table like { name = 'data', path = '/srv/data' }")
    for name in raw:
        if name not in _SOURCE_KEYS:
            raise _fail(f"{key}.{name}", "unknown key (expected name, path or docker_volume)")
    name = raw.get("name")
    if not isinstance(name, str) or not _SOURCE_NAME.match(name):
        raise _fail(f"{key}.name", "expected a name of letters, digits, '.', '_' or '-'")
    path, volume = raw.get("path"), raw.get("docker_volume")
    if (path is None) == (volume is None):
        raise _fail(key, f"source '{name}' needs exactly one of path or docker_volume")
    if path is not None:
        if not isinstance(path, str) or not path.startswith("/"):
            raise _fail(f"{key}.path", "expected an absolute path")
        return Source(name, path=Path(path))
    if not isinstance(volume, str) or not volume or volume.startswith("-") or "/" in volume:
        raise _fail(f"{key}.docker_volume", "expected a Docker volume name")
    return Source(name, docker_volume=volume)


def parse_config(section: Mapping[str, Any], state_dir: Path) -> BackupConfig:
    """The validated ``[backup]`` section; JobError naming the first bad key."""
    for key in section:
        if key not in _KEYS:
            raise _fail(key, f"unknown key (expected one of {', '.join(sorted(_KEYS))})")
    dest = section.get("dest", str(state_dir / "backups"))
    if not isinstance(dest, str) or not dest.startswith("/"):
        raise _fail("dest", "expected an absolute path")
    raw_sources = section.get("sources", [])
    if not isinstance(raw_sources, list):
        raise _fail("sources", "expected a list of tables ([[backup.sources]])")
    sources = tuple(_source(i, raw) for i, raw in enumerate(raw_sources))
    seen: set[str] = set()
    for source in sources:
        if source.name in seen:
            raise _fail("sources", f"source name '{source.name}' is used twice")
        seen.add(source.name)
    compression = section.get("compression", "gzip")
    if compression not in COMPRESSIONS:
        raise _fail("compression", f"expected one of {', '.join(COMPRESSIONS)}")
    limits = {"keep_last", "max_age_days", "max_total_bytes"} & set(section)
    retention = Retention(
        keep_last=_positive(section["keep_last"], "keep_last", int)
        if "keep_last" in section
        else (None if limits else DEFAULT_KEEP_LAST),
        max_age_days=_positive(section["max_age_days"], "max_age_days", float)
        if "max_age_days" in section
        else None,
        max_total_bytes=parse_size(section["max_total_bytes"], "max_total_bytes")
        if "max_total_bytes" in section
        else None,
    )
    return BackupConfig(Path(dest), sources, compression, retention)


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
