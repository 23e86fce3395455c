"""Retention and the [backup] config, as plain data in, plain data out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler.core.backup_policy import (
    DEFAULT_KEEP_LAST,
    Candidate,
    Retention,
    Source,
    parse_config,
    parse_size,
    plan_retention,
)
from reconciler.errors import UsageError

NOW = datetime(2025, 6, 1, 1, 0, tzinfo=UTC)
MiB = 1 << 20


def daily(*sizes: int, bad: tuple[int, ...] = ()) -> list[Candidate]:
    """One archive per day, the newest (index 0) made just now."""
    return [
        Candidate(f"a{i}", NOW - timedelta(days=i), size, good=i not in bad)
        for i, size in enumerate(sizes)
    ]


CASES: list[tuple[str, list[Candidate], Retention, list[str]]] = [
    ("no policy keeps everything", daily(1, 1, 1), Retention(), []),
    ("keep_last=3 of 5", daily(1, 1, 1, 1, 1), Retention(keep_last=3), ["a3", "a4"]),
    ("keep_last larger than count", daily(1, 1), Retention(keep_last=5), []),
    ("keep_last=1", daily(1, 1, 1), Retention(keep_last=1), ["a1", "a2"]),
    ("max_age 7 days", daily(*[1] * 10), Retention(max_age_days=7), ["a8", "a9"]),
    ("max_age exactly at the limit is kept", daily(*[1] * 8), Retention(max_age_days=7), []),
    (
        "max_age never deletes the newest good archive",
        [Candidate("old", NOW - timedelta(days=40), 1), Candidate("older", NOW - timedelta(50), 1)],
        Retention(max_age_days=7),
        ["older"],
    ),
    (
        "max_total 250 of 5x100",
        daily(100, 100, 100, 100, 100),
        Retention(max_total_bytes=250),
        ["a2", "a3", "a4"],
    ),
    (
        "max_total: once over budget, older small ones go too",
        daily(100, 200, 10, 10),
        Retention(max_total_bytes=250),
        ["a1", "a2", "a3"],
    ),
    (
        "max_total smaller than the newest keeps it",
        daily(500, 100),
        Retention(max_total_bytes=50),
        ["a1"],
    ),
    (
        "newest bad archive: the newest good one is still kept",
        daily(1, 1, 1, 1, bad=(0,)),
        Retention(keep_last=1),
        ["a2", "a3"],
    ),
    (
        "all bad: nothing protected",
        daily(1, 1, 1, bad=(0, 1, 2)),
        Retention(keep_last=1),
        ["a1", "a2"],
    ),
    (
        "combined: keep_last wins first, then age, then size",
        daily(100, 100, 100, 100, 100, 100),
        Retention(keep_last=5, max_age_days=3.5, max_total_bytes=10_000),
        ["a4", "a5"],
    ),
    ("empty list", [], Retention(keep_last=1, max_age_days=1, max_total_bytes=1), []),
]


@pytest.mark.parametrize(
    ("archives", "policy", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_plan_retention(archives: list[Candidate], policy: Retention, expected: list[str]) -> None:
    doomed = plan_retention(archives, policy, NOW)
    assert [name for name, _ in doomed] == expected
    assert all(reason for _, reason in doomed)
    # Order of the input does not matter.
    assert plan_retention(list(reversed(archives)), policy, NOW) == doomed


def test_reasons_name_the_rule() -> None:
    doomed = dict(plan_retention(daily(1, 1, 1), Retention(keep_last=1), NOW))
    assert doomed["a1"] == "beyond keep_last=1"
    doomed = dict(plan_retention(daily(*[1] * 9), Retention(max_age_days=7), NOW))
    assert doomed["a8"] == "older than max_age_days=7"


def test_same_second_archives_order_by_sequence() -> None:
    same = [
        Candidate("x", NOW, 1),
        Candidate("x-2", NOW, 1, seq=2),
        Candidate("x-10", NOW, 1, seq=10),
    ]
    assert plan_retention(same, Retention(keep_last=1), NOW) == [
        ("x-2", "beyond keep_last=1"),
        ("x", "beyond keep_last=1"),
    ]


STATE = Path("/var/lib/reconciler")


def test_config_defaults() -> None:
    config = parse_config({}, STATE)
    assert config.dest == STATE / "backups"
    assert config.sources == ()
    assert config.compression == "gzip"
    assert config.retention == Retention(keep_last=DEFAULT_KEEP_LAST)


def test_config_full() -> None:
    config = parse_config(
        {
            "dest": "/srv/backups",
            "sources": [
                {"name": "data", "path": "/srv/data"},
                {"name": "pg", "docker_volume": "pgdata"},
            ],
            "compression": "xz",
            "max_age_days": 30,
            "max_total_bytes": "10G",
        },
        STATE,
    )
    assert config.dest == Path("/srv/backups")
    assert config.sources == (
        Source("data", path=Path("/srv/data")),
        Source("pg", docker_volume="pgdata"),
    )
    assert config.retention == Retention(None, 30, 10 << 30)


BAD: list[tuple[dict[str, Any], str]] = [
    ({"keep_lats": 3}, "backup.keep_lats: unknown key"),
    ({"dest": "relative"}, "backup.dest: expected an absolute path"),
    ({"sources": {"name": "x"}}, "backup.sources: expected a list"),
    ({"sources": ["x"]}, "backup.sources[0]: expected a table"),
    ({"sources": [{"name": "x", "path": "/a", "pth": 1}]}, "backup.sources[0].pth: unknown key"),
    ({"sources": [{"name": "x"}]}, "needs exactly one of path or docker_volume"),
    ({"sources": [{"name": "x", "path": "/a", "docker_volume": "v"}]}, "exactly one of"),
    ({"sources": [{"name": "../x", "path": "/a"}]}, "backup.sources[0].name"),
    ({"sources": [{"name": "x", "path": "a"}]}, "backup.sources[0].path: expected an absolute"),
    ({"sources": [{"name": "x", "docker_volume": "-v"}]}, "backup.sources[0].docker_volume"),
    ({"sources": [{"name": "x", "path": "/a"}, {"name": "x", "path": "/b"}]}, "used twice"),
    ({"compression": "zstd"}, "backup.compression: expected one of gzip, bzip2, xz, none"),
    ({"keep_last": 0}, "backup.keep_last: expected 1 or more, got 0"),
    ({"keep_last": True}, "backup.keep_last: expected an integer, got True"),
    ({"keep_last": 2.5}, "backup.keep_last: expected an integer, got 2.5"),
    ({"max_age_days": -1}, "backup.max_age_days: expected a number above 0, got -1"),
    ({"max_total_bytes": "lots"}, "backup.max_total_bytes: expected a positive size"),
]


@pytest.mark.parametrize(("section", "message"), BAD, ids=[m for _, m in BAD])
def test_config_refused(section: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError) as info:  # a configuration error: exit 2
        parse_config(section, STATE)
    assert message in str(info.value)
    assert str(info.value).startswith("cannot read config 'config.toml': backup.")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, 1), ("1", 1), ("100B", 100), ("2K", 2048), ("1.5 MiB", 3 * MiB // 2), ("10G", 10 << 30)],
)
def test_parse_size(value: object, expected: int) -> None:
    assert parse_size(value, "max_total_bytes") == expected
