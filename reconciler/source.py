"""The config repository (talks to the git CLI): fetch a ref into a bare cache, read one commit.

Files are read straight from the commit's tree (``ls-tree`` + one ``cat-file --batch``), so
there is no working copy to be left half-updated. Only ``inventory/`` and ``templates/``
are read; symlinks, submodules and files over ``MAX_FILE_BYTES`` are refused.

Why the CLI and not gitpython's object model: ``import git`` alone costs 110-170 ms, a third
of the budget of a no-op sync, and a handful of short git processes is faster. Every git
process runs in its own session under a deadline; on expiry the whole process group is
killed, so a hung remote (HTTP, git://, ssh) cannot hang a oneshot.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import SourceError, redact
from reconciler.model import Snapshot

READ_DIRS = ("inventory", "templates")
MAX_FILE_BYTES = 1024 * 1024
_HEX = re.compile(r"[0-9a-f]{4,40}")
_FULL_SHA = re.compile(r"[0-9a-f]{40}")
# Characters git never allows in a ref name, plus a leading '-' (option injection).
_BAD_REF = re.compile(r"^-|[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{")
_CACHE_CONFIG = (
    ("gc.pruneExpire", "never"),  # a revision fetched once stays readable for rollback
    ("gc.autoDetach", "false"),  # no background gc outliving the oneshot
    ("transfer.fsckObjects", "true"),  # refuse malformed objects from the remote
)
_BOILERPLATE = (
    "fatal: could not read from remote repository.",
    "please make sure you have the correct access rights",
    "and the repository exists.",
)


@dataclass(frozen=True)
class Verification:
    """Commit-signature mode: the commit must carry a good signature by a key in gpg_home."""

    gpg_home: Path


class _Timeout(Exception):
    pass


def fetch(
    url: str,
    ref: str,
    cache_dir: Path,
    *,
    timeout: float = 60,
    verify: Verification | None = None,
) -> Snapshot:
    """Fetch ``ref`` (branch, tag or commit id) from ``url`` and read that commit's files.

    A full commit id already in the cache is not fetched again (commit ids never change).
    """
    if not url or url.startswith("-") or "\n" in url:
        raise SourceError(f"cannot fetch repository '{_printable(url)}': not a repository URL")
    _check_ref(ref)
    deadline = time.monotonic() + timeout
    _ensure_cache(cache_dir, deadline)
    revision = _resolve(cache_dir, ref, deadline) if _FULL_SHA.fullmatch(ref) else None
    if revision is None:
        with _cache_lock(cache_dir, deadline):
            _fetch(url, cache_dir, deadline)
        revision = _resolve(cache_dir, ref, deadline)
        if revision is None and _FULL_SHA.fullmatch(ref):
            with _cache_lock(cache_dir, deadline):  # a commit no branch or tag points to
                _fetch(url, cache_dir, deadline, refspecs=(ref,), quiet_fail=True)
            revision = _resolve(cache_dir, ref, deadline)
        if revision is None:
            raise SourceError(
                f"cannot resolve ref '{ref}' in '{url}': no such branch, tag or commit",
                hint="check 'ref' in the config file or --ref",
            )
    return _read(cache_dir, revision, verify, deadline)


def read_revision(
    cache_dir: Path, revision: str, *, verify: Verification | None = None, timeout: float = 60
) -> Snapshot:
    """The files of ``revision`` from the cache only: rollback works while the remote is down."""
    deadline = time.monotonic() + timeout
    if not (cache_dir / "HEAD").is_file() or not _HEX.fullmatch(revision):
        resolved = None
    else:
        resolved = _resolve(cache_dir, revision, deadline)
    if resolved is None:
        raise SourceError(
            f"cannot read revision '{revision[:12]}': not in the cache '{cache_dir}'",
            hint="only revisions fetched before can be read without the remote",
        )
    return _read(cache_dir, resolved, verify, deadline)


# --- steps -------------------------------------------------------------------------------


def _check_ref(ref: str) -> None:
    if not ref or _BAD_REF.search(ref) or ref.endswith((".", "/", ".lock")):
        raise SourceError(
            f"cannot resolve ref '{_printable(ref)}': not a valid branch, tag or commit name",
            hint="check 'ref' in the config file or --ref",
        )


def _ensure_cache(cache_dir: Path, deadline: float) -> None:
    """A bare repository under cache_dir (0700); built aside then renamed, so never half-made."""
    if (cache_dir / "HEAD").is_file():
        return
    if cache_dir.exists() and any(cache_dir.iterdir()):
        raise SourceError(
            f"cannot use git cache '{cache_dir}': not empty and not a git repository",
            hint="remove the directory; it is rebuilt on the next fetch",
        )
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir.with_name(f"{cache_dir.name}.tmp-{os.getpid()}")
    _git(["init", "--bare", "--quiet", str(tmp)], None, deadline, "create git cache", str(tmp))
    for key, value in _CACHE_CONFIG:
        _git(["config", key, value], tmp, deadline, "create git cache", str(tmp))
    tmp.chmod(0o700)
    try:
        tmp.rename(cache_dir)  # replaces an empty directory too
    except OSError as exc:
        raise SourceError(f"cannot create git cache '{cache_dir}': {exc.strerror}") from None


def _fetch(
    url: str,
    cache_dir: Path,
    deadline: float,
    *,
    refspecs: tuple[str, ...] = ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"),
    quiet_fail: bool = False,
) -> None:
    """Mirror the remote's branches and tags; '+' accepts force-pushed (rewritten) history."""
    argv = ["fetch", "--quiet", "--no-write-fetch-head", "--no-recurse-submodules"]
    if len(refspecs) > 1:
        argv.append("--prune")
    try:
        proc = _run(["-c", "protocol.ext.allow=never", *argv, url, *refspecs], cache_dir, deadline)
    except _Timeout:
        left = "the remote did not answer in time"
        raise SourceError(
            f"cannot fetch repository '{url}': {left}",
            hint="check the remote and the network; nothing on the host was changed",
        ) from None
    if proc.returncode != 0 and not quiet_fail:
        raise SourceError(
            f"cannot fetch repository '{url}': {_last_line(proc.stderr)}",
            hint="check the URL, the credentials and that the remote is reachable; "
            "nothing on the host was changed",
        )


def _resolve(cache_dir: Path, ref: str, deadline: float) -> str | None:
    """Branch, then tag, then commit id, peeled to a commit, in one ``cat-file`` process."""
    if ref.startswith("refs/"):
        names = [ref]
    else:
        names = [f"refs/heads/{ref}", f"refs/tags/{ref}"]
        if _HEX.fullmatch(ref):
            names.append(ref)
    data = "".join(f"{name}^{{commit}}\n" for name in names).encode()
    proc = _git(["cat-file", "--batch-check"], cache_dir, deadline, "resolve ref", ref, data)
    for line in proc.stdout.decode(errors="replace").splitlines():
        oid, _, rest = line.partition(" ")
        if rest.startswith("commit "):
            return oid
        if rest == "ambiguous":
            raise SourceError(
                f"cannot resolve ref '{ref}': ambiguous commit id",
                hint="give more digits of the commit id",
            )
    return None


def _read(cache_dir: Path, revision: str, verify: Verification | None, deadline: float) -> Snapshot:
    if verify is not None:
        _verify(cache_dir, revision, verify, deadline)
    listing = _git(
        ["ls-tree", "-r", "-l", "-z", "--full-tree", revision, "--", *READ_DIRS],
        cache_dir,
        deadline,
        "read revision",
        revision[:12],
    ).stdout
    wanted: list[tuple[str, str]] = []  # (path, blob id)
    for entry in listing.split(b"\0"):
        if not entry:
            continue
        meta, _, raw_path = entry.partition(b"\t")
        mode, kind, oid, size = meta.decode().split()
        path = raw_path.decode("utf-8", errors="replace")
        if mode == "120000":
            raise _refused(revision, path, "a symlink (symlinks are never followed)")
        if kind != "blob":
            raise _refused(revision, path, f"a {kind}, not a file")
        if int(size) > MAX_FILE_BYTES:
            raise _refused(revision, path, f"larger than {MAX_FILE_BYTES // 1024} KiB")
        wanted.append((path, oid))
    batch = "".join(f"{oid}\n" for oid in [revision, *(oid for _, oid in wanted)]).encode()
    out = _git(["cat-file", "--batch"], cache_dir, deadline, "read revision", revision[:12], batch)
    objects = _parse_batch(out.stdout)
    message = objects[0].decode("utf-8", errors="replace").partition("\n\n")[2]
    files = {path: body for (path, _), body in zip(wanted, objects[1:], strict=True)}
    summary = message.strip().partition("\n")[0].strip()
    return Snapshot(revision=revision, files=files, summary=summary)


def _parse_batch(data: bytes) -> list[bytes]:
    """Bodies of ``cat-file --batch`` output (``<oid> <type> <size>\\n<body>\\n`` each)."""
    bodies: list[bytes] = []
    pos = 0
    while pos < len(data):
        eol = data.index(b"\n", pos)
        header = data[pos:eol].split()
        if len(header) != 3:
            raise SourceError(f"cannot read object '{header[0].decode()[:12]}': missing in cache")
        size = int(header[2])
        bodies.append(data[eol + 1 : eol + 1 + size])
        pos = eol + 1 + size + 1
    return bodies


def _verify(cache_dir: Path, revision: str, verify: Verification, deadline: float) -> None:
    """``git verify-commit`` against the keyring in gpg_home; anything but a good sig refuses."""
    short = revision[:12]
    hint = (
        f"sign commits with a key whose public key is imported into '{verify.gpg_home}' "
        f"(gpg --homedir {verify.gpg_home} --import KEY.asc)"
    )
    if not verify.gpg_home.is_dir():
        raise SourceError(f"cannot verify commit '{short}': no keyring '{verify.gpg_home}'", hint)
    try:
        proc = _run(
            ["verify-commit", "--raw", revision],
            cache_dir,
            deadline,
            env={"GNUPGHOME": str(verify.gpg_home)},
        )
    except _Timeout:
        raise SourceError(f"cannot verify commit '{short}': gpg did not answer in time") from None
    status = proc.stderr.decode(errors="replace")
    if proc.returncode == 0 and "[GNUPG:] GOODSIG " in status:
        return
    raise SourceError(f"cannot verify commit '{short}': {_signature_problem(status)}", hint)


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


def _printable(text: str) -> str:
    """Control characters escaped, so a hostile value cannot break the one-line message."""
    return text.encode("unicode_escape").decode("ascii")


def _refused(revision: str, path: str, why: str) -> SourceError:
    return SourceError(
        f"cannot read '{path}' at revision '{revision[:12]}': {why}",
        hint="commit a regular file under inventory/ or templates/ instead",
    )


# --- processes ---------------------------------------------------------------------------


def _cache_lock(cache_dir: Path, deadline: float) -> _Lock:
    return _Lock(cache_dir / "reconciler-fetch.lock", deadline)


class _Lock:
    """``flock`` on a file in the cache, so two fetches never race on the refs."""

    def __init__(self, path: Path, deadline: float) -> None:
        self.path, self.deadline, self.fd = path, deadline, -1

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > self.deadline:
                    os.close(self.fd)
                    raise SourceError(
                        f"cannot lock git cache '{self.path.parent}': another fetch runs"
                    ) from None
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # closing drops the lock


def _git(
    argv: list[str],
    cwd: Path | None,
    deadline: float,
    verb: str,
    what: str,
    data: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """A local git command that must succeed; its failure is one SourceError line."""
    try:
        proc = _run(argv, cwd, deadline, data)
    except _Timeout:
        raise SourceError(f"cannot {verb} '{what}': git did not finish in time") from None
    if proc.returncode != 0:
        raise SourceError(f"cannot {verb} '{what}': {_last_line(proc.stderr)}")
    return proc


def _run(
    argv: list[str],
    cwd: Path | None,
    deadline: float,
    data: bytes | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run git in a new session; past the deadline its whole process group is killed."""
    left = max(deadline - time.monotonic(), 0.1)
    full_env = {
        **os.environ,
        "LC_ALL": "C",
        "GIT_TERMINAL_PROMPT": "0",  # fail instead of asking for a password
        "GIT_HTTP_LOW_SPEED_LIMIT": "1000",  # bytes/s: a stalled HTTP transfer gives up
        "GIT_HTTP_LOW_SPEED_TIME": str(max(1, int(left))),
        **(env or {}),
    }
    try:
        proc = subprocess.Popen(
            ["git", *argv],
            cwd=cwd,
            stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            start_new_session=True,  # no controlling tty (ssh cannot prompt); one group to kill
        )
    except FileNotFoundError:
        raise SourceError("cannot run git: not installed", hint="install git") from None
    try:
        out, err = proc.communicate(data, timeout=left)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise _Timeout from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _last_line(stderr: bytes) -> str:
    """The last meaningful line of git's stderr, redacted; git's boilerplate is skipped."""
    lines = [
        line.strip()
        for line in stderr.decode("utf-8", errors="replace").splitlines()
        if line.strip() and not line.strip().lower().startswith(_BOILERPLATE)
    ]
    if not lines:
        return "git failed without a message"
    last = lines[-1]
    if len(lines) > 1 and lines[-2].endswith(":"):  # "unable to connect to X:" + "...errno=E"
        last = f"{lines[-2]} {last.rpartition('errno=')[2]}"
    for prefix in ("fatal: ", "error: ", "remote: "):
        last = last.removeprefix(prefix)
    return redact(last)[:300]
