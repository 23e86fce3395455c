"""Unit files read by one directory descriptor (systemd/unit_files.read_unit_texts): the same
answers a path-by-path read gave, for every kind of entry a unit directory can hold."""

from __future__ import annotations

import os
from pathlib import Path

from reconciler.systemd.unit_files import read_unit_texts


def test_every_kind_of_entry_reads_as_before(tmp_path: Path) -> None:
    (tmp_path / "a.service").write_text("[Service]\nExecStart=/bin/true ü\n")
    (tmp_path / "big.service").write_text("x" * 200_000)
    (tmp_path / "bin.service").write_bytes(b"\xff\xfe")
    (tmp_path / "dir.service").mkdir()
    (tmp_path / "a.service.d").mkdir()
    (tmp_path / "a.service.d" / "10-x.conf").write_text("[Unit]\n")
    (tmp_path / "file.service.d").write_text("")
    (tmp_path / "masked.service").symlink_to("/dev/null")
    (tmp_path / "alias.service").symlink_to(tmp_path / "a.service")
    (tmp_path / "dangling.service").symlink_to(tmp_path / "gone.service")
    names = [
        "a.service", "big.service", "bin.service", "dir.service", "a.service.d/10-x.conf",
        "file.service.d/10-x.conf", "masked.service", "alias.service", "dangling.service",
        "absent.service",
    ]  # fmt: skip
    texts, changed = read_unit_texts(tmp_path, names)
    assert texts == {
        "a.service": "[Service]\nExecStart=/bin/true ü\n",
        "big.service": "x" * 200_000,
        "bin.service": "",
        "dir.service": "",
        "a.service.d/10-x.conf": "[Unit]\n",
        "file.service.d/10-x.conf": "",
        "masked.service": "",
        "alias.service": "[Service]\nExecStart=/bin/true ü\n",
        "dangling.service": None,
        "absent.service": None,
    }
    for name in ("a.service", "big.service", "a.service.d/10-x.conf", "alias.service"):
        st = os.stat(tmp_path / name)
        assert changed[name] == max(st.st_mtime, st.st_ctime)
    assert "dir.service" not in changed and "absent.service" not in changed


def test_a_missing_directory_has_no_files(tmp_path: Path) -> None:
    assert read_unit_texts(tmp_path / "none", ["a.service"]) == ({"a.service": None}, {})
