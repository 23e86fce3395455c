"""argparse's parser, with help sized without ``shutil`` (pure: reads the environment).

``argparse.HelpFormatter`` asks ``shutil.get_terminal_size`` for its width, and argparse
makes one at every ``add_argument`` (to check the metavar), so every command imported
``shutil``, which imports ``bz2``, ``lzma`` and ``zlib`` (three shared libraries): ~0.5 MB
resident, for good in ``reconciler watch``, for a help text it never prints. The width is
found the same way here (``COLUMNS``, else the terminal on stdout, else 80 columns).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

FALLBACK_COLUMNS = 80


def columns() -> int:
    """``shutil.get_terminal_size().columns``, without shutil."""
    try:
        wanted = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        wanted = 0
    if wanted > 0:
        return wanted
    try:
        size = os.get_terminal_size(sys.__stdout__.fileno())  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return FALLBACK_COLUMNS
    return size.columns or FALLBACK_COLUMNS


def formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.HelpFormatter(prog, width=columns() - 2)  # argparse's own margin


class Parser(argparse.ArgumentParser):
    """``ArgumentParser`` with :func:`formatter`; its subparsers are of this class too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", formatter)
        super().__init__(*args, **kwargs)
