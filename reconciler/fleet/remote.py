"""The config repository as the promoter sees it (talks to git: the ``git`` command).

One ``ls-remote`` reads every ref a step needs (the branches, so the source and the wave and
control refs, and the tags, for approvals); a fetch into a bare cache runs only when one of
those commits is not there yet; a step ends with at most one push, ``--atomic`` with a
``--force-with-lease=REF:OLD`` per ref it moves (empty OLD: the ref must not exist), so two
promoters racing cannot both move a ref, and a push cut short moves all of its refs or none.

Plain ``git`` processes rather than GitPython (which the sync uses): a step runs a handful
of short commands, and what matters here is each one's exit code, its ``--porcelain``
answer and a hard deadline on the process group (``git-remote-http`` and ``ssh`` are
children of ``git``). ``import git`` alone (60-80 ms) would be a tenth of the step's budget.
Credentials in an http(s) URL go through the sync's credential helper (``credentials``),
never onto a command line.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import LeaseError, RolloutError, redact
from reconciler.reconcile import credentials
from reconciler.reconcile.revision import signature_problem

SHA = re.compile(r"[0-9a-f]{40}")
CACHE_PREFIX = "refs/promote/"  # the remote's refs as last fetched, under the cache's own name
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "reconciler promote",
    "GIT_AUTHOR_EMAIL": "reconciler@localhost",
    "GIT_COMMITTER_NAME": "reconciler promote",
    "GIT_COMMITTER_EMAIL": "reconciler@localhost",
    "LC_ALL": "C",
}


@dataclass(frozen=True)
class Update:
    """One ref of a push: ``old`` what it must still be (None: absent), ``new`` (None: delete)."""

    ref: str
    old: str | None
    new: str | None


class Remote:
    """The repository at ``url`` and the promoter's bare cache of it."""

    def __init__(self, url: str, cache_dir: Path, timeout: float) -> None:
        if not url or url.startswith("-") or "\n" in url:
            raise RolloutError(f"cannot read repository '{url!r}': not a repository URL")
        self.url = url
        self.plain, self._options, self._secrets = credentials.split_credentials(url)
        self.cache_dir = cache_dir
        self.timeout = timeout

    # ---- processes ------------------------------------------------------------------------

    def _git(
        self,
        *args: str,
        network: bool = False,
        env: dict[str, str] | None = None,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run git in the cache under the deadline; the whole process group dies at it."""
        argv = ["git", "-c", "protocol.ext.allow=never"]
        for option in self._options if network else ():
            argv += ["-c", option]
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/nonexistent"),
            **_ENV,
            "GIT_DIR": str(self.cache_dir),
            **(self._secrets if network else {}),
            **(env or {}),
        }
        if not network:
            full_env["GIT_ALLOW_PROTOCOL"] = "none"
        proc = subprocess.Popen(
            [*argv, *args],
            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
            start_new_session=True,  # its own process group: killed whole at the deadline
        )
        try:
            out, err = proc.communicate(stdin, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise RolloutError(
                f"cannot reach repository '{self.plain}': git {args[0]} did not finish in "
                f"{self.timeout:g} s",
                hint="check the remote and the network; nothing was moved",
            ) from None
        except BaseException:  # KeyboardInterrupt, SIGTERM turned into an exception
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def _failed(self, what: str, proc: subprocess.CompletedProcess[str]) -> RolloutError:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        last = lines[-1] if lines else f"git exited with {proc.returncode}"
        for prefix in ("fatal: ", "error: ", "remote: "):
            last = last.removeprefix(prefix)
        return RolloutError(
            f"cannot {what} '{self.plain}': {redact(last)[:300]}",
            hint="check the URL, the credentials and that the remote is reachable; "
            "nothing was moved",
        )

    def ensure(self) -> None:
        """The bare cache (0700), created on first use: built aside, then renamed into place,
        so a second promoter starting at the same moment finds it whole or not at all."""
        if (self.cache_dir / "HEAD").is_file():
            return
        self.cache_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        aside = self.cache_dir.with_name(f"{self.cache_dir.name}.new-{os.getpid()}")
        proc = subprocess.run(
            ["git", "init", "--bare", "--quiet", str(aside)],
            capture_output=True,
            text=True,
            check=False,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **_ENV},
        )
        if proc.returncode != 0:
            raise RolloutError(f"cannot create git cache '{self.cache_dir}': {proc.stderr.strip()}")
        aside.chmod(0o700)
        try:
            aside.rename(self.cache_dir)
        except OSError:  # another promoter's cache won (or a leftover empty directory)
            shutil.rmtree(aside, ignore_errors=True)
            if not (self.cache_dir / "HEAD").is_file():
                raise RolloutError(
                    f"cannot create git cache '{self.cache_dir}': it exists and is not a "
                    "git repository",
                    hint="remove the directory; it is rebuilt on the next step",
                ) from None

    # ---- reading --------------------------------------------------------------------------

    def list_refs(self) -> dict[str, str]:
        """Every branch and tag of the remote: ref -> commit (an annotated tag's peeled
        commit as ``refs/tags/X^{}``, its tag object as ``refs/tags/X``). One request."""
        proc = self._git("ls-remote", "--", self.plain, "refs/heads/*", "refs/tags/*", network=True)
        if proc.returncode != 0:
            raise self._failed("list the refs of", proc)
        found: dict[str, str] = {}
        for line in proc.stdout.splitlines():
            sha, _, ref = line.partition("\t")
            if SHA.fullmatch(sha) and ref.startswith(("refs/heads/", "refs/tags/")):
                found[ref] = sha
        return found

    def has(self, *objects: str) -> bool:
        """Whether every one of ``objects`` is in the cache."""
        if not objects:
            return True
        proc = self._git("cat-file", "--batch-check", stdin="".join(f"{o}\n" for o in objects))
        return proc.returncode == 0 and " missing" not in proc.stdout

    def fetch(self, refs: list[str]) -> None:
        """Fetch the remote's ``refs`` into the cache (under ``refs/promote/``)."""
        specs = [f"+{ref}:{CACHE_PREFIX}{ref.removeprefix('refs/')}" for ref in refs]
        proc = self._git(
            "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--", self.plain, *specs,
            network=True,
        )  # fmt: skip
        if proc.returncode != 0:
            raise self._failed("fetch from", proc)

    def read_file(self, commit: str, path: str) -> bytes | None:
        """A file of ``commit``, or None when it has none at ``path``."""
        proc = subprocess.run(
            ["git", "cat-file", "blob", f"{commit}:{path}"],
            capture_output=True,
            check=False,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_DIR": str(self.cache_dir)},
            timeout=self.timeout,
        )
        return proc.stdout if proc.returncode == 0 else None

    def message(self, commit: str) -> str:
        proc = self._git("log", "-1", "--format=%B", commit)
        if proc.returncode != 0:
            raise self._failed(f"read commit {commit[:12]} of", proc)
        return proc.stdout

    def descends(self, new: str, old: str) -> bool:
        """Whether ``new`` is ``old`` or a descendant of it (a fast-forward)."""
        if new == old:
            return True
        proc = self._git("merge-base", "--is-ancestor", old, new)
        if proc.returncode not in (0, 1):
            raise self._failed(f"compare {old[:12]} and {new[:12]} of", proc)
        return proc.returncode == 0

    def verify_tag(self, tag: str, gpg_home: Path) -> str | None:
        """None when the tag object ``tag`` carries a good signature by a key of
        ``gpg_home`` (the sync's rule for commits), else why not."""
        proc = self._git("verify-tag", "--raw", tag, env={"GNUPGHOME": str(gpg_home)})
        return signature_problem(proc.returncode, proc.stderr)

    # ---- writing --------------------------------------------------------------------------

    def commit(self, message: str, parent: str | None) -> str:
        """A commit of the empty tree with ``message`` (a control ref's content)."""
        parents = ["-p", parent] if parent else []
        self._git("hash-object", "-t", "tree", "-w", "--stdin")  # the empty tree, really stored
        proc = self._git("commit-tree", EMPTY_TREE, *parents, "-m", message)
        if proc.returncode != 0 or not SHA.fullmatch(proc.stdout.strip()):
            raise self._failed("write a control commit for", proc)
        return proc.stdout.strip()

    def push(self, updates: list[Update]) -> None:
        """Every update at once, each only if its ref is still ``old`` (compare and swap)."""
        if not updates:
            return
        leases = [f"--force-with-lease={u.ref}:{u.old or ''}" for u in updates]
        specs = [f"{u.new}:{u.ref}" if u.new else f":{u.ref}" for u in updates]
        proc = self._git(
            "push", "--porcelain", "--atomic", "--quiet", *leases, "--", self.plain, *specs,
            network=True,
        )  # fmt: skip
        if proc.returncode == 0:
            return
        # a lease the client saw fail ("stale info"), or the server's own compare under its
        # ref lock ("failed to update ref": a push that landed while this one waited): told
        # apart from other failures by reading the refs again, not by git's wording
        now: dict[str, str | None]
        try:
            now = dict(self.list_refs())
        except RolloutError:
            now = {u.ref: u.old for u in updates}  # the push's own error says more
        moved = [u.ref for u in updates if now.get(u.ref) != u.old]
        if moved:
            raise LeaseError(
                f"cannot move '{', '.join(moved)}': the remote ref changed since it was read "
                "(another promoter moved it first); nothing was moved",
                hint="the next step reads the new refs",
            )
        raise self._failed("push to", proc)
