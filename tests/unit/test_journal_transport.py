"""journal.py against a real AF_UNIX datagram socket standing in for journald."""

from __future__ import annotations

import array
import fcntl
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.host import journal
from tests.unit.test_journal_encoding import decode


class FakeJournald:
    """Receives entries the way journald does: datagrams, or one sealed memfd each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(5)
        self.seals: list[int] = []

    def receive(self) -> dict[str, bytes]:
        fds = array.array("i")
        data, ancdata, _flags, _addr = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(4))
        for level, kind, cmsg in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(cmsg[: len(cmsg) - len(cmsg) % fds.itemsize])
        if fds:
            assert data == b""  # an fd entry carries no payload of its own
            (fd,) = fds
            try:
                self.seals.append(fcntl.fcntl(fd, fcntl.F_GET_SEALS))
                with os.fdopen(os.dup(fd), "rb") as memfd:
                    memfd.seek(0)  # the offset is the sender's, at the end; journald mmaps
                    data = memfd.read()
            finally:
                os.close(fd)
        return dict(decode(data))


@pytest.fixture
def journald(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeJournald]:
    fake = FakeJournald(tmp_path / "journal.sock")
    monkeypatch.setenv(journal.SOCKET_ENV, str(fake.path))
    yield fake
    journal.reset()
    fake.sock.close()


def test_send_arrives_as_one_datagram(journald: FakeJournald) -> None:
    assert journal.available()
    assert journal.send("hello", priority=4, unit="web.service", detail="a\nb")
    assert journald.receive() == {
        "MESSAGE": b"hello",
        "PRIORITY": b"4",
        "SYSLOG_IDENTIFIER": b"reconciler",
        "UNIT": b"web.service",
        "DETAIL": b"a\nb",
    }
    assert journald.seals == []


def test_oversize_entry_goes_through_a_sealed_memfd(journald: FakeJournald) -> None:
    big = ("x" * 99 + "\n") * 3000  # 300 KB: more than an AF_UNIX datagram may carry
    payload = journal.encode_entry({"MESSAGE": "big", "BLOB": big})
    assert journal.send_payload(payload) == "memfd"
    assert journald.receive() == {"MESSAGE": b"big", "BLOB": big.encode()}
    wanted = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
    assert journald.seals == [wanted]


def test_without_journald_nothing_is_sent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(journal.SOCKET_ENV, str(tmp_path / "missing.sock"))
    assert not journal.available()
    assert not journal.send("lost")
    assert journal.send_payload(b"MESSAGE=lost\n") is None


def test_handler_fields_and_exception(journald: FakeJournald) -> None:
    logger = logging.getLogger("reconciler.test.handler")
    handler = journal.JournalHandler()
    logger.addHandler(handler)
    try:
        logger.warning("disk %s low", "sda", extra={"fields": {"unit": "web.service"}})
        entry = journald.receive()
        assert entry["MESSAGE"] == b"disk sda low"
        assert entry["PRIORITY"] == b"4"
        assert entry["UNIT"] == b"web.service"
        assert entry["CODE_FUNC"] == b"test_handler_fields_and_exception"
        assert entry["CODE_FILE"] == __file__.encode()
        assert int(entry["CODE_LINE"]) > 0
        # a plain line has a kind too (a user's trial found one without): "every entry"
        assert entry["RECONCILER_EVENT"] == b"log"
        assert entry["MESSAGE_ID"] == journal.message_id("log").encode()
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("sync crashed")
        entry = journald.receive()
    finally:
        logger.removeHandler(handler)
    assert entry["MESSAGE"] == b"sync crashed"  # no traceback in MESSAGE
    assert entry["PRIORITY"] == b"3"
    assert entry["RECONCILER_EXCEPTION"] == b"RuntimeError: boom"
    assert entry["RECONCILER_TRACEBACK"].startswith(b"Traceback (most recent call last):\n")
    assert entry["RECONCILER_TRACEBACK"].endswith(b"RuntimeError: boom")


def test_event_sets_the_contract_fields(
    journald: FakeJournald, caplog: pytest.LogCaptureFixture
) -> None:
    journal.setup()
    with caplog.at_level(logging.INFO, logger="reconciler"):
        journal.event(
            "rollback", "rolled back", priority=3, unit="web.service", revision="abc", to="def"
        )
    entry = journald.receive()
    assert entry["MESSAGE"] == b"rolled back"
    assert entry["PRIORITY"] == b"3"
    assert entry["RECONCILER_EVENT"] == b"rollback"
    assert entry["MESSAGE_ID"] == journal.EVENTS["rollback"].encode()
    assert entry["UNIT"] == b"web.service"
    assert entry["RECONCILER_REVISION"] == b"abc"
    assert entry["RECONCILER_TO"] == b"def"
    assert entry["CODE_FUNC"] == b"test_event_sets_the_contract_fields"  # the caller, not event()
    # stdlib logging sees the same record
    (record,) = [r for r in caplog.records if r.name == "reconciler"]
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "rolled back"


def test_event_refuses_unknown_kinds() -> None:
    with pytest.raises(KeyError):
        journal.event("no.such.event", "x")


def test_no_journald_means_plain_lines_on_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(journal.SOCKET_ENV, str(tmp_path / "missing.sock"))
    journal.setup()
    journal.setup()  # idempotent: still one line per event
    try:
        journal.event("drift", "unit file changed by hand", priority=4, unit="web.service")
    finally:
        journal.reset()
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith(" WARNING reconciler: unit file changed by hand (unit web.service)")


@pytest.mark.parametrize(
    ("level", "fields", "timestamps", "expected"),
    [
        (logging.INFO, {}, False, "applied"),
        (logging.WARNING, {"UNIT": "a.service"}, False, "warning: applied (unit a.service)"),
        (logging.INFO, {"RECONCILER_REVISION": "0123456789abcdef"}, False,
         "applied (revision 0123456789ab)"),
        (logging.ERROR, {}, True, "ERROR reconciler: applied"),
    ],
)  # fmt: skip
def test_human_lines(level: int, fields: dict[str, str], timestamps: bool, expected: str) -> None:
    record = logging.LogRecord("reconciler", level, __file__, 1, "applied", None, None)
    record.fields = fields
    line = journal.HumanFormatter(timestamps=timestamps).format(record)
    assert line.endswith(expected) if timestamps else line == expected


def test_human_line_keeps_tracebacks_for_verbose_only() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("reconciler", logging.ERROR, __file__, 1, "failed", None, exc_info)
    assert journal.HumanFormatter(timestamps=False).format(record) == (
        "error: failed [ValueError: bad]"
    )
    verbose = journal.HumanFormatter(timestamps=False, verbose=True).format(record)
    assert "Traceback (most recent call last):" in verbose


def test_stderr_is_journal_compares_device_and_inode(tmp_path: Path) -> None:
    with open(tmp_path / "stream", "w") as stream, open(tmp_path / "other", "w") as other:
        st = os.fstat(stream.fileno())
        value = f"{st.st_dev}:{st.st_ino}"
        assert journal.stderr_is_journal(value, stream.fileno())
        assert not journal.stderr_is_journal(value, other.fileno())
        assert not journal.stderr_is_journal(None, stream.fileno())
        assert not journal.stderr_is_journal("garbage", stream.fileno())
