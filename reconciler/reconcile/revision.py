"""One revision of the config repository's cache (talks to git through GitPython).

What a sync may read of a commit, and whether to trust it: only the files under
``inventory/`` and ``templates/`` (symlinks and submodules refused; a blob's size checked
before it is read: 1 MiB for a template, 16 MiB for an inventory file, as 10,000 services
take about 1.3 MB of TOML), the commit's author and subject, and, in signed mode, a good
signature by a key in ``gpg_home`` (``git verify-commit`` through GitPython's wrapper).
``fetch`` gets the commits; this module reads one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.errors import SourceError
from reconciler.model import CommitInfo, Snapshot

if TYPE_CHECKING:
    import git

READ_DIRS = ("inventory", "templates", "files")  # files/: [files."PATH"] source = ...
MAX_FILE_BYTES = 1024 * 1024  # a template (render caps a unit at 1 Mi characters too)
MAX_INVENTORY_BYTES = 16 * 1024 * 1024  # inventory/*.toml: large fleets, still bounded
_MODE_LINK, _MODE_SUBMODULE = 0o120000, 0o160000


@dataclass(frozen=True)
class Verification:
    """Commit-signature mode: the commit must carry a good signature by a key in gpg_home."""

    gpg_home: Path


def read_snapshot(
    repo: git.Repo,
    cache_dir: Path,
    commit: git.Commit,
    resolved: str,
    verify: Verification | None,
    deadline: float,
    rendered: Callable[[str], bool] | None = None,
) -> Snapshot:
    """The commit's files, or none when ``rendered`` says its units are already rendered
    (a no-op sync reads no blob); the signature is checked either way."""
    if verify is not None:
        verify_signature(repo, commit.hexsha, verify, deadline)
    skip = rendered is not None and rendered(commit.hexsha)
    return Snapshot(
        commit.hexsha,
        {} if skip else read_files(repo, commit),
        commit.summary.strip() if isinstance(commit.summary, str) else "",
        commit=info(commit),
        resolved=resolved,
    )


def info(commit: git.Commit) -> CommitInfo:
    author = commit.author
    summary = commit.summary if isinstance(commit.summary, str) else commit.summary.decode()
    return CommitInfo(
        commit.hexsha, f"{author.name} <{author.email}>", summary.strip(), commit.authored_date
    )


def read_files(repo: git.Repo, commit: git.Commit) -> dict[str, bytes]:
    """The blobs under READ_DIRS; sizes checked before a blob is read."""
    import git  # lazy (60-80 ms): see the module docstring
    from git.exc import BadName, BadObject

    revision = commit.hexsha
    try:
        todo: list[tuple[str, git.Tree]] = [("", commit.tree)]
        blobs: list[tuple[str, bytes]] = []
        while todo:
            prefix, tree = todo.pop()
            for item in tree:
                mode, binsha, name = item.mode, item.binsha, item.name
                if not prefix and name not in READ_DIRS:
                    continue
                path = prefix + name
                if isinstance(item, git.Tree):
                    todo.append((path + "/", item))
                elif mode == _MODE_LINK:
                    raise refused(revision, path, "a symlink (symlinks are never followed)")
                elif mode == _MODE_SUBMODULE:
                    raise refused(revision, path, "a submodule, not a file")
                else:
                    blobs.append((path, binsha))
        files: dict[str, bytes] = {}
        for path, binsha in blobs:
            try:
                info = repo.odb.info(binsha)
            except (BadObject, ValueError):  # left out by the blob filter: over every limit
                raise refused(
                    revision, path, f"larger than {MAX_INVENTORY_BYTES // 1024} KiB (not fetched)"
                ) from None
            limit = MAX_INVENTORY_BYTES if path.startswith("inventory/") else MAX_FILE_BYTES
            if info.type != b"blob":
                raise SourceError(f"cannot read '{path}' at revision '{revision[:12]}': not a blob")
            if info.size > limit:
                raise refused(revision, path, f"larger than {limit // 1024} KiB")
            files[path] = repo.odb.stream(binsha).read()
    except (BadObject, BadName, ValueError) as exc:
        raise SourceError(f"cannot read revision '{revision[:12]}': {exc}") from None
    return dict(sorted(files.items()))


def verify_signature(repo: git.Repo, revision: str, verify: Verification, deadline: float) -> None:
    """``git verify-commit`` against the keyring in gpg_home; anything but a good sig refuses."""
    short = revision[:12]
    hint = (
        f"sign commits with a key whose public key is imported into '{verify.gpg_home}' "
        f"(gpg --homedir {verify.gpg_home} --import KEY.asc)"
    )
    if not verify.gpg_home.is_dir():
        raise SourceError(f"cannot verify commit '{short}': no keyring '{verify.gpg_home}'", hint)
    left = max(deadline - time.monotonic(), 0.1)
    code, _, status = repo.git.verify_commit(
        "--raw",
        revision,
        with_extended_output=True,
        with_exceptions=False,
        kill_after_timeout=left,
        env={"GNUPGHOME": str(verify.gpg_home)},
    )
    if status.startswith("Timeout:"):
        raise SourceError(f"cannot verify commit '{short}': gpg did not answer in time")
    problem = signature_problem(code, status)
    if problem is None:
        return
    raise SourceError(f"cannot verify commit '{short}': {problem}", hint)


def signature_problem(code: int, status: str) -> str | None:
    """None for a good signature (``git verify-commit``/``verify-tag --raw``: exit 0 and a
    GOODSIG status line), else what is wrong with it; the promoter checks tags with it."""
    if code == 0 and "[GNUPG:] GOODSIG " in status:
        return None
    return _signature_problem(status)


def _signature_problem(status: str) -> str:
    words = {
        line.split()[1]: line.split()[2:]
        for line in status.splitlines()
        if line.startswith("[GNUPG:] ") and len(line.split()) > 1
    }
    if not words:
        return "unsigned"
    if "NO_PUBKEY" in words or "ERRSIG" in words:
        key = (words.get("NO_PUBKEY") or words.get("ERRSIG") or ["?"])[0]
        return f"signed by unknown key {key}"
    for word, what in (
        ("BADSIG", "bad signature"),
        ("EXPKEYSIG", "signed by an expired key"),
        ("REVKEYSIG", "signed by a revoked key"),
        ("EXPSIG", "signature expired"),
    ):
        if word in words:
            return f"{what} {words[word][0] if words[word] else ''}".strip()
    return "signature not accepted"


def refused(revision: str, path: str, why: str) -> SourceError:
    return SourceError(
        f"cannot read '{path}' at revision '{revision[:12]}': {why}",
        hint="commit a regular file under inventory/ or templates/ instead",
    )


def read_paths(repo: git.Repo, commit: git.Commit, paths: list[str]) -> dict[str, bytes]:
    """Only ``paths`` of a commit (those it has: regular files within the inventory limit)."""
    import git  # lazy (60-80 ms): see the module docstring
    from git.exc import BadName, BadObject

    files: dict[str, bytes] = {}
    for path in paths:
        try:
            item = commit.tree / path
        except KeyError:
            continue
        if not isinstance(item, git.Blob) or item.mode in (_MODE_LINK, _MODE_SUBMODULE):
            raise refused(commit.hexsha, path, "not a regular file")
        try:
            info = repo.odb.info(item.binsha)
        except (BadObject, BadName, ValueError):
            raise refused(commit.hexsha, path, "larger than the inventory limit") from None
        if info.size > MAX_INVENTORY_BYTES:
            raise refused(commit.hexsha, path, f"larger than {MAX_INVENTORY_BYTES // 1024} KiB")
        files[path] = repo.odb.stream(item.binsha).read()
    return files
