"""One holder at a time (talks to the kernel): an advisory flock on a lock file.

The sync (and ``install``) hold ``<run_dir>/sync.lock``; a backup holds one in its
destination.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from reconciler.errors import LockedError, StateError


@contextlib.contextmanager
def hold(path: Path, *, timeout: float, what: str = "sync") -> Iterator[None]:
    """Hold the lock, waiting at most ``timeout`` seconds for another holder to finish.

    The kernel drops a flock when its holder dies, even on ``kill -9``: no stale locks.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StateError(f"cannot open lock file '{path}': {exc.strerror}") from exc
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    raise LockedError(
                        f"cannot start {what}: another {what} is running{holder} "
                        f"(waited {timeout:g}s for lock '{path}')",
                        "it will finish on its own; check `reconciler status`",
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def busy(path: Path) -> bool:
    """Whether someone holds the lock now (it is taken and let go at once if free)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False  # never made: nobody ever held it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _read_holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""
