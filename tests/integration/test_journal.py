"""journal.py against the real journald of the disposable host.

Entries are written by a process inside the host run as a unit, then read back with
``journalctl MESSAGE_ID=... -o json``: every field must arrive intact.
"""

from __future__ import annotations

import textwrap
import uuid
from typing import Any

import pytest

from reconciler.devtools import sandbox
from reconciler.errors import SandboxError
from reconciler.host import journal
from tests.conftest import ENV_INSIDE, PYTHON_INSIDE, UnitWriter

pytestmark = pytest.mark.host

DETAIL = "first line\nsecond = two\n\tthird: caf\u00e9 \u2713\n"
BIG = ("z" * 999 + "\n") * 300  # 300 KB: more than one AF_UNIX datagram may carry


def exec_python(code: str) -> str:
    """An ExecStart= line running ``python -c code``, quoted the way systemd unquotes it."""
    quoted = (
        code.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("%", "%%")
        .replace("$", "$$")
    )
    return f'{PYTHON_INSIDE} -c "{quoted}"'


def run_oneshot(host: sandbox.Host, make_unit: UnitWriter, code: str) -> str:
    environment = " ".join(f"{k}={v}" for k, v in ENV_INSIDE.items())
    unit = make_unit(
        "journal-writer.service",
        f"[Service]\nType=oneshot\nEnvironment={environment}\nExecStart={exec_python(code)}\n",
    )
    host.systemctl("daemon-reload")
    try:
        host.systemctl("start", unit)
    except SandboxError as exc:
        output = [e.get("MESSAGE") for e in host.journal(f"_SYSTEMD_UNIT={unit}")]
        raise AssertionError(f"{unit} failed: {exc}; its output: {output}") from exc
    host.journal_sync()
    return unit


def text(value: Any) -> str:
    """journalctl's JSON shows values that are not printable UTF-8 as lists of bytes."""
    return bytes(value).decode() if isinstance(value, list) else str(value)


def find(host: sandbox.Host, event: str, token: str) -> list[dict[str, Any]]:
    return host.journal(f"MESSAGE_ID={journal.message_id(event)}", f"RECONCILER_TOKEN={token}")


def test_entries_from_a_unit_arrive_with_every_field(
    host: sandbox.Host, make_unit: UnitWriter
) -> None:
    token = uuid.uuid4().hex
    code = textwrap.dedent(
        f"""
        import logging
        from reconciler.host import journal
        journal.setup()
        assert journal.available()
        journal.event(
            "sync.applied", "applied 2 actions", unit="web.service", revision="0a1b2c3d",
            token={token!r}, detail={DETAIL!r}, actions=2,
        )
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("reconciler.reconcile").exception(
                "sync crashed",
                extra={{"fields": {{"MESSAGE_ID": journal.message_id("sync.failed"),
                                   "RECONCILER_TOKEN": {token!r}}}}},
            )
        """
    )
    unit = run_oneshot(host, make_unit, code)

    (entry,) = find(host, "sync.applied", token)
    assert entry["MESSAGE"] == "applied 2 actions"
    assert entry["PRIORITY"] == "6"
    assert entry["RECONCILER_EVENT"] == "sync.applied"
    assert entry["UNIT"] == "web.service"
    assert entry["RECONCILER_REVISION"] == "0a1b2c3d"
    assert entry["RECONCILER_ACTIONS"] == "2"
    assert text(entry["RECONCILER_DETAIL"]) == DETAIL
    assert entry["SYSLOG_IDENTIFIER"] == "reconciler"
    assert entry["CODE_FUNC"] == "<module>"
    assert entry["_SYSTEMD_UNIT"] == unit
    assert entry["_TRANSPORT"] == "journal"  # the native protocol, not a line on stderr

    (crash,) = find(host, "sync.failed", token)
    assert crash["MESSAGE"] == "sync crashed"
    assert crash["PRIORITY"] == "3"
    assert crash["RECONCILER_EXCEPTION"] == "RuntimeError: boom"
    traceback = text(crash["RECONCILER_TRACEBACK"])
    assert traceback.startswith("Traceback (most recent call last):\n")
    assert traceback.endswith("RuntimeError: boom")

    # stderr already goes to the journal ($JOURNAL_STREAM): no second, plain copy
    plain = host.journal(f"_SYSTEMD_UNIT={unit}", "_TRANSPORT=stdout")
    lines = [text(e.get("MESSAGE", "")) for e in plain]
    assert not [line for line in lines if "applied 2 actions" in line]


def test_oversize_entry_arrives_through_a_memfd(host: sandbox.Host, make_unit: UnitWriter) -> None:
    token = uuid.uuid4().hex
    code = textwrap.dedent(
        f"""
        from reconciler.host import journal
        big = ("z" * 999 + "\\n") * 300
        payload = journal.encode_entry({{
            "MESSAGE": "oversize entry", "MESSAGE_ID": journal.message_id("drift"),
            "RECONCILER_TOKEN": {token!r}, "RECONCILER_BLOB": big,
        }})
        route = journal.send_payload(payload)
        assert route == "memfd", route
        journal.event("job.backup", "oversize event", token={token!r}, blob=big)
        """
    )
    run_oneshot(host, make_unit, code)
    (entry,) = find(host, "drift", token)
    assert entry["MESSAGE"] == "oversize entry"
    assert text(entry["RECONCILER_BLOB"]) == BIG
    (via_event,) = find(host, "job.backup", token)
    assert text(via_event["RECONCILER_BLOB"]) == BIG


def test_entries_sent_from_outside_through_the_socket_override(
    host: sandbox.Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(journal.SOCKET_ENV, str(host.journal_socket))
    token = uuid.uuid4().hex
    assert journal.available()
    assert journal.send(
        "from outside",
        priority=5,
        message_id=journal.message_id("install"),
        reconciler_token=token,
        reconciler_detail=DETAIL,
    )
    payload = journal.encode_entry(
        {
            "MESSAGE": "big from outside",
            "MESSAGE_ID": journal.message_id("install"),
            "RECONCILER_TOKEN": token,
            "RECONCILER_BLOB": BIG,
        }
    )
    assert journal.send_payload(payload) == "memfd"
    host.journal_sync()
    small, big = find(host, "install", token)
    assert (small["MESSAGE"], small["PRIORITY"]) == ("from outside", "5")
    assert text(small["RECONCILER_DETAIL"]) == DETAIL
    assert big["MESSAGE"] == "big from outside"
    assert text(big["RECONCILER_BLOB"]) == BIG


def test_the_cli_run_as_a_unit_logs_each_message_once(
    host: sandbox.Host, make_unit: UnitWriter
) -> None:
    """A user's trial: under ``journalctl -u gitops-sync`` every line was there twice, once
    as ``reconciler[PID]`` (native) and once as ``python[PID]`` (the CLI's printed line)."""
    environment = " ".join(f"{k}={v}" for k, v in ENV_INSIDE.items())
    state = f"/var/tmp/journal-once-{uuid.uuid4().hex[:8]}"
    commands = {
        "suspend": f"suspend --reason journal-once --state-dir {state}",
        "sync": f"sync --repo /nonexistent/repo.git --state-dir {state} --force --trigger timer",
    }
    try:
        for name, command in commands.items():
            unit = make_unit(
                f"journal-once-{name}.service",
                f"[Service]\nType=oneshot\nEnvironment={environment}\n"
                f"ExecStart={PYTHON_INSIDE} -m reconciler {command}\n",
            )
            host.systemctl("daemon-reload")
            host.systemctl("start", unit, check=False)
            host.journal_sync()
            entries = host.journal(f"_SYSTEMD_UNIT={unit}")
            native = [text(e["MESSAGE"]) for e in entries if e.get("_TRANSPORT") == "journal"]
            plain = [text(e["MESSAGE"]) for e in entries if e.get("_TRANSPORT") == "stdout"]
            assert native, (name, entries)
            twice = [line for line in plain if any(line.split(": ", 1)[-1] in m for m in native)]
            assert twice == [], (name, native, plain)
    finally:
        host.run(["rm", "-rf", state], check=False)
