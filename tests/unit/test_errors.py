"""Operator messages: credentials never leak from URLs, and redaction stays linear."""

from __future__ import annotations

import pytest

from reconciler.errors import ReconcilerError, SourceError, redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://user:s3cret@git.example/x.git", "https://***@git.example/x.git"),
        ("fetch ssh://git@host/x failed", "fetch ssh://***@host/x failed"),
        ("no url here", "no url here"),
        ("http://host/path@v1", "http://host/path@v1"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_redact_is_linear_on_hostile_input() -> None:
    redact("a" * 200_000)  # a quadratic pattern would take minutes here
    redact("a:" * 100_000 + "//")


def test_error_message_and_hint_are_redacted() -> None:
    exc = SourceError("cannot fetch 'https://u:tok@h/r.git': refused", "check https://u:tok@h")
    assert "tok" not in str(exc)
    assert str(exc) == "cannot fetch 'https://***@h/r.git': refused (hint: check https://***@h)"
    assert isinstance(exc, ReconcilerError)
