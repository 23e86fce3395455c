"""`reconciler demo` end to end: the best integration test there is; each step's outcome."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from reconciler.host.journal import message_id

pytestmark = pytest.mark.host

RECONCILER = str(Path(sys.executable).parent / "reconciler")


def section(out: str, title: str) -> str:
    """The narration of one step: from its '==>' heading to the next."""
    start = out.index(f"==> {title}")
    end = out.find("\n==> ", start + 1)
    return out[start : end if end != -1 else None]


def test_demo_narrates_every_step(host: object, tmp_path: Path) -> None:
    del host  # the demo boots its own host; this fixture only proves hosts can boot here
    # run where a 'reconciler' directory is (a checkout): its steps run the installed code
    (tmp_path / "reconciler").mkdir()
    (tmp_path / "reconciler" / "__init__.py").write_text("")
    (tmp_path / "reconciler" / "__main__.py").write_text("raise SystemExit('the wrong one')\n")
    started = time.monotonic()
    proc = subprocess.run(
        [RECONCILER, "demo"], capture_output=True, text=True, timeout=180, check=False,
        cwd=tmp_path,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert elapsed < 90

    first = section(out, "first sync")
    assert "start web.service" in first and "applied" in first
    status = section(out, "status")
    assert re.search(r"web\.service\s+matches\s+enabled\s+active/running", status)
    change = section(out, "push a change to one variable")
    sync_part = change[change.index("$ reconciler sync") :]
    assert re.findall(r"restart \S+", sync_part) == ["restart web.service"]
    files = section(out, "push a config-file and a drop-in change")
    assert "+hello again" in files and "+Nice=15" in files, files
    assert "reload greeter.service" in files[files.index("$ reconciler sync") :]
    crash = section(out, "push a crash-looping service")
    assert "failed its health gate" in crash and "rolled back to" in crash
    found = section(out, "the crash loop was found")
    assert re.search(r"flaky\.service crashed \d+ times", found)
    history = section(out, "history")
    assert "rolled-back" in history and history.count("applied") >= 3
    assert "host stopped and removed" in out
    assert "Traceback" not in proc.stderr


def test_demo_keep_leaves_a_live_host_and_stop_removes_everything(host: object) -> None:
    del host  # the demo boots its own host; this fixture only proves hosts can boot here
    proc = subprocess.run(
        [RECONCILER, "demo", "--keep"], capture_output=True, text=True, timeout=180, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = re.search(r"host (reconciler-host-\w+) kept \(systemd PID (\d+)\)", proc.stdout)
    assert found, proc.stdout[-2000:]
    name, pid = found[1], int(found[2])
    enter = re.search(r"enter it:\s+(nsenter .*)", proc.stdout)
    stop = re.search(r"stop it:\s+(\S+) demo --stop (\S+)", proc.stdout)
    assert enter and stop and stop[2] == name and Path(stop[1]).is_file()  # runs as printed
    work = Path(re.search(r"RECONCILER_CONFIG=(\S+)/config.toml", proc.stdout)[1])  # type: ignore[index]
    cgroups = [Path("/sys/fs/cgroup", h, name) for h in ("systemd", "unified")]
    try:
        # the demo's process is gone; its host is not: enter it with the printed line
        inside = subprocess.run(
            [*enter[1].split()[:-1], "systemctl", "is-system-running"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert inside.stdout.strip() in ("running", "degraded"), inside
        assert Path(f"/proc/{pid}").exists() and work.is_dir()
        assert all(c.is_dir() for c in cgroups)
        assert stat.S_IMODE((work / "config.toml").stat().st_mode) == 0o600
        # a user's trial: the demo's bundles held this machine's (empty) journal, not the host's
        bundles = sorted(work.rglob("*crash_loop*.tar.gz"))
        assert bundles, sorted(str(p) for p in work.rglob("*"))[:50]
        with tarfile.open(bundles[0]) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("journal.json"))
            journal = tar.extractfile(member).read()  # type: ignore[union-attr]
        assert b"flaky" in journal, journal[:500]
        # the printed CLI line reaches the host's journal: an event of it is found by MESSAGE_ID
        cli = re.search(r"the CLI on it:\s+(.*) status$", proc.stdout, re.MULTILINE)
        assert cli and "RECONCILER_JOURNAL_SOCKET=" in cli[1], proc.stdout[-2000:]
        outside = subprocess.run(
            ["sh", "-c", f"{cli[1]} suspend --reason from-outside"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert outside.returncode == 0, outside.stderr
        match = f"MESSAGE_ID={message_id('sync.suspended')}"
        in_journal = subprocess.run(
            [*enter[1].split()[:-1], "sh", "-c", f"journalctl --sync; journalctl -o cat {match}"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert "from-outside" in in_journal.stdout, in_journal
    finally:
        stopped = subprocess.run(  # the printed line, as printed
            [stop[1], "demo", "--stop", name], capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip
    assert stopped.returncode == 0, stopped.stderr
    assert not Path(f"/proc/{pid}").exists()
    assert not work.exists() and not Path("/tmp", name).exists()
    assert not any(c.exists() for c in cgroups)
    again = subprocess.run(
        [RECONCILER, "demo", "--stop", name], capture_output=True, text=True, check=False
    )
    assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1, again.stderr
