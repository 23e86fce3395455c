"""Resolving a ref or a commit id in the git cache, unambiguously (talks to git).

``refs/heads/x``, ``refs/tags/x`` and a full commit id mean exactly that; a short name may be
a branch, a tag or an abbreviated commit id, and is refused when it names more than one
(a branch pushed with the name of the pinned tag or commit must never win).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from reconciler.errors import SourceError

if TYPE_CHECKING:
    import git

HEX = re.compile(r"[0-9a-f]{4,40}")
FULL_SHA = re.compile(r"[0-9a-f]{40}")


def resolve(repo: git.Repo, ref: str) -> tuple[git.Commit, str] | None:
    """(commit, what ``ref`` resolved to), None when nothing matches.

    ``refs/...`` and a full commit id mean exactly that; a short name may be a branch, a tag
    or an abbreviated commit id, and is refused when more than one of them exists.
    """
    import git  # lazy (60-80 ms): see reconcile.fetch's docstring

    if FULL_SHA.fullmatch(ref):
        commit = commit_by_id(repo, ref)
        return (commit, f"commit {ref}") if commit is not None else None
    names = [ref] if ref.startswith("refs/") else [f"refs/heads/{ref}", f"refs/tags/{ref}"]
    matches: list[tuple[git.Commit, str]] = []
    for name in names:
        reference = git.Reference(repo, name, check_path=False)
        if reference.is_valid():
            matches.append((_peel(repo, ref, reference), name))
    if not ref.startswith("refs/") and HEX.fullmatch(ref):
        commit = commit_by_id(repo, ref)
        if commit is not None:
            matches.append((commit, f"commit {commit.hexsha}"))
    if len(matches) > 1:
        kinds = " and ".join(f"{_kind(what)} ({c.hexsha[:12]})" for c, what in matches)
        raise SourceError(
            f"cannot resolve ref '{ref}': ambiguous, it names {kinds}",
            hint=f"set ref to 'refs/heads/{ref}', 'refs/tags/{ref}' or a full commit id",
        )
    return matches[0] if matches else None


def _kind(what: str) -> str:
    if what.startswith("refs/heads/"):
        return "a branch"
    return "a tag" if what.startswith("refs/tags/") else "a commit"


def _peel(repo: git.Repo, ref: str, reference: git.Reference) -> git.Commit:
    import git  # lazy (60-80 ms): see reconcile.fetch's docstring
    from git.exc import BadName, BadObject

    try:
        obj = reference.object
        while isinstance(obj, git.TagObject):
            obj = obj.object
    except (ValueError, BadObject, BadName) as exc:
        raise SourceError(f"cannot resolve ref '{ref}': {exc}") from None
    if not isinstance(obj, git.Commit):
        raise SourceError(f"cannot resolve ref '{ref}': it points to a {obj.type}, not a commit")
    return obj


def commit_by_id(repo: git.Repo, revision: str) -> git.Commit | None:
    """The commit with this (possibly abbreviated) id, peeling a tag object; None if absent."""
    import git  # lazy (60-80 ms): see reconcile.fetch's docstring
    from git.exc import BadName, BadObject

    try:
        found: list[git.Commit] = []
        for hexsha in [revision] if len(revision) == 40 else _objects_named(repo, revision):
            obj: git.Object = git.Object.new_from_sha(repo, bytes.fromhex(hexsha))
            while isinstance(obj, git.TagObject):
                obj = obj.object
            if isinstance(obj, git.Commit):
                found.append(obj)
    except (BadObject, BadName, ValueError):
        return None
    if len(found) > 1:
        raise SourceError(
            f"cannot resolve ref '{revision}': ambiguous commit id",
            hint="give more digits of the commit id",
        )
    return found[0] if found else None


def _objects_named(repo: git.Repo, prefix: str) -> list[str]:
    """Every object id starting with ``prefix``, never a ref: ``cat-file`` and ``rev-parse``
    take a branch named like the prefix first (git's own ref confusion)."""
    import git  # lazy (60-80 ms): see reconcile.fetch's docstring

    try:
        out = repo.git.rev_parse(f"--disambiguate={prefix}")
    except git.GitCommandError:
        return []
    return [line for line in out.split() if FULL_SHA.fullmatch(line)]


def local_commit(repo: git.Repo, name: str) -> str | None:
    """The commit the cache's ref ``name`` points to (a tag peeled), None if it has none."""
    import git  # lazy (60-80 ms): see reconcile.fetch's docstring
    from git.exc import BadName, BadObject

    reference = git.Reference(repo, name, check_path=False)
    try:
        if not reference.is_valid():
            return None
        obj = reference.object
        while isinstance(obj, git.TagObject):
            obj = obj.object
    except (ValueError, BadObject, BadName):
        return None
    return str(obj.hexsha)
