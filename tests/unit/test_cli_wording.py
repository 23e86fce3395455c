"""The CLI's words: a count and its noun agree (a user's trial read "1 commits"); --json."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from reconciler.cli._options import count, print_json


@pytest.mark.parametrize(
    ("n", "noun", "text"),
    [
        (0, "unit", "0 units"),
        (1, "unit", "1 unit"),
        (2, "unit", "2 units"),
        (1, "commit", "1 commit"),
        (1, "finding", "1 finding"),
        (3, "action", "3 actions"),
        (1, "more host", "1 more host"),
    ],
)
def test_count_agrees_with_its_noun(n: int, noun: str, text: str) -> None:
    assert count(n, noun) == text


class _Out(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("tty", [True, False])
def test_json_is_indented_for_a_terminal_and_one_line_for_a_pipe(
    tty: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = {"units": [{"unit": "a.service", "memory": None}], "at": 1.5, "path": Path("/x")}
    out = _Out(tty)
    monkeypatch.setattr(sys, "stdout", out)
    print_json(data)
    text = out.getvalue()
    assert json.loads(text) == {**data, "path": "/x"}  # what is not JSON: its str()
    assert text.endswith("\n") and (text.count("\n") > 1) is tty
