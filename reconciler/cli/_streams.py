"""The CLI's stdout and stderr under systemd: a line already logged natively is not repeated.

An installed unit's stdout and stderr go to the journal; a command's printed line that an
entry of the same process already holds (``automatic syncs suspended: ...``, a failed sync's
error) would show twice under ``journalctl -u``. Anywhere else (a terminal, a pipe, a test)
the streams are left as they are.
"""

from __future__ import annotations

import io
import sys
from typing import TextIO, cast

from reconciler.host import journal


class _Deduplicated(io.TextIOBase):
    """Passes whole lines through to ``inner`` unless the journal already has them."""

    def __init__(self, inner: TextIO) -> None:
        super().__init__()
        self.inner = inner
        self.pending = ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if not journal.logged_natively(line, self.inner):
                self.inner.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        if self.pending:
            self.inner.write(self.pending)
            self.pending = ""
        self.inner.flush()

    def fileno(self) -> int:
        return self.inner.fileno()

    def isatty(self) -> bool:
        return self.inner.isatty()


def deduplicate() -> None:
    """Wrap stdout and stderr when they are the journal's stream (cheap otherwise: one fstat)."""
    import os

    stream = os.environ.get("JOURNAL_STREAM")
    if not stream:
        return
    for name in ("stdout", "stderr"):
        current = cast(TextIO, getattr(sys, name))
        try:
            to_journal = journal.stderr_is_journal(stream, current.fileno())
        except (AttributeError, OSError, ValueError):
            continue
        if to_journal:
            setattr(sys, name, cast(TextIO, _Deduplicated(current)))
