"""``reconciler job backup``: archive each configured source (talks to the filesystem and docker).

Per source: resolve it (a directory, or a Docker volume's mountpoint through the docker
CLI), remove what a crashed run left, write a new archive, then apply retention. One
source failing does not stop the others; the job still exits non-zero so the unit fails.
One structured journal entry per run carries the counts, sizes and duration.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from reconciler.config import Settings
from reconciler.core import backup_policy as policy
from reconciler.errors import JobError
from reconciler.host import journal, lock
from reconciler.jobs.backup import archive

DOCKER_TIMEOUT_SEC = 30
PROGRESS_MIN_BYTES = 8 << 20  # below this a backup is over before a progress line helps


def resolve_volume(volume: str) -> Path:
    """A Docker volume's mountpoint, asked of the docker CLI; JobError with the reason."""
    what = f"cannot resolve docker volume '{volume}'"
    docker = shutil.which("docker")
    if docker is None:
        raise JobError(
            f"{what}: the docker CLI is not installed (not on PATH)",
            "install docker, or back up the directory as a path source",
        )
    argv = [docker, "volume", "inspect", "--format", "{{.Mountpoint}}", volume]
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=DOCKER_TIMEOUT_SEC, check=False
        )
    except subprocess.TimeoutExpired:
        raise JobError(f"{what}: docker did not answer within {DOCKER_TIMEOUT_SEC}s") from None
    except OSError as exc:
        raise JobError(f"{what}: cannot run docker: {exc.strerror}") from None
    if proc.returncode != 0:
        detail = next((line for line in proc.stderr.splitlines() if line.strip()), "")
        lowered = detail.lower()
        if "no such volume" in lowered:
            raise JobError(f"{what}: no such volume", "see `docker volume ls`")
        if "cannot connect to the docker daemon" in lowered or "docker.sock" in lowered:
            raise JobError(
                f"{what}: the Docker engine is not running ({detail.strip()})",
                "start docker.service, or remove the source from [backup]",
            )
        raise JobError(f"{what}: docker exited with {proc.returncode}: {detail.strip()}")
    mountpoint = Path(proc.stdout.strip())
    if not proc.stdout.strip() or not mountpoint.is_dir():
        raise JobError(f"{what}: its mountpoint '{mountpoint}' is not a directory on this host")
    return mountpoint


def resolve(source: policy.Source) -> Path:
    if source.docker_volume is not None:
        return resolve_volume(source.docker_volume)
    assert source.path is not None
    if not source.path.is_dir():
        cause = "no such directory" if not source.path.exists() else "not a directory"
        raise JobError(f"cannot back up source '{source.name}' ('{source.path}'): {cause}")
    return source.path


class ProgressLine:
    """``backup data: 12.0/80.0 MiB (15%)`` rewritten in place on a terminal, 5 times a second."""

    def __init__(self, label: str, stream: IO[str]) -> None:
        self.label = label
        self.stream = stream
        self.last = 0.0
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if total < PROGRESS_MIN_BYTES or (now - self.last < 0.2 and done < total):
            return
        self.last = now
        percent = 100 * done // total
        self.stream.write(f"\r{self.label}: {mib(done)}/{mib(total)} MiB ({percent}%)\x1b[K")
        self.stream.flush()
        self.shown = True

    def finish(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


def mib(n: int) -> str:
    return f"{n / (1 << 20):.1f}"


@dataclass
class Outcome:
    """What the run did, summed over sources, for the journal entry."""

    archives: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    files: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    deleted: int = 0
    leftovers: int = 0
    skipped: int = 0


def back_up(
    source: policy.Source, config: policy.BackupConfig, outcome: Outcome, now: datetime
) -> str:
    """Archive one source and apply retention to its folder; a one-line summary."""
    root = resolve(source)
    folder = config.dest / source.name
    archive.ensure_dir(folder)
    outcome.leftovers += len(archive.remove_leftovers(folder))
    origin = {"docker_volume": source.docker_volume} if source.docker_volume else {}
    progress = ProgressLine(f"backup {source.name}", sys.stderr) if sys.stderr.isatty() else None
    try:
        written = archive.write_archive(
            source.name,
            root,
            config.dest,
            compression=config.compression,
            now=now,
            origin=origin,
            progress=progress,
        )
    finally:
        if progress:
            progress.finish()
    outcome.archives.append(str(written.path))
    outcome.files += written.files
    outcome.bytes_in += written.bytes_in
    outcome.bytes_out += written.bytes_out
    outcome.skipped += len(written.skipped)
    existing = archive.list_archives(config.dest, source.name)
    candidates = [policy.Candidate(a.name, a.created, a.size, a.complete, a.seq) for a in existing]
    doomed = policy.plan_retention(candidates, config.retention, now)
    for name, _reason in doomed:
        archive.delete_archive(folder / name)
    outcome.deleted += len(doomed)
    skipped = f", skipped {len(written.skipped)} special files" if written.skipped else ""
    return (
        f"backed up '{source.name}' to {written.path} ({written.files} files, "
        f"{mib(written.bytes_in)} MiB -> {mib(written.bytes_out)} MiB{skipped}); "
        f"retention deleted {len(doomed)}"
    )


def run_job(settings: Settings) -> int:
    started = time.monotonic()
    config = policy.from_section(settings.backup, settings.state_dir)
    if not config.sources:
        journal.event(
            "job.backup",
            "backup: no sources configured in [backup]; nothing to do",
            priority=5,
            echo=False,
        )
        return 0
    archive.ensure_dir(config.dest)
    outcome = Outcome()
    errors: list[JobError] = []
    now = datetime.now(UTC)
    with lock.hold(config.dest / ".lock", timeout=0, what="backup"):
        for source in config.sources:
            try:
                print(back_up(source, config, outcome, now), flush=True)
            except JobError as exc:
                errors.append(exc)
                outcome.failed.append(source.name)
            except OSError as exc:
                cause = f"{exc.strerror}: '{exc.filename}'" if exc.filename else str(exc)
                errors.append(JobError(f"cannot back up source '{source.name}': {cause}"))
                outcome.failed.append(source.name)
    duration_ms = round((time.monotonic() - started) * 1000)
    ok = len(config.sources) - len(errors)
    message = f"backup: {ok} of {len(config.sources)} sources backed up"
    fields: dict[str, Any] = {
        "sources": len(config.sources),
        "archives": len(outcome.archives),
        "failed_sources": ",".join(outcome.failed) or None,
        "error": str(errors[0]) if errors else None,
        "files": outcome.files,
        "bytes_in": outcome.bytes_in,
        "bytes_out": outcome.bytes_out,
        "deleted": outcome.deleted,
        "leftovers_removed": outcome.leftovers,
        "skipped_special": outcome.skipped,
        "duration_ms": duration_ms,
        "dest": str(config.dest),
    }
    journal.event("job.backup", message, priority=3 if errors else 6, echo=False, **fields)
    if errors:
        first = errors[0]
        more = (
            f" ({len(errors)} of {len(config.sources)} sources failed)" if ok or errors[1:] else ""
        )
        raise JobError(first.message + more, first.hint)
    return 0
