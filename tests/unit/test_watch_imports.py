"""The watch daemon's import set stays lean (issue 13: RSS < 25 MB at 1,000 units).

Every module a long-running process imports stays in its memory for good (~30-300 KB each:
jeepney was 23 modules for two lines of handshake). Cheap: one interpreter, no timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# What the daemon's code path imports when it starts (its command, the daemon, the pass).
DAEMON = (
    "reconciler.cli",
    "reconciler.cli.watch",
    "reconciler.monitor.watch.daemon",
    "reconciler.runtime",
)
# Never needed by the daemon, or only in a rare branch that imports it itself.
HEAVY = {
    "jeepney": "the D-Bus handshake is systemd/auth.py",
    "difflib": "plan diffs and key suggestions import it where used",
    "tarfile": "diagnostics bundles (a finding opening) import it",
    "concurrent": "diagnostics bundles' thread pool",
    "git": "only the sync fetches",
    "jinja2": "only the sync renders",
    "pydantic": "only the inventory",
    "requests": "only webhooks and jobs",
    "urllib3": "only webhooks and jobs",
    "sqlalchemy": "the metric store's PostgreSQL backend",
    "psycopg": "the metric store's PostgreSQL backend",
    "http": "the push server, webhooks",
    "email": "pulled in by http and urllib.request",
    "asyncio": "never",
    "multiprocessing": "never",
    "uuid": "alert webhooks only",
    "hashlib": "signatures and webhooks only",
    "tempfile": "the textfile is written through a name of its own (tempfile, shutil, random, "
    "bz2 and lzma were 1.3 MB)",
    "shutil": "see tempfile; argparse's help formatter imported it for the terminal's width "
    "(cli/_parser.py)",
    "bz2": "see shutil",
    "lzma": "see shutil",
}


def test_the_watch_daemon_imports_nothing_heavy() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for m in {DAEMON!r}: importlib.import_module(m)\n"
        "from reconciler import cli\n"  # the command line parsed as the unit's ExecStart is
        "commands = cli._commands()\n"
        "cli.build_parser(commands, only='watch').parse_args(['watch', '--include', 'a*'])\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded = {name.partition(".")[0] for name in json.loads(out)}
    assert {m: why for m, why in HEAVY.items() if m in loaded} == {}
    assert len(json.loads(out)) < 200  # 182 when written (was 189 with jeepney and difflib)


def test_a_host_without_managed_files_checks_them_without_pydantic(tmp_path: Path) -> None:
    """The monitor's config-file check on a host with no file manifest returns before the
    file reader's imports (the inventory's pydantic: ~0.15 s of a 10,000-unit pass)."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from reconciler.config import Settings\n"
        "from reconciler.monitor import config_file_drift\n"
        f"assert config_file_drift(Settings(state_dir=Path({str(tmp_path)!r}))) == {{}}\n"
        "print('pydantic' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_help_is_as_wide_as_shutil_would_make_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from reconciler.cli import _parser

    for columns in ("100", "0", "x", None):
        if columns is None:
            monkeypatch.delenv("COLUMNS", raising=False)
        else:
            monkeypatch.setenv("COLUMNS", columns)
        assert _parser.columns() == shutil.get_terminal_size().columns
