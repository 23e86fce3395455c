"""journald's native protocol encoding, event ids and level mapping (pure, no socket)."""

from __future__ import annotations

import logging
import re
import struct

import pytest

from reconciler.host import journal


def decode(payload: bytes) -> list[tuple[str, bytes]]:
    """The inverse of encode_entry, written from the protocol description."""
    fields: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(payload):
        end = payload.index(b"\n", pos)
        line = payload[pos:end]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            pos = end + 1
        else:
            key = line
            (size,) = struct.unpack_from("<Q", payload, end + 1)
            start = end + 1 + 8
            value = payload[start : start + size]
            assert payload[start + size : start + size + 1] == b"\n"
            pos = start + size + 1
        fields.append((key.decode("ascii"), value))
    return fields


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("MESSAGE", "hello", b"MESSAGE=hello\n"),
        ("PRIORITY", 3, b"PRIORITY=3\n"),
        ("RECONCILER_DRY_RUN", True, b"RECONCILER_DRY_RUN=true\n"),
        ("UNIT", "web@1.service", b"UNIT=web@1.service\n"),
        ("X", "a=b=c", b"X=a=b=c\n"),
        ("X", "", b"X=\n"),
        ("X", "caf\u00e9", b"X=caf\xc3\xa9\n"),
        ("X", b"\x00\xff", b"X=\x00\xff\n"),
        ("X", "two\nlines", b"X\n" + struct.pack("<Q", 9) + b"two\nlines\n"),
        ("X", "\n", b"X\n\x01\x00\x00\x00\x00\x00\x00\x00\n\n"),
        ("X", b"bin\n\x00ary", b"X\n" + struct.pack("<Q", 8) + b"bin\n\x00ary\n"),
    ],
)
def test_encode_field(key: str, value: object, expected: bytes) -> None:
    assert journal.encode_field(key, value) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("MESSAGE", "MESSAGE"),
        ("unit", "UNIT"),
        ("reconciler-event", "RECONCILER_EVENT"),
        ("code.file", "CODE_FILE"),
        ("_PID", "PID"),  # journald drops fields starting with '_' from clients
        ("__x9", "X9"),
        ("A" * 64, "A" * 64),
    ],
)
def test_normalise_key(name: str, expected: str) -> None:
    assert journal.normalise_key(name) == expected


@pytest.mark.parametrize("name", ["", "_", "9LIVES", "caf\u00e9", "a=b", "a\nb", "A" * 65])
def test_normalise_key_refuses(name: str) -> None:
    with pytest.raises(ValueError, match="journal field name"):
        journal.normalise_key(name)


def test_entry_round_trips_and_skips_none() -> None:
    detail = "line one\nline two\n\ttabbed = yes\n"
    payload = journal.encode_entry(
        {"MESSAGE": "applied", "PRIORITY": 6, "UNIT": None, "RECONCILER_DETAIL": detail}
    )
    assert decode(payload) == [
        ("MESSAGE", b"applied"),
        ("PRIORITY", b"6"),
        ("RECONCILER_DETAIL", detail.encode()),
    ]


def test_big_binary_value_round_trips() -> None:
    blob = bytes(range(256)) * 1200  # newlines, NULs, every byte
    assert decode(journal.encode_entry({"BLOB": blob})) == [("BLOB", blob)]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("actions", "RECONCILER_ACTIONS"),
        ("exit-status", "EXIT_STATUS"),
        ("errno", "ERRNO"),
        ("invocation_id", "INVOCATION_ID"),
        ("RECONCILER_REVISION", "RECONCILER_REVISION"),
        ("previous_revision", "RECONCILER_PREVIOUS_REVISION"),
    ],
)
def test_event_field_names(name: str, expected: str) -> None:
    assert journal.field_name(name) == expected


def test_event_ids_are_unique_128_bit_ids() -> None:
    ids = list(journal.EVENTS.values())
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert journal.message_id("crash_loop") == journal.EVENTS["crash_loop"]
    with pytest.raises(KeyError):
        journal.message_id("no.such.event")


def test_required_event_kinds_exist() -> None:
    kinds = """sync.started sync.applied sync.noop sync.failed sync.suspended action rollback
    health.failed drift finding.opened finding.resolved crash_loop start_limit_hit flapping
    periodic_crash failure_clustering memory_growth restart_anomaly missed_run failed_run
    job.metrics
    job.backup job.etl webhook.accepted webhook.rejected watch.started watch.stopped install"""
    assert set(kinds.split()) <= set(journal.EVENTS)


@pytest.mark.parametrize(
    ("level", "priority"),
    [
        (logging.CRITICAL, 2),
        (logging.ERROR, 3),
        (logging.WARNING, 4),
        (journal.NOTICE, 5),
        (logging.INFO, 6),
        (logging.DEBUG, 7),
        (5, 7),
    ],
)
def test_levels_and_priorities(level: int, priority: int) -> None:
    assert journal.priority_of(level) == priority
    if level >= logging.DEBUG:
        assert journal.level_of(priority) == level


def test_emergency_priorities_are_critical() -> None:
    assert [journal.level_of(p) for p in (0, 1, 2)] == [logging.CRITICAL] * 3
