"""Diagnostics bundles for new findings (talks to journalctl, /dev/kmsg; writes tar.gz).

When the monitor opens a finding, what explains it is in the journal *now* and may be
rotated away by the time someone looks. So each new finding gets one compressed bundle
under ``<state_dir>/diagnostics/``, named ``<UTC time>-<kind>-<unit>.tar.gz``, holding:

- ``finding.json``: the finding (kind, unit, severity, evidence, impact);
- ``journal.json``: the unit's journal for the last ``window_sec`` (``journalctl -u UNIT
  --since @T -o json``), at most ``max_lines`` entries;
- ``properties.json``: every D-Bus property of the unit (read by the caller, which owns the
  systemd connection: that connection is not thread-safe);
- ``unit/<name>``: the unit file as on disk;
- ``kernel.txt``: the kernel log tail (``journalctl -k``; ``/dev/kmsg`` when the journal
  has none, as inside containers);
- ``commands.txt``: what ran, its exit status and stderr, so a bundle explains its own gaps.

Collection runs in a small thread pool (``workers``, default 2) with a bounded backlog
(``max_pending``), and a pass bundles at most ``max_per_pass`` of its new findings, the
most severe first: a burst of findings never forks a burst of journalctl processes, and
what does not fit is dropped and counted. Retention: bundles older than ``max_age_days``
go, then the oldest until the directory is under ``max_total_mb``; a bundle an open finding
names is never removed (the evidence of what is still wrong is the one wanted), so bundles
of resolved findings go first, whatever their age.

``journal_command`` says which journal to read: ``["journalctl"]`` on a real host. A
monitor running outside the host whose journal it reads (the tests, against the
disposable systemd) sets e.g. ``["journalctl", "--root=/proc/<pid>/root"]``, which reads
that host's ``/var/log/journal`` and ``/run/log/journal``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shlex
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.config import Settings

log = logging.getLogger("reconciler")
MAX_OUTPUT = 16 << 20  # bytes kept of one command's output
KMSG_READ = 16384  # /dev/kmsg returns one record per read; EINVAL if the buffer is too small
_UNSAFE = re.compile(r"[^A-Za-z0-9_.@:-]")


@dataclass(frozen=True)
class DiagnosticsConfig:
    directory: Path
    enabled: bool = True
    journal_command: tuple[str, ...] = ("journalctl",)
    window_sec: float = 600.0
    max_lines: int = 5000
    kernel_lines: int = 200
    workers: int = 2
    max_pending: int = 16
    max_per_pass: int = 10  # a pass opening more findings bundles the most severe ones
    max_total_bytes: int = 256 << 20
    max_age_sec: float = 14 * 86400.0
    command_timeout_sec: float = 30.0


def load_config(settings: Settings) -> DiagnosticsConfig:
    """``[diagnostics]`` (read and checked by ``config``) in bytes and seconds."""
    section = settings.diagnostics
    return DiagnosticsConfig(
        directory=section.directory or settings.state_dir / "diagnostics",
        enabled=section.enabled,
        journal_command=section.journal_command,
        window_sec=section.window_sec,
        max_lines=section.max_lines,
        kernel_lines=section.kernel_lines,
        workers=section.workers,
        max_pending=section.max_pending,
        max_per_pass=section.max_per_pass,
        max_total_bytes=int(section.max_total_mb * (1 << 20)),
        max_age_sec=section.max_age_days * 86400.0,
        command_timeout_sec=section.command_timeout_sec,
    )


@dataclass(frozen=True)
class Incident:
    """What a bundle is about; everything D-Bus was read by the caller beforehand."""

    kind: str
    unit: str
    at: float  # unix seconds the finding was opened
    finding: Mapping[str, Any]
    properties: Mapping[str, Any] = field(default_factory=dict)
    unit_file: Path | None = None  # where the unit file is, as seen by this process


def bundle_name(incident: Incident) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(incident.at))
    return f"{stamp}-{_UNSAFE.sub('_', incident.kind)}-{_UNSAFE.sub('_', incident.unit)}"


def _json_default(value: object) -> object:
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    return str(value)


def _run(argv: Sequence[str], timeout: float, notes: list[str]) -> bytes:
    """Run a command, keep at most MAX_OUTPUT bytes of stdout; failures go to ``notes``."""
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        notes.append(f"$ {shlex.join(argv)}\n  failed: {exc}")
        return b""
    err = proc.stderr.decode(errors="replace").strip()
    notes.append(
        f"$ {shlex.join(argv)}\n  exit {proc.returncode}, {len(proc.stdout)} bytes"
        + (f"\n  stderr: {err[-2000:]}" if err else "")
    )
    return proc.stdout[-MAX_OUTPUT:]


def read_kmsg_tail(lines: int, path: str = "/dev/kmsg") -> bytes:
    """The last ``lines`` kernel log records (best effort; b"" when unreadable)."""
    records: list[bytes] = []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        while True:
            try:
                rec = os.read(fd, KMSG_READ)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == 32:  # EPIPE: records were overwritten while reading; go on
                    continue
                break
            if not rec:
                break
            records.append(rec)
            if len(records) > lines * 4:
                del records[: len(records) - lines]
    finally:
        os.close(fd)
    return b"".join(records[-lines:])


def collect(config: DiagnosticsConfig, incident: Incident) -> Path:
    """Write one bundle (atomically: temp name, then rename); returns its path."""
    notes: list[str] = []
    since = int(incident.at - config.window_sec)
    base = [*config.journal_command, "--no-pager"]
    journal = _run(
        [
            *base,
            "-u",
            incident.unit,
            "--since",
            f"@{since}",
            "-o",
            "json",
            "-n",
            str(config.max_lines),
        ],
        config.command_timeout_sec,
        notes,
    )
    kernel = _run(
        [*base, "-k", "-n", str(config.kernel_lines), "-o", "short-iso"],
        config.command_timeout_sec,
        notes,
    )
    if not kernel.strip() or kernel.strip() == b"-- No entries --":
        kernel = read_kmsg_tail(config.kernel_lines)
        notes.append(f"kernel log: journal had none; /dev/kmsg gave {len(kernel)} bytes")
    members: dict[str, bytes] = {
        "finding.json": json.dumps(
            incident.finding, indent=2, sort_keys=True, default=_json_default
        ).encode(),
        "journal.json": journal,
        "properties.json": json.dumps(
            dict(incident.properties), indent=2, sort_keys=True, default=_json_default
        ).encode(),
        "kernel.txt": kernel,
    }
    if incident.unit_file is not None:
        try:
            members[f"unit/{incident.unit_file.name}"] = incident.unit_file.read_bytes()
        except OSError as exc:
            notes.append(f"unit file {incident.unit_file}: {exc.strerror}")
    else:
        notes.append("unit file: none known")
    members["commands.txt"] = ("\n".join(notes) + "\n").encode()
    return _write_bundle(config.directory, bundle_name(incident), members, incident.at)


def _write_bundle(directory: Path, stem: str, members: Mapping[str, bytes], at: float) -> Path:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = directory / f"{stem}.tar.gz"
    n = 1
    while target.exists():
        target = directory / f"{stem}-{n}.tar.gz"
        n += 1
    fd, tmp = tempfile.mkstemp(prefix=".bundle-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(f"{target.name.removesuffix('.tar.gz')}/{name}")
                info.size, info.mtime, info.mode = len(data), int(at), 0o600
                tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def prune(
    directory: Path,
    max_total_bytes: int,
    max_age_sec: float,
    now: float,
    keep: Collection[Path] = (),
) -> list[Path]:
    """Remove bundles past ``max_age_sec``, then the oldest until under ``max_total_bytes``.

    ``keep`` (the bundles open findings name) is never removed, even over the limits: the
    others (resolved findings', orphans) go first. The newest bundle is always kept too,
    even alone over the limit: it is the one wanted now.
    """
    kept = {Path(p).name for p in keep}
    try:
        bundles = sorted(
            ((p.stat().st_mtime, p.stat().st_size, p) for p in directory.glob("*.tar.gz")),
        )
    except OSError:
        return []
    removed: list[Path] = []
    total = sum(size for _, size, _ in bundles)
    for i, (mtime, size, path) in enumerate(bundles):
        if i == len(bundles) - 1:
            break
        if path.name in kept:
            continue
        if now - mtime > max_age_sec or total > max_total_bytes:
            path.unlink(missing_ok=True)
            removed.append(path)
            total -= size
    for stale in directory.glob(".bundle-*.tmp"):  # left by a killed collector
        if now - stale.stat().st_mtime > 3600:
            stale.unlink(missing_ok=True)
    return removed


class Collector:
    """Bundles collected in a bounded pool; ``close()`` waits for them and applies retention."""

    def __init__(self, config: DiagnosticsConfig) -> None:
        self.config = config
        self.dropped = 0
        self.written: list[Path] = []
        self._pending = 0
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future[Path | None]] = []

    def submit(self, incident: Incident) -> Future[Path | None] | None:
        """Queue a bundle; None (counted in ``dropped``) when disabled or the backlog is full."""
        if not self.config.enabled:
            return None
        with self._lock:
            if self._pending >= self.config.max_pending:
                self.dropped += 1
                log.warning(
                    "diagnostics backlog full: no bundle for %s on '%s'",
                    incident.kind,
                    incident.unit,
                )
                return None
            self._pending += 1
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.config.workers, "diagnostics")
        future = self._pool.submit(self._one, incident)
        self._futures.append(future)
        return future

    def _one(self, incident: Incident) -> Path | None:
        try:
            path = collect(self.config, incident)
            with self._lock:
                self.written.append(path)
            return path
        except Exception as exc:  # a bundle is best effort: never break the monitor
            log.warning("cannot write diagnostics bundle for '%s': %s", incident.unit, exc)
            return None
        finally:
            with self._lock:
                self._pending -= 1

    def close(self, *, now: float | None = None, keep: Collection[Path] = ()) -> list[Path]:
        """Wait for queued bundles, prune the directory (never ``keep``, the bundles of
        open findings, nor the ones just written); returns the bundles written."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._futures.clear()
        if self.config.directory.is_dir():
            prune(
                self.config.directory,
                self.config.max_total_bytes,
                self.config.max_age_sec,
                time.time() if now is None else now,
                [*keep, *self.written],
            )
        return list(self.written)
