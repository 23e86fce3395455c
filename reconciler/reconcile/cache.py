"""The git cache on disk (talks to the file system and git): a bare repository under the
state dir, created whole, configured, locked while fetched, cleaned of what a killed fetch
left.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.errors import SourceError

if TYPE_CHECKING:
    import git

CACHE_CONFIG = (
    # Unreachable objects (history force-pushed away, never applied) go after two weeks;
    # what a rollback needs is kept by refs under KEEP_REF (``keep``), whatever the remote does.
    ("gc", "pruneExpire", "2.weeks.ago"),
    ("gc", "autoDetach", "false"),  # no gc outliving the oneshot
    ("transfer", "fsckObjects", "true"),  # malformed objects from the remote are refused
)


@contextmanager
def open_repo(cache_dir: Path) -> Iterator[git.Repo]:
    """The cache as a GitPython ``Repo``; its cat-file processes end with the block."""
    import git  # lazy (60-80 ms): see the module docstring

    try:
        repo = git.Repo(cache_dir)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise SourceError(f"cannot open git cache '{cache_dir}': not a git repository") from exc
    # Reads never reach the network: a blob the filter left out stays missing (git would
    # fetch it lazily, unbounded by fetch_timeout_sec); only _fetch allows a protocol.
    repo.git.update_environment(GIT_ALLOW_PROTOCOL="none")
    try:
        yield repo
    finally:
        repo.close()


def ensure(cache_dir: Path) -> None:
    """A bare repository under cache_dir (0700); built aside then renamed, so never half-made."""
    import git  # lazy (60-80 ms): see the module docstring

    if (cache_dir / "HEAD").is_file():
        configure(cache_dir)  # a cache made by an older version keeps its config up to date
        return
    if cache_dir.exists() and any(cache_dir.iterdir()):
        raise SourceError(
            f"cannot use git cache '{cache_dir}': not empty and not a git repository",
            hint="remove the directory; it is rebuilt on the next fetch",
        )
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir.with_name(f"{cache_dir.name}.tmp-{os.getpid()}")
    try:
        repo = git.Repo.init(tmp, bare=True, quiet=True)
        with repo.config_writer() as config:
            for section, key, value in CACHE_CONFIG:
                config.set_value(section, key, value)
        repo.close()
    except (git.GitCommandError, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        why = str(exc.stderr if isinstance(exc, git.GitCommandError) else exc.strerror).strip()
        raise SourceError(f"cannot create git cache '{cache_dir}': {why}") from None
    tmp.chmod(0o700)
    try:
        tmp.rename(cache_dir)  # replaces an empty directory too
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if (cache_dir / "HEAD").is_file():  # another fetch made it meanwhile
            return
        raise SourceError(f"cannot create git cache '{cache_dir}': {exc.strerror}") from None


def configure(cache_dir: Path) -> None:
    """Set ``CACHE_CONFIG`` where it differs (one read of the config file when nothing does)."""
    import git  # lazy (60-80 ms): see the module docstring

    repo = git.Repo(cache_dir)
    try:
        with repo.config_reader() as reader:
            stale = [(s, k, v) for s, k, v in CACHE_CONFIG if str(reader.get_value(s, k, "")) != v]
        if stale:
            with repo.config_writer() as writer:
                for section, key, value in stale:
                    writer.set_value(section, key, value)
    finally:
        repo.close()


@contextmanager
def lock(cache_dir: Path, deadline: float) -> Iterator[None]:
    """``flock`` on a file in the cache, so two fetches never race on the refs."""
    fd = os.open(cache_dir / "reconciler-fetch.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SourceError(
                        f"cannot lock git cache '{cache_dir}': another fetch runs"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def size(cache_dir: Path) -> int:
    return sum(p.stat().st_size for p in (cache_dir / "objects").rglob("*") if p.is_file())


def clean(cache_dir: Path) -> None:
    """Remove what a killed fetch left (a ``tmp_pack`` can be as large as the largest blob).

    Called under the cache lock: no other fetch of ours is writing these.
    """
    objects = cache_dir / "objects"
    for leftover in [
        *objects.glob("pack/tmp_*"),
        *objects.glob("tmp_objdir-*"),
        *objects.glob("incoming-*"),
    ]:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
