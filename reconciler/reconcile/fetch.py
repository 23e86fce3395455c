"""The config repository (talks to git through GitPython): fetch a ref into a cache, read a commit.

GitPython does the git work: ``Repo`` opens (``Repo.init`` creates) the bare cache,
``Remote.fetch`` fetches under ``kill_after_timeout`` (which kills git and every descendant,
e.g. ``git-remote-http`` or ``ssh``, so a hung remote cannot hang a oneshot), references and
commit, tree and blob objects are read through its object database (one persistent
``git cat-file --batch`` and ``--batch-check``; no working copy to be left half-updated),
``verify-commit`` and ``rev-list`` run through its command wrapper.

Hand-written here, because GitPython has no such thing:

* the read policy (``revision``): only ``inventory/`` and ``templates/``, sizes checked
  before a blob is read, symlinks and submodules refused; and the signature check;
* unambiguous ref resolution (``refs``): ``refs/heads/X``, ``refs/tags/X`` or a commit id,
  a short name that matches more than one of them refused (GitPython's ``rev_parse`` takes
  the first hit, as git does, so a branch named like a tag or a commit id would win);
* credentials (``credentials``): ``http(s)://user:secret@host/...`` never reaches a command
  line (every local user can read those in ``ps``); git gets the URL without them and asks
  a credential helper, which reads them from its environment (readable by its owner only);
* the poll (``remote``): one ref listing per sync (one request), a fetch only of the refs
  that moved (``follow``), shallow into an empty cache, and a refusing server told apart
  (``remote.BusyError``: the sync backs off);
* the cache on disk (``cache``): created whole, its flock, removing what a killed fetch
  left (``tmp_pack``); here, pinning applied revisions and rebuilding a cache past
  ``cache_max_mb``, and the mapping of ``GitCommandError`` to one ``SourceError`` line
  (git's stderr, redacted, boilerplate skipped).

The cache is a partial clone: blobs over the largest file a sync reads (16 MiB) are never
fetched, and reads run with no protocol allowed, so a missing blob is never fetched lazily
(outside ``fetch_timeout_sec``); it is refused like any file over its limit.

Cost: ``import git`` is 60-80 ms (bench/RESULTS.md), paid only when a function here runs
git: each imports it locally, so a command that only imports ``reconcile`` (the backup job
takes its lock) does not pay it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.config import Settings
from reconciler.errors import SourceError, UsageError
from reconciler.model import CommitInfo, Snapshot
from reconciler.reconcile import cache, credentials, refs, remote
from reconciler.reconcile.revision import MAX_FILE_BYTES as MAX_FILE_BYTES
from reconciler.reconcile.revision import MAX_INVENTORY_BYTES as MAX_INVENTORY_BYTES
from reconciler.reconcile.revision import Verification as Verification
from reconciler.reconcile.revision import info, read_snapshot

if TYPE_CHECKING:
    import git

MAX_LOG = 50  # commits listed between the applied and the new revision
KEEP_REF = "refs/reconciler/kept/"  # one ref per applied revision a rollback may need
# Characters git never allows in a ref name, plus a leading '-' (option injection).
_BAD_REF = re.compile(r"^-|[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{")
_ORIGIN = 'remote "origin"'
# A partial clone: blobs larger than any file a sync may read are never fetched (a 300 MB
# blob anywhere in the history would otherwise be fetched, and time out, on every sync).
_FILTER = f"blob:limit={MAX_INVENTORY_BYTES + 1}"
_PARTIAL_CLONE = (
    ("core", "repositoryformatversion", "1"),  # extensions are read from version 1 on
    ("extensions", "partialClone", "origin"),
    (_ORIGIN, "promisor", "true"),
    (_ORIGIN, "partialclonefilter", _FILTER),
)

# GitPython logs git's stderr as warnings; the errors raised here already carry it, and a
# one-shot command must print one line, not a logging record.
logging.getLogger("git").addHandler(logging.NullHandler())
logging.getLogger("git").propagate = False
log = logging.getLogger("reconciler")


def fetch(
    url: str,
    ref: str,
    cache_dir: Path,
    *,
    timeout: float = 60,
    verify: Verification | None = None,
    rendered: Callable[[str], bool] | None = None,
    advertised: Mapping[str, str] | None = None,
) -> Snapshot:
    """Fetch ``ref`` (branch, tag or commit id) from ``url`` and read that commit's files
    (none when ``rendered`` says its units are in the render cache).

    A poll costs the git server one ref advertisement of the names ``ref`` may mean
    (``remote.list_refs``; ``advertised``: one the caller already has), and a fetch only of
    the refs that moved, shallow (``--depth 1``) into an empty cache. A full commit id
    already in the cache is not fetched again (commit ids never change).
    """
    if not url or url.startswith("-") or "\n" in url:
        raise SourceError(f"cannot fetch repository '{_printable(url)}': not a repository URL")
    credentials.split_credentials(
        url
    )  # refuses a URL whose password git would put on a command line
    _check_ref(ref)
    deadline = time.monotonic() + timeout
    cache.ensure(cache_dir)
    full_sha = bool(refs.FULL_SHA.fullmatch(ref))
    with cache.open_repo(cache_dir) as repo:
        found = refs.resolve(repo, ref) if full_sha else None
        if found is None and not full_sha:
            names = [ref] if ref.startswith("refs/") else [f"refs/heads/{ref}", f"refs/tags/{ref}"]
            if advertised is None:
                left = max(deadline - time.monotonic(), 0.1)
                advertised = remote.list_refs(url, names, timeout=left)
            if follow(repo, url, cache_dir, remote.matching(advertised, names), names, deadline):
                found = refs.resolve(repo, ref)
        if found is None:  # an abbreviated commit id, or a name the remote lacks: mirror all
            with cache.lock(cache_dir, deadline):
                _fetch(repo, url, cache_dir, deadline)
            found = refs.resolve(repo, ref)
        if found is None and full_sha:
            with cache.lock(cache_dir, deadline):  # a commit no branch or tag points to
                _fetch(repo, url, cache_dir, deadline, refspecs=(ref,), quiet_fail=True)
            found = refs.resolve(repo, ref)
        if found is None:
            raise SourceError(
                f"cannot resolve ref '{ref}' in '{url}': no such branch, tag or commit",
                hint="check 'ref' in the config file or --ref",
            )
        commit, resolved = found
        return read_snapshot(repo, cache_dir, commit, resolved, verify, deadline, rendered)


def follow(
    repo: git.Repo,
    url: str,
    cache_dir: Path,
    wanted: Mapping[str, str],
    names: list[str],
    deadline: float,
) -> bool:
    """Make the cache's refs ``names`` what the remote advertised (``wanted``: name ->
    commit): fetch the ones that moved, delete the ones the remote no longer has. False
    when the remote has none of them (nothing changed in the cache)."""
    if not wanted:
        return False
    stale = sorted(n for n, sha in wanted.items() if refs.local_commit(repo, n) != sha)
    for name in names:
        if name not in wanted and refs.local_commit(repo, name) is not None:
            repo.git.update_ref("-d", name)
    if stale:
        empty = not any(True for _ in repo.references)
        with cache.lock(cache_dir, deadline):
            _fetch(
                repo,
                url,
                cache_dir,
                deadline,
                refspecs=tuple(f"+{n}:{n}" for n in stale),
                prune=False,
                depth=1 if empty else None,  # a first fetch needs no history
            )
    return True


def read_revision(
    cache_dir: Path,
    revision: str,
    *,
    verify: Verification | None = None,
    timeout: float = 60,
    rendered: Callable[[str], bool] | None = None,
) -> Snapshot:
    """The files of ``revision`` from the cache only: rollback works while the remote is down."""
    deadline = time.monotonic() + timeout
    if (cache_dir / "HEAD").is_file() and refs.HEX.fullmatch(revision):
        with cache.open_repo(cache_dir) as repo:
            commit = refs.commit_by_id(repo, revision)
            if commit is not None:
                return read_snapshot(repo, cache_dir, commit, "", verify, deadline, rendered)
    raise SourceError(
        f"cannot read revision '{_printable(revision[:12])}': not in the cache '{cache_dir}'",
        hint="only revisions fetched before can be read without the remote",
    )


def commits_between(cache_dir: Path, old: str, new: str, limit: int = MAX_LOG) -> list[CommitInfo]:
    """The commits in ``new`` and not in ``old``, newest first (``git rev-list old..new``).

    Empty when either is unknown to the cache: this is information, never a reason to fail.
    """
    import git  # lazy (60-80 ms): see the module docstring
    from git.exc import BadName, BadObject

    if not (refs.FULL_SHA.fullmatch(old) and refs.FULL_SHA.fullmatch(new)) or old == new:
        return []
    try:
        with cache.open_repo(cache_dir) as repo:
            return [info(c) for c in repo.iter_commits(f"{old}..{new}", max_count=limit)]
    except (git.GitCommandError, ValueError, BadName, BadObject, SourceError):
        return []


def is_ancestor(cache_dir: Path, old: str, new: str) -> bool | None:
    """Whether ``new`` descends from ``old`` (a fast-forward); None when the cache cannot say."""
    import git  # lazy (60-80 ms): see the module docstring
    from git.exc import BadName, BadObject

    try:
        with cache.open_repo(cache_dir) as repo:
            return repo.is_ancestor(repo.commit(old), repo.commit(new))
    except (git.GitCommandError, ValueError, BadName, BadObject, SourceError):
        return None


# --- steps -------------------------------------------------------------------------------


def _check_ref(ref: str) -> None:
    if not ref or _BAD_REF.search(ref) or ref.endswith((".", "/", ".lock")):
        raise SourceError(
            f"cannot resolve ref '{_printable(ref)}': not a valid branch, tag or commit name",
            hint="check 'ref' in the config file or --ref",
        )


def _fetch(
    repo: git.Repo,
    url: str,
    cache_dir: Path,
    deadline: float,
    *,
    refspecs: tuple[str, ...] = ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"),
    quiet_fail: bool = False,
    prune: bool | None = None,
    depth: int | None = None,
) -> None:
    """Mirror the remote's branches and tags (or ``refspecs``); '+' accepts force-pushed
    (rewritten) history. A refusal (429, 5xx, no connection) is a ``remote.BusyError``."""
    import git  # lazy (60-80 ms): see the module docstring

    plain, options, secrets = credentials.split_credentials(url)
    left = max(deadline - time.monotonic(), 0.1)
    repo.git.set_persistent_git_options(c=["protocol.ext.allow=never", *options])
    env = {
        **secrets,
        "GIT_TERMINAL_PROMPT": "0",  # fail instead of asking for a password
        "GIT_HTTP_LOW_SPEED_LIMIT": "1000",  # bytes/s: a stalled HTTP transfer gives up
        "GIT_HTTP_LOW_SPEED_TIME": str(max(1, int(left))),
    }
    progress = _stderr_progress()
    cache.clean(cache_dir)
    try:
        with repo.git.custom_environment(**env, GIT_ALLOW_PROTOCOL=None):
            partial = _smart(repo, plain, left)
            origin = _origin(repo, plain, partial=partial)
            origin.fetch(
                list(refspecs),
                progress=progress,
                verbose=False,
                kill_after_timeout=left,
                prune=len(refspecs) > 1 if prune is None else prune,
                no_recurse_submodules=True,
                filter=_FILTER if partial else None,
                depth=depth if partial else None,  # dumb HTTP cannot cut history
            )
    except git.GitCommandError as exc:
        if quiet_fail:
            return
        if "kill_after_timeout" in str(exc.stderr):
            raise remote.BusyError(
                f"cannot fetch repository '{url}': the remote did not answer in time",
                hint="check the remote and the network; nothing on the host was changed",
            ) from None
        busy = remote.busy_status(progress.lines)
        if busy is not None:
            raise remote.BusyError(
                f"cannot fetch repository '{url}': {remote.last_line(progress.lines)}",
                hint=remote.BUSY_HINT,
                status=busy or None,
            ) from None
        raise SourceError(
            f"cannot fetch repository '{url}': {remote.last_line(progress.lines)}",
            hint="check the URL, the credentials and that the remote is reachable; "
            "nothing on the host was changed",
        ) from None
    finally:
        repo.git.set_persistent_git_options()


def _stderr_progress() -> Any:
    """A ``RemoteProgress`` that keeps every line git wrote to stderr, in order (GitPython
    keeps only the fatal ones). Built on first use: ``git`` is imported lazily."""
    import git  # lazy (60-80 ms): see the module docstring

    class Stderr(git.RemoteProgress):
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[str] = []

        def new_message_handler(self) -> Callable[[str], None]:
            parse = super().new_message_handler()

            def handle(line: str) -> None:  # text: fetch runs git with universal_newlines
                self.lines.extend(line.replace("\r", "\n").splitlines())
                parse(line)

            return handle

    return Stderr()


def _origin(repo: git.Repo, url: str, *, partial: bool) -> git.Remote:
    """The cache's one remote, pointed at ``url``; a partial clone unless the remote is dumb
    HTTP (git's dumb walker loops on a promisor remote). Config written only when it changed.
    """
    import git  # lazy (60-80 ms): see the module docstring

    wanted = [(_ORIGIN, "url", url), *(_PARTIAL_CLONE if partial else ())]
    unwanted = [] if partial else [(s, k) for s, k, _ in _PARTIAL_CLONE[1:]]
    with repo.config_reader("repository") as reader:
        stale = [(s, k, v) for s, k, v in wanted if str(reader.get_value(s, k, "")) != v]
        present = [(s, k) for s, k in unwanted if reader.has_option(s, k)]
    if stale or present:
        with repo.config_writer() as writer:
            for section, key, value in stale:
                writer.set_value(section, key, value)
            for section, key in present:
                writer.remove_option(section, key)
    return git.Remote(repo, "origin")


def _smart(repo: git.Repo, url: str, left: float) -> bool:
    """Whether the remote speaks git's protocol (every transport but dumb HTTP does).

    For an http(s) URL, asked once (``ls-remote`` with a packet trace: smart HTTP talks in
    packets, dumb HTTP serves files) and remembered in the cache's config for that URL.
    """
    if not url.lower().startswith(("http://", "https://")):
        return True
    with repo.config_reader("repository") as reader:
        known = str(reader.get_value("reconciler", "transport", ""))
    if known in (f"smart {url}", f"dumb {url}"):
        return known.startswith("smart")
    answer: Any = repo.git.ls_remote(
        "--",
        url,
        "HEAD",
        with_extended_output=True,
        with_exceptions=False,
        kill_after_timeout=left,
        env={"GIT_TRACE_PACKET": "2"},
    )
    code, _, trace = answer
    if code != 0:
        return False  # the fetch says why; nothing remembered
    smart = "packet:" in trace
    with repo.config_writer() as writer:
        writer.set_value("reconciler", "transport", f"{'smart' if smart else 'dumb'} {url}")
    return smart


def keep(
    cache_dir: Path, revisions: list[str], *, max_bytes: int, url: str | None, timeout: float
) -> None:
    """Keep exactly ``revisions`` readable (refs under ``KEEP_REF``) and bound the cache.

    The cache is a partial clone, and git keeps every object of a promisor pack, reachable
    or not: history force-pushed away would stay forever. Past ``max_bytes`` the cache is
    rebuilt: the kept revisions' objects are copied over locally, the rest is fetched anew
    from the remote. Never fails a sync: a cache that cannot be trimmed is only logged.
    """
    import git  # lazy (60-80 ms): see the module docstring

    want = {r for r in revisions if refs.FULL_SHA.fullmatch(r)}
    deadline = time.monotonic() + timeout
    try:
        with cache.open_repo(cache_dir) as repo:
            have = {
                ref.path[len(KEEP_REF) :]
                for ref in repo.references
                if ref.path.startswith(KEEP_REF)
            }
            for rev in sorted(have - want):
                repo.git.update_ref("-d", KEEP_REF + rev)
            for rev in sorted(want - have):
                if refs.commit_by_id(repo, rev) is not None:
                    repo.git.update_ref(KEEP_REF + rev, rev)
        if url and cache.size(cache_dir) > max_bytes:
            with cache.lock(cache_dir, deadline):
                _rebuild(cache_dir, url, deadline)
            if (size := cache.size(cache_dir)) > max_bytes:
                log.warning(
                    "git cache '%s' holds %d MB after a rebuild, over cache_max_mb: the "
                    "repository's own history is that large",
                    cache_dir,
                    size >> 20,
                )
    except (git.GitCommandError, SourceError, OSError) as exc:
        log.warning("cannot trim git cache '%s': %s", cache_dir, exc)


def _rebuild(cache_dir: Path, url: str, deadline: float) -> None:
    """A new cache holding the kept revisions (copied locally) and the remote's refs."""
    new = cache_dir.with_name(f"{cache_dir.name}.rebuild-{os.getpid()}")
    trash = cache_dir.with_name(f"{cache_dir.name}.old-{os.getpid()}")
    shutil.rmtree(new, ignore_errors=True)
    try:
        cache.ensure(new)
        with tempfile.TemporaryFile() as pack, cache.open_repo(cache_dir) as old:
            kept = {r.path: r.commit.hexsha for r in old.references if r.path.startswith(KEEP_REF)}
            if kept:
                with tempfile.TemporaryFile() as revs:
                    revs.write("".join(f"{ref}\n" for ref in kept).encode())
                    revs.seek(0)
                    # a partial clone lacks the large blobs: they stay missing, as before
                    old.git.pack_objects(
                        "--revs", "--missing=allow-promisor", "--stdout",
                        istream=revs, output_stream=pack,
                    )  # fmt: skip
                pack.seek(0)
                if (cache_dir / "shallow").is_file():  # the history's cut of a shallow cache
                    shutil.copyfile(cache_dir / "shallow", new / "shallow")
                with cache.open_repo(new) as repo:
                    name = repo.git.index_pack("--stdin", istream=pack).split()[-1]
                    (new / "objects" / "pack" / f"pack-{name}.promisor").touch()
                    for ref, sha in kept.items():
                        repo.git.update_ref(ref, sha)
        with cache.open_repo(new) as repo:
            _fetch(repo, url, new, deadline)
        cache_dir.rename(trash)
        new.rename(cache_dir)
    finally:
        shutil.rmtree(new, ignore_errors=True)
        shutil.rmtree(trash, ignore_errors=True)


def _printable(text: str) -> str:
    """Control characters escaped, so a hostile value cannot break the one-line message."""
    return text.encode("unicode_escape").decode("ascii")


def _stderr_line(exc: git.GitCommandError) -> str:
    """git's message from a ``GitCommandError`` (wrapped by GitPython as ``"  stderr: '...'"``)."""
    text = exc.stderr if isinstance(exc.stderr, str) else str(exc.stderr or "")
    text = text.strip().removeprefix("stderr: ").strip()
    if text.startswith("'") and text.endswith("'"):
        text = text[1:-1]
    return remote.last_line(text.splitlines())


def snapshot(
    settings: Settings,
    revision: str | None = None,
    rendered: Callable[[str], bool] | None = None,
    *,
    advertised: Mapping[str, str] | None = None,
) -> Snapshot:
    """The sync's fetch step: the configured ref, or ``revision`` from the cache (rollback).

    ``rendered(revision)``: whether that revision's units are already rendered; its files
    are then not read (a no-op sync reads no blob)."""
    cache = settings.state_dir / "repo"
    verify = None
    if settings.verify_signatures:
        if settings.gpg_home is None:
            raise UsageError(
                "cannot verify commit signatures: gpg_home is not set",
                "set gpg_home in /etc/reconciler/config.toml to a keyring of trusted keys",
            )
        verify = Verification(settings.gpg_home)
    timeout = settings.fetch_timeout_sec
    if revision is not None:
        return read_revision(cache, revision, verify=verify, timeout=timeout, rendered=rendered)
    if not settings.repo:
        raise UsageError(
            "cannot sync: no config repository configured",
            "set repo in /etc/reconciler/config.toml, $RECONCILER_REPO or --repo",
        )
    return fetch(
        settings.repo,
        settings.ref,
        cache,
        timeout=timeout,
        verify=verify,
        rendered=rendered,
        advertised=advertised,
    )
