"""The one config reader: every section strict, the file and the key path named, exit 2."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from reconciler import config
from reconciler.core.patterns import Thresholds
from reconciler.errors import UsageError
from reconciler.monitor import diagnostics
from reconciler.monitor import load_config as monitor_config

REFUSED = [
    ("[notify]\nurll = 'https://x.example/'\n", "notify.urll: unknown key"),
    ("[notify]\nurl = 'https://x.example/'\n", "notify.secret_file: required with notify.url"),
    ("[notify]\nurl = 'ftp://x'\nsecret_file = '/s'\n", "notify.url: expected an http"),
    ("[notify]\nretries = -1\n", "notify.retries: expected 0 or more, got -1"),
    ("[diagnostics]\nmax_lines = 2.7\n", "diagnostics.max_lines: expected an integer, got 2.7"),
    ("[diagnostics]\nmax_line = 5\n", "diagnostics.max_line: unknown key"),
    ("[diagnostics]\nenabled = 1\n", "diagnostics.enabled: expected true or false, got 1"),
    ("[diagnostics]\nworkers = 0\n", "diagnostics.workers: expected 1 or more, got 0"),
    ("[diagnostics]\ndirectory = 'rel'\n", "diagnostics.directory: expected an absolute path"),
    ("[monitor]\nrestart_threshold = 0\n", "monitor.restart_threshold: expected 1 or more"),
    ("[monitor]\nrestart_treshold = 3\n", "monitor.restart_treshold: unknown key"),
    ("[monitor]\nclustering_share = 2.0\n", "monitor.clustering_share: expected at most 1"),
    ("[monitor]\nwatch_queue_size = 8\n", "monitor.watch_queue_size: expected 16 or more"),
    ("[monitor]\ntextfile = 'x.prom'\n", "monitor.textfile: expected an absolute path"),
    ("[metrics]\nkeep_raw = 'forever'\n", "metrics.keep_raw: expected a duration"),
    ("[backup]\nkeep_last = 2.5\n", "backup.keep_last: expected an integer, got 2.5"),
    ("[[backup.sources]]\nname = 'a'\npth = '/a'\n", "backup.sources[0].pth: unknown key"),
    ("[[backup.sources]]\npath = '/a'\n", "backup.sources[0].name: missing (required)"),
    ("[etl]\nurl = 'http://x/'\ntimeout = 3\n", "etl.timeout: unknown key"),
    ("[etl]\nurl = 'http://x/'\nretries = 1.5\n", "etl.retries: expected an integer, got 1.5"),
    ("[webhook]\nlisten = 'localhost'\n", "webhook.listen: 'localhost': expected HOST:PORT"),
    ("[webhook]\ndebounce_sec = 0\n", "webhook.debounce_sec: expected a number above 0"),
    ("[webhok]\nlisten = ':1'\n", "webhok: unknown key"),
    ("files_root = ['/etc/x']\n", "files_root: unknown key (did you mean 'files_roots'? known:"),
    ("lock_timeout_sec = '60'\n", "lock_timeout_sec: expected a number above 0, got '60'"),
    ("max_units = 2.5\n", "max_units: expected a whole number above 0, got 2.5"),
    ("max_units = 0\n", "max_units: expected a whole number above 0, got 0"),
    ("allow_empty = 'yes'\n", "allow_empty: expected true or false"),
]


@pytest.mark.parametrize(("text", "message"), REFUSED, ids=[m for _, m in REFUSED])
def test_refused_naming_the_file_read_and_the_key(
    tmp_path: Path, text: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("RECONCILER_CONFIG", "RECONCILER_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "elsewhere.toml"
    path.write_text(text)
    with pytest.raises(UsageError) as info:
        config.load(path)
    assert str(info.value).startswith(f"cannot read config '{path}': ")
    assert message in str(info.value)
    assert "/etc/reconciler" not in str(info.value)
    assert info.value.exit_code == 2


def test_defaults_and_meaning_kept(tmp_path: Path) -> None:
    settings = config.Settings(state_dir=tmp_path)
    assert monitor_config(settings).thresholds == Thresholds()
    assert monitor_config(settings).textfile == tmp_path / "reconciler.prom"
    diag = diagnostics.load_config(settings)
    assert (diag.max_total_bytes, diag.max_age_sec) == (256 << 20, 14 * 86400.0)
    assert diag.directory == tmp_path / "diagnostics"
    assert settings.webhook.listen == "127.0.0.1:9420"
    off = config.Settings(sections={"monitor": {"textfile": "", "restart_threshold": 5}})
    assert monitor_config(off).textfile is None
    assert monitor_config(off).thresholds.restart_threshold == 5


def test_monitor_section_declares_every_threshold() -> None:
    section = set(config.keys(config.Monitor))
    assert {f.name for f in fields(Thresholds)} <= section


def test_values_are_typed() -> None:
    raw = {"window_sec": 5, "journal_command": "journalctl --no-pager", "max_total_mb": 1}
    got = config.read_section(config.Diagnostics, raw, "diagnostics")
    assert got.window_sec == 5.0 and isinstance(got.window_sec, float)
    assert got.journal_command == ("journalctl", "--no-pager")
    assert diagnostics.load_config(config.Settings(sections={"diagnostics": raw})).max_total_bytes
    webhook = config.read_section(config.Webhook, {"max_body_bytes": 4096.0}, "webhook")
    assert webhook.max_body_bytes == 4096 and isinstance(webhook.max_body_bytes, int)


def test_cli_names_the_config_flag_path_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "host.toml"
    path.write_text("[notify]\nurll = 'https://alerts.example/'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "reconciler", "job", "metrics", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"cannot read config '{path}': notify.urll: unknown key" in lines[0]
    assert f"fix notify.urll in {path}" in lines[0]


README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def readme_section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_readme_host_configuration_names_every_key() -> None:
    text = readme_section("Host configuration")
    top = {f.name for f in fields(config.Settings)} - {"sections", "path"}
    missing = sorted(k for k in top if f"`{k}`" not in text)
    for name, schema in config.SECTIONS.items():
        assert f"`[{name}]`" in text, name
        missing += [f"{name}.{k}" for k in config.keys(schema) if f"`{k}`" not in text]
    missing += [f"backup.sources.{k}" for k in config.keys(config.BackupSource) if k not in text]
    assert missing == []


def test_readme_push_webhook_is_what_the_webhook_does() -> None:
    from reconciler.core import push_policy

    text = readme_section("Push webhook").lower()
    assert f"`post {push_policy.PUSH_PATH}`" in text and push_policy.HEALTH_PATH in text
    headers = (
        *push_policy.SIGNATURE_HEADERS,
        *push_policy.DELIVERY_HEADERS,
        *push_policy.EVENT_HEADERS,
        "x-gitlab-token",
        "authorization: bearer",
    )
    assert [h for h in headers if h not in text] == []
    assert f"**`{config.Webhook().listen}`**" in text
    socket_unit = (
        Path(__file__).resolve().parents[2] / "units/reconciler-webhook.socket"
    ).read_text()
    assert f"ListenStream={config.Webhook().listen}" in socket_unit
