"""Checking and restoring backup archives (talks to the filesystem).

``verify`` checks the archive's and the manifest's sha256 (the ``.sha256`` file), then
reads every member and compares it with the manifest: the same paths, types, modes,
owners, mtimes, sizes, link targets and content digests. A member that could land
outside the restore target (an absolute path, ``..``, a path through a symlink) or that
is not a plain file, directory or symlink makes the archive unsafe whatever its digests
say: digests prove integrity, not who wrote the archive. ``restore`` verifies first, then
writes each object to a temp name and renames it into place, hashing the content again
on the way (the archive could change between the two passes).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from reconciler.errors import JobError
from reconciler.jobs.backup.archive import CHUNK, DIGEST, MANIFEST, READ_ERRORS, TMP

MAX_PROBLEMS = 20


@dataclass
class Report:
    archive: Path
    problems: list[str] = field(default_factory=list)
    members: int = 0
    bytes: int = 0
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, problem: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)
        elif len(self.problems) == MAX_PROBLEMS:
            self.problems.append("... more problems not shown")

    def as_dict(self) -> dict[str, Any]:
        return {
            "archive": str(self.archive),
            "ok": self.ok,
            "problems": self.problems,
            "members": self.members,
            "bytes": self.bytes,
        }


def kind_of(info: tarfile.TarInfo) -> str:
    if info.isreg():
        return "file"
    if info.isdir():
        return "dir"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hard link"
    if info.ischr() or info.isblk():
        return "device file"
    return "fifo" if info.isfifo() else "special file"


def unsafe(name: str, kind: str, symlinks: set[str]) -> str | None:
    """Why a member must never be restored, or None (pure)."""
    if kind not in ("file", "dir", "symlink"):
        return f"{kind} members are never restored"
    if name.startswith("/"):
        return "absolute path"
    parts = name.split("/")
    if ".." in parts:
        return "path with '..'"
    if name != "." and ("." in parts or "" in parts):
        return "path is not normalised"
    for depth in range(1, len(parts)):
        parent = "/".join(parts[:depth])
        if parent in symlinks:
            return f"path goes through symlink '{parent}'"
    return None


def parse_mtime_ns(info: tarfile.TarInfo) -> int:
    """A member's mtime in ns, exact when the pax header holds it as written by archive."""
    text = info.pax_headers.get("mtime")
    if text:
        sign = -1 if text.startswith("-") else 1
        whole, _, frac = text.lstrip("-").partition(".")
        if whole.isdigit() and (not frac or frac.isdigit()):
            return sign * (int(whole) * 10**9 + int((frac + "0" * 9)[:9] or 0))
    return int(info.mtime) * 10**9


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_digests(path: Path) -> dict[str, str]:
    """``file name -> sha256`` from a ``sha256sum``-format file."""
    digests = {}
    for line in path.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) == 64 and name:
            digests[name] = digest
    return digests


def verify(archive: Path) -> Report:
    """Check an archive against its digest file and manifest; problems are listed, not raised."""
    report = Report(archive)
    manifest_path = archive.with_name(archive.name + MANIFEST)
    try:
        digests = read_digests(archive.with_name(archive.name + DIGEST))
        manifest_bytes = manifest_path.read_bytes()
        archive_digest = file_sha256(archive)
    except OSError as exc:
        report.add(f"cannot read {exc.filename}: {exc.strerror}")
        return report
    if hashlib.sha256(manifest_bytes).hexdigest() != digests.get(manifest_path.name):
        report.add("manifest digest mismatch: the manifest changed since the backup")
    if archive_digest != digests.get(archive.name):
        report.add("archive digest mismatch: the archive changed or is damaged")
    try:
        report.manifest = json.loads(manifest_bytes)
        expected = {m["path"]: m for m in report.manifest["members"]}
    except (ValueError, KeyError, TypeError) as exc:
        report.add(f"manifest is not valid: {exc}")
        return report
    seen: set[str] = set()
    symlinks: set[str] = set()
    try:
        with tarfile.open(archive, "r:*") as tar:
            for info in tar:
                _check_member(tar, info, expected, seen, symlinks, report)
    except READ_ERRORS as exc:
        report.add(f"cannot read archive: {exc}")
    for name in sorted(expected.keys() - seen):
        report.add(f"member '{name}' is in the manifest but not in the archive")
    return report


def _check_member(
    tar: tarfile.TarFile,
    info: tarfile.TarInfo,
    expected: dict[str, dict[str, Any]],
    seen: set[str],
    symlinks: set[str],
    report: Report,
) -> None:
    name, kind = info.name, kind_of(info)
    reason = unsafe(name, kind, symlinks)
    if reason:
        report.add(f"unsafe member '{name}': {reason}")
        return
    if name in seen:
        report.add(f"member '{name}' appears twice")
    seen.add(name)
    if kind == "symlink":
        symlinks.add(name)
    want = expected.get(name)
    if want is None:
        report.add(f"member '{name}' is not in the manifest")
        return
    got: dict[str, Any] = {
        "path": name,
        "type": kind,
        "mode": info.mode,
        "uid": info.uid,
        "gid": info.gid,
        "mtime_ns": parse_mtime_ns(info),
    }
    if kind == "file":
        digest = hashlib.sha256()
        fh = tar.extractfile(info)
        assert fh is not None  # a regular file always has content
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
        got.update(size=info.size, sha256=digest.hexdigest())
        report.bytes += info.size
    elif kind == "symlink":
        got["target"] = info.linkname
    differs = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
    if differs:
        report.add(f"member '{name}' differs from the manifest: {', '.join(differs)}")
    report.members += 1


def restore(archive: Path, target: Path, *, force: bool = False) -> Report:
    """Restore ``archive`` into ``target`` byte for byte, with modes, owners (as root), mtimes.

    Refuses a damaged or unsafe archive, and a non-empty ``target`` unless ``force``.
    """
    report = verify(archive)
    if not report.ok:
        more = f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        raise JobError(
            f"cannot restore archive '{archive.name}': {report.problems[0]}{more}",
            "run `reconciler backup verify` and restore another archive",
        )
    _check_target(target, force)
    members = {m["path"]: m for m in report.manifest["members"]}
    as_root = os.geteuid() == 0
    dirs: list[tuple[Path, dict[str, Any]]] = []
    with tarfile.open(archive, "r:*") as tar:
        for info in tar:
            member = members[info.name]
            path = target if info.name == "." else target / info.name
            _check_parents(target, path)
            if info.isdir():
                _make_dir(path)
                dirs.append((path, member))
            elif info.issym():
                _place_symlink(path, info.linkname, member, as_root)
            else:
                content = tar.extractfile(info)
                assert content is not None
                _place_file(content, path, member, as_root)
    for path, member in reversed(dirs):  # children first: a 0500 dir must stay writable
        if as_root:
            os.chown(path, member["uid"], member["gid"], follow_symlinks=False)
        os.chmod(path, member["mode"])
        os.utime(path, ns=(member["mtime_ns"], member["mtime_ns"]), follow_symlinks=False)
    return report


def _check_target(target: Path, force: bool) -> None:
    if not target.exists():
        target.mkdir(parents=True, mode=0o700)
        return
    if not target.is_dir():
        raise JobError(f"cannot restore into '{target}': not a directory")
    if not force and any(target.iterdir()):
        raise JobError(
            f"cannot restore into '{target}': it is not empty",
            "pass --force to overwrite what is there, or --to an empty directory",
        )


def _check_parents(target: Path, path: Path) -> None:
    """Every folder between ``target`` and ``path`` must be a real directory (no symlink)."""
    current = target
    for part in path.relative_to(target).parts[:-1]:
        current = current / part
        if not stat.S_ISDIR(os.lstat(current).st_mode):
            raise JobError(f"cannot restore '{path}': '{current}' is not a directory")


def _in_the_way(path: Path) -> None:
    """Make room for a new object at ``path``: a directory there is refused, never deleted."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise JobError(f"cannot restore '{path}': a directory is in the way")


def _make_dir(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        path.mkdir(mode=0o700)
        return
    if not stat.S_ISDIR(st.st_mode):
        path.unlink()
        path.mkdir(mode=0o700)
    elif not os.access(path, os.W_OK):
        path.chmod(stat.S_IMODE(st.st_mode) | stat.S_IWUSR | stat.S_IXUSR)


def _temp(path: Path) -> Path:
    temp = path.with_name(f".{path.name}.restore{TMP}")
    if os.path.lexists(temp):
        temp.unlink()
    return temp


def _place_file(content: IO[bytes], path: Path, member: dict[str, Any], as_root: bool) -> None:
    temp = _temp(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, 0o600)
    try:
        digest = hashlib.sha256()
        with open(fd, "wb", closefd=False) as out:
            while chunk := content.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != member.get("sha256"):
            raise JobError(f"cannot restore '{path}': content changed since it was verified")
        if as_root:
            os.fchown(fd, member["uid"], member["gid"])
        os.fchmod(fd, member["mode"])  # after chown, which clears set-id bits
        os.fsync(fd)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    os.utime(temp, ns=(member["mtime_ns"], member["mtime_ns"]))
    _in_the_way(path)
    os.replace(temp, path)


def _place_symlink(path: Path, target: str, member: dict[str, Any], as_root: bool) -> None:
    temp = _temp(path)
    os.symlink(target, temp)
    if as_root:
        os.lchown(temp, member["uid"], member["gid"])
    os.utime(temp, ns=(member["mtime_ns"], member["mtime_ns"]), follow_symlinks=False)
    _in_the_way(path)
    os.replace(temp, path)
