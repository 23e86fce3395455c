"""Counts with their noun in the right number, for every line an operator reads."""

from __future__ import annotations


def count(n: int, noun: str) -> str:
    """``1 unit``, ``2 units``: a count with its noun in the right number (``finding``,
    ``unit``, ``commit``, ``action``, ``archive`` all take an ``s``)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
