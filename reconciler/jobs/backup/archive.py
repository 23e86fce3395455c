"""Backup archives (talks to the filesystem): write atomically, list, clean up, delete.

Layout under ``dest``: ``<source>/<source>-<UTC stamp>.tar.gz`` plus two sidecars,
``<archive>.manifest.json`` (every member's type, size, mode, owner, mtime in ns and
sha256) and ``<archive>.sha256`` (``sha256sum -c`` format: the digests of the archive and
of the manifest). The ``.sha256`` file is renamed into place last: its presence is what
makes an archive complete, so a crash can only leave temp files or an incomplete set,
both removed by :func:`remove_leftovers`. Checking and restoring: ``backup.restore``.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
import stat
import tarfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from reconciler.errors import JobError

FORMAT = 1
CHUNK = 1 << 20
# compression name -> (tarfile mode suffix, file extension)
COMPRESSION = {
    "gzip": ("gz", ".tar.gz"),
    "bzip2": ("bz2", ".tar.bz2"),
    "xz": ("xz", ".tar.xz"),
    "none": ("", ".tar"),
}
_NAME = re.compile(
    r"^(?P<source>[A-Za-z0-9][A-Za-z0-9_.-]*)-(?P<stamp>\d{8}T\d{6}Z)(?:-(?P<seq>\d+))?"
    r"(?P<ext>\.tar(?:\.gz|\.bz2|\.xz)?)$"
)
STAMP = "%Y%m%dT%H%M%SZ"
MANIFEST = ".manifest.json"
DIGEST = ".sha256"
TMP = ".tmp"
# What reading a damaged archive can raise, whatever the compression.
READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError, ValueError)

Progress = Callable[[int], None]


# -- naming and listing -----------------------------------------------------------------------


@dataclass(frozen=True)
class Archive:
    source: str
    name: str
    path: Path
    created: datetime
    size: int
    complete: bool
    seq: int = 0  # archives made in the same second: 0 (first), then 2, 3, ...

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "name": self.name,
            "path": str(self.path),
            "created": self.created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "size": self.size,
            "complete": self.complete,
        }


def parse_name(name: str) -> tuple[str, datetime, int] | None:
    """``(source, created, sequence)`` from an archive file name, or None."""
    match = _NAME.match(name)
    if not match:
        return None
    created = datetime.strptime(match["stamp"], STAMP).replace(tzinfo=UTC)
    return match["source"], created, int(match["seq"] or 0)


def list_archives(dest: Path, source: str | None = None) -> list[Archive]:
    """Every archive under ``dest`` (optionally of one source), oldest first."""
    found: list[Archive] = []
    dirs = [dest / source] if source else sorted(p for p in _scandir(dest) if p.is_dir())
    for folder in dirs:
        for path in _scandir(folder):
            parsed = parse_name(path.name)
            if parsed is None or parsed[0] != folder.name or not path.is_file():
                continue
            complete = _sidecar(path, DIGEST).is_file() and _sidecar(path, MANIFEST).is_file()
            size = path.stat().st_size
            found.append(Archive(parsed[0], path.name, path, parsed[1], size, complete, parsed[2]))
    return sorted(found, key=lambda a: (a.created, a.seq, a.source))


def _scandir(path: Path) -> list[Path]:
    try:
        return sorted(path.iterdir())
    except FileNotFoundError:
        return []


def _sidecar(archive: Path, suffix: str) -> Path:
    return archive.with_name(archive.name + suffix)


def delete_archive(archive: Path) -> None:
    """Remove an archive, its digest file first (so a crash leaves it incomplete, not 'good')."""
    for path in (_sidecar(archive, DIGEST), _sidecar(archive, MANIFEST), archive):
        path.unlink(missing_ok=True)
    _fsync_dir(archive.parent)


def remove_leftovers(folder: Path) -> list[str]:
    """Delete temp files and incomplete archive sets in one source folder (call under lock)."""
    removed: list[str] = []
    names = {p.name for p in _scandir(folder)}
    for name in sorted(names):
        path = folder / name
        base = name
        for suffix in (DIGEST, MANIFEST):
            if name.endswith(suffix):
                base = name[: -len(suffix)]
        if name.startswith(".") and name.endswith(TMP):
            stale = True
        elif parse_name(base) is None:
            stale = False  # not ours: leave it alone
        else:
            stale = not {base, base + DIGEST, base + MANIFEST} <= names
        if stale and path.is_file():
            path.unlink()
            removed.append(name)
    if removed:
        _fsync_dir(folder)
    return removed


def ensure_dir(path: Path) -> None:
    """Create ``path`` (and parents) and make it 0700: backups hold other services' secrets."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if stat.S_IMODE(path.stat().st_mode) != 0o700:
        path.chmod(0o700)


# -- writing ----------------------------------------------------------------------------------


@dataclass
class Written:
    path: Path
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    skipped: list[str] = field(default_factory=list)  # sockets, fifos, devices
    bytes_in: int = 0
    bytes_out: int = 0


class _HashingWriter:
    """A write-only file object that hashes and counts what passes through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()
        self.count = 0

    def write(self, data: bytes) -> int:
        self.raw.write(data)
        self.digest.update(data)
        self.count += len(data)
        return len(data)

    def tell(self) -> int:
        return self.count

    def flush(self) -> None:
        self.raw.flush()


class _HashingReader:
    """Reads a member's content for tarfile while hashing it and reporting progress."""

    def __init__(self, raw: IO[bytes], progress: Progress | None) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()
        self.progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.digest.update(data)
        if self.progress:
            self.progress(len(data))
        return data


def scan(root: Path, exclude: Path | None = None) -> list[tuple[str, os.stat_result]]:
    """Every object under ``root`` (``"."`` first), parents before children, sorted."""
    entries = [(".", os.lstat(root))]
    skip = os.path.realpath(exclude) if exclude else None

    def walk(folder: Path, prefix: str) -> None:
        with os.scandir(folder) as it:
            children = sorted(it, key=lambda e: e.name)
        for child in children:
            if skip and child.is_dir(follow_symlinks=False) and os.path.realpath(child) == skip:
                continue
            rel = f"{prefix}{child.name}"
            st = child.stat(follow_symlinks=False)
            entries.append((rel, st))
            if stat.S_ISDIR(st.st_mode):
                walk(Path(child.path), rel + "/")

    walk(root, "")
    return entries


def format_mtime(ns: int) -> str:
    """Exact decimal seconds for a pax ``mtime`` header (tarfile's float loses nanoseconds)."""
    sign = "-" if ns < 0 else ""
    sec, frac = divmod(abs(ns), 10**9)
    return f"{sign}{sec}.{frac:09d}"


def _tarinfo(rel: str, st: os.stat_result, root: Path) -> tarfile.TarInfo:
    info = tarfile.TarInfo(rel)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.mtime = st.st_mtime_ns // 10**9
    info.pax_headers = {"mtime": format_mtime(st.st_mtime_ns)}
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(root / rel)
    else:
        info.type = tarfile.REGTYPE
        info.size = st.st_size
    return info


def unique_name(folder: Path, source: str, compression: str, now: datetime) -> str:
    """``<source>-<stamp><ext>``; ``-2``, ``-3``... after any archive made that same second.

    Never reuses a sequence number, even after retention deleted that archive, so names
    keep sorting in the order the archives were made.
    """
    ext = COMPRESSION[compression][1]
    stamp = now.astimezone(UTC).strftime(STAMP)
    taken = [0]
    for path in _scandir(folder):
        parsed = parse_name(path.name.removesuffix(DIGEST).removesuffix(MANIFEST))
        if parsed and parsed[0] == source and parsed[1].strftime(STAMP) == stamp:
            taken.append(max(parsed[2], 1))
    seq = max(taken) + 1
    return f"{source}-{stamp}{ext}" if seq == 1 else f"{source}-{stamp}-{seq}{ext}"


def write_archive(
    source: str,
    root: Path,
    dest: Path,
    *,
    compression: str,
    now: datetime,
    origin: dict[str, str],
    progress: Callable[[int, int], None] | None = None,
) -> Written:
    """Archive ``root`` as ``dest/<source>/<name>`` with its manifest and digest file.

    Everything is written to temp files in the same folder, fsynced and renamed; the
    digest file goes last. On any error the temp files are removed and nothing new is
    left behind.
    """
    folder = dest / source
    ensure_dir(folder)
    entries = scan(root, exclude=dest)
    total = sum(st.st_size for _, st in entries if stat.S_ISREG(st.st_mode))
    name = unique_name(folder, source, compression, now)
    final = folder / name
    temps = [folder / f".{name}{suffix}.{os.getpid()}{TMP}" for suffix in ("", MANIFEST, DIGEST)]
    result = Written(final)
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    try:
        members: list[dict[str, Any]] = []
        with _create(temps[0]) as raw:
            writer = _HashingWriter(raw)
            _write_tar(writer, compression, root, entries, members, result, advance)
            raw.flush()
            os.fsync(raw.fileno())
        result.bytes_out = writer.count
        manifest = {
            "format": FORMAT,
            "archive": name,
            "source": {"name": source, **origin, "path": str(root)},
            "created": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "compression": compression,
            "members": members,
        }
        manifest_bytes = json.dumps(manifest, indent=1, sort_keys=True).encode() + b"\n"
        _write_small(temps[1], manifest_bytes)
        digests = (
            f"{writer.digest.hexdigest()}  {name}\n"
            f"{hashlib.sha256(manifest_bytes).hexdigest()}  {name}{MANIFEST}\n"
        )
        _write_small(temps[2], digests.encode())
        targets = (final, _sidecar(final, MANIFEST), _sidecar(final, DIGEST))
        for temp, target in zip(temps, targets, strict=True):
            os.rename(temp, target)
        _fsync_dir(folder)
    except BaseException:
        for temp in temps:
            temp.unlink(missing_ok=True)
        raise
    return result


def _write_tar(
    writer: _HashingWriter,
    compression: str,
    root: Path,
    entries: Sequence[tuple[str, os.stat_result]],
    members: list[dict[str, Any]],
    result: Written,
    advance: Progress,
) -> None:
    suffix = COMPRESSION[compression][0]
    level: dict[str, int] = {"gz": {"compresslevel": 6}, "xz": {"preset": 6}}.get(suffix, {})
    mode = f"w:{suffix}" if suffix else "w"
    with tarfile.open(fileobj=writer, mode=mode, format=tarfile.PAX_FORMAT, **level) as tar:  # type: ignore[call-overload]
        for rel, st in entries:
            if not (
                stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)
            ):
                result.skipped.append(rel)
                continue
            info = _tarinfo(rel, st, root)
            member = {
                "path": rel,
                "type": {tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink"}.get(info.type, "file"),
                "mode": info.mode,
                "uid": info.uid,
                "gid": info.gid,
                "mtime_ns": st.st_mtime_ns,
            }
            if info.type == tarfile.REGTYPE:
                flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                with open(os.open(root / rel, flags), "rb") as fh:
                    reader = _HashingReader(fh, advance)
                    try:
                        tar.addfile(info, reader)
                    except OSError as exc:
                        if "unexpected end of data" not in str(exc):
                            raise
                        raise JobError(
                            f"cannot back up file '{root / rel}': it shrank while being read",
                            "run the backup again when the service is idle",
                        ) from None
                member.update(size=info.size, sha256=reader.digest.hexdigest())
                result.files += 1
                result.bytes_in += info.size
            else:
                tar.addfile(info)
                if info.type == tarfile.SYMTYPE:
                    member["target"] = info.linkname
                    result.symlinks += 1
                else:
                    result.dirs += 1
            members.append(member)


def _create(path: Path) -> IO[bytes]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    return open(fd, "wb")


def _write_small(path: Path, data: bytes) -> None:
    with _create(path) as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
