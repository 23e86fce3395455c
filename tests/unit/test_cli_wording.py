"""The CLI's words: a count and its noun agree (a user's trial read "1 commits")."""

from __future__ import annotations

import pytest

from reconciler.cli._options import count


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
