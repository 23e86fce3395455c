"""`reconciler demo` end to end: the best integration test there is; each step's outcome."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.host

RECONCILER = str(Path(sys.executable).parent / "reconciler")


def section(out: str, title: str) -> str:
    """The narration of one step: from its '==>' heading to the next."""
    start = out.index(f"==> {title}")
    end = out.find("\n==> ", start + 1)
    return out[start : end if end != -1 else None]


def test_demo_narrates_every_step(host: object) -> None:
    del host  # the demo boots its own host; this fixture only proves hosts can boot here
    started = time.monotonic()
    proc = subprocess.run(
        [RECONCILER, "demo"], capture_output=True, text=True, timeout=180, check=False
    )
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
    crash = section(out, "push a crash-looping service")
    assert "failed its health gate" in crash and "rolled back to" in crash
    found = section(out, "the crash loop was found")
    assert re.search(r"flaky\.service crashed \d+ times", found)
    history = section(out, "history")
    assert "rolled-back" in history and history.count("applied") >= 3
    assert "host stopped and removed" in out
    assert "Traceback" not in proc.stderr
