"""Diagnostics retention and bundle writing (files in tmp_path; no journal needed)."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from reconciler.monitor import diagnostics

NOW = 2_000_000_000.0


def bundle(directory: Path, name: str, size: int, age_sec: float) -> Path:
    path = directory / f"{name}.tar.gz"
    path.write_bytes(b"x" * size)
    os.utime(path, (NOW - age_sec, NOW - age_sec))
    return path


def test_prune_by_age_then_size_keeps_newest(tmp_path: Path) -> None:
    old = bundle(tmp_path, "old", 10, 20 * 86400)
    a = bundle(tmp_path, "a", 400, 300)
    b = bundle(tmp_path, "b", 400, 200)
    c = bundle(tmp_path, "c", 400, 100)
    removed = diagnostics.prune(tmp_path, max_total_bytes=900, max_age_sec=14 * 86400, now=NOW)
    assert removed == [old, a]
    assert sorted(p.name for p in tmp_path.iterdir()) == [b.name, c.name]
    # the newest stays even alone over the limit
    assert diagnostics.prune(tmp_path, max_total_bytes=10, max_age_sec=14 * 86400, now=NOW) == [b]
    assert c.exists()


def test_collect_writes_one_bundle_with_notes(tmp_path: Path) -> None:
    unit_file = tmp_path / "web.service"
    unit_file.write_text("[Service]\nExecStart=/bin/true\n")
    config = diagnostics.DiagnosticsConfig(
        directory=tmp_path / "diag", journal_command=("/bin/echo", '{"MESSAGE":"hi"}')
    )
    incident = diagnostics.Incident(
        "crash_loop", "web.service", NOW, {"kind": "crash_loop"}, {"Id": b"\x01"}, unit_file
    )
    path = diagnostics.collect(config, incident)
    assert path.name == "20330518T033320Z-crash_loop-web.service.tar.gz"
    with tarfile.open(path) as tar:
        names = {m.name.split("/", 1)[1]: m for m in tar.getmembers()}
        assert set(names) == {
            "finding.json", "journal.json", "properties.json", "kernel.txt",
            "unit/web.service", "commands.txt",
        }  # fmt: skip
        notes = tar.extractfile(names["commands.txt"]).read().decode()  # type: ignore[union-attr]
        props = tar.extractfile(names["properties.json"]).read()  # type: ignore[union-attr]
    assert "exit 0" in notes and "-u web.service" in notes
    assert b'"Id": "01"' in props
    assert diagnostics.collect(config, incident).name.endswith("-1.tar.gz")  # never overwrites


def test_collector_bounds_the_backlog(tmp_path: Path) -> None:
    config = diagnostics.DiagnosticsConfig(
        directory=tmp_path,
        journal_command=("/bin/sh", "-c", "sleep 0.3", "sh"),
        workers=1,
        max_pending=2,
    )
    collector = diagnostics.Collector(config)
    incidents = [diagnostics.Incident("k", f"u{i}.service", NOW, {}) for i in range(5)]
    futures = [collector.submit(i) for i in incidents]
    assert sum(f is None for f in futures) == 3 and collector.dropped == 3
    written = collector.close()
    assert len(written) == 2 and all(p.exists() for p in written)


def test_defaults_without_a_diagnostics_section_are_mib_and_days(tmp_path: Path) -> None:
    from reconciler import config

    (tmp_path / "config.toml").write_text("[monitor]\n")
    settings = config.load(tmp_path / "config.toml", {"state_dir": tmp_path})
    loaded = diagnostics.load_config(settings)
    assert loaded.max_total_bytes == 256 << 20  # not 256 bytes
    assert loaded.max_age_sec == 14 * 86400.0  # not 14 seconds


def test_prune_never_removes_an_open_findings_bundle(tmp_path: Path) -> None:
    opened = bundle(tmp_path, "open-old", 400, 30 * 86400)  # past max age, over the size too
    resolved_new = bundle(tmp_path, "resolved-new", 400, 200)
    newest = bundle(tmp_path, "newest", 400, 100)
    removed = diagnostics.prune(
        tmp_path, max_total_bytes=500, max_age_sec=14 * 86400, now=NOW, keep=[opened]
    )
    assert removed == [resolved_new]  # the resolved one goes first, although younger
    assert opened.exists() and newest.exists()
