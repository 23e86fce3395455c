"""The config repository (talks to the git CLI): fetch a ref into a bare cache, read one commit.

Files are read straight from the commit's tree through one ``cat-file --batch`` process, so
there is no working copy to be left half-updated. Only ``inventory/`` and ``templates/``
are read; symlinks, submodules and files over their size limit are refused: 1 MiB for a
template, 16 MiB for an inventory file (10,000 services take about 1.3 MB of TOML).

Credentials in an ``http(s)://user:secret@host/...`` URL never reach a command line (every
local user can read those in ``ps``): git gets the URL without them and asks a credential
helper, which reads them from its environment (readable by its owner only).

Why the CLI and not gitpython's object model: ``import git`` alone costs 110-170 ms, a third
of the budget of a no-op sync; a no-change fetch is two git processes (fetch, cat-file). Every git
process runs in its own session under a deadline; on expiry the whole process group is
killed, so a hung remote (HTTP, git://, ssh) cannot hang a oneshot.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from reconciler.config import Settings
from reconciler.errors import SourceError, UsageError, redact
from reconciler.model import Snapshot

READ_DIRS = ("inventory", "templates")
MAX_FILE_BYTES = 1024 * 1024  # a template (render caps a unit at 1 Mi characters too)
MAX_INVENTORY_BYTES = 16 * 1024 * 1024  # inventory/*.toml: large fleets, still bounded
_HEX = re.compile(r"[0-9a-f]{4,40}")
_FULL_SHA = re.compile(r"[0-9a-f]{40}")
# Characters git never allows in a ref name, plus a leading '-' (option injection).
_BAD_REF = re.compile(r"^-|[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{")
_CACHE_CONFIG = """\
[gc]
\tpruneExpire = never
\tautoDetach = false
[transfer]
\tfsckObjects = true
"""  # revisions fetched once stay readable (rollback); no gc outliving the oneshot;
# malformed objects from the remote are refused.
# git runs this for HTTP credentials; the values are in its environment, not in any argv.
_CREDENTIAL_HELPER = (
    '!f() { test "$1" = get && printf "username=%s\\npassword=%s\\n" '
    '"$RECONCILER_GIT_USERNAME" "$RECONCILER_GIT_PASSWORD"; }; f'
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
    full_sha = bool(_FULL_SHA.fullmatch(ref))
    snapshot = _read(cache_dir, _candidates(ref), verify, deadline) if full_sha else None
    if snapshot is None:
        with _cache_lock(cache_dir, deadline):
            _fetch(url, cache_dir, deadline)
        snapshot = _read(cache_dir, _candidates(ref), verify, deadline)
    if snapshot is None and full_sha:
        with _cache_lock(cache_dir, deadline):  # a commit no branch or tag points to
            _fetch(url, cache_dir, deadline, refspecs=(ref,), quiet_fail=True)
        snapshot = _read(cache_dir, _candidates(ref), verify, deadline)
    if snapshot is None:
        raise SourceError(
            f"cannot resolve ref '{ref}' in '{url}': no such branch, tag or commit",
            hint="check 'ref' in the config file or --ref",
        )
    return snapshot


def read_revision(
    cache_dir: Path, revision: str, *, verify: Verification | None = None, timeout: float = 60
) -> Snapshot:
    """The files of ``revision`` from the cache only: rollback works while the remote is down."""
    deadline = time.monotonic() + timeout
    snapshot = None
    if (cache_dir / "HEAD").is_file() and _HEX.fullmatch(revision):
        snapshot = _read(cache_dir, [f"{revision}^{{commit}}"], verify, deadline)
    if snapshot is None:
        raise SourceError(
            f"cannot read revision '{_printable(revision[:12])}': not in the cache '{cache_dir}'",
            hint="only revisions fetched before can be read without the remote",
        )
    return snapshot


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
    try:
        proc = _run(["init", "--bare", "--quiet", str(tmp)], None, deadline)
    except _Timeout:
        proc = subprocess.CompletedProcess([], 1, b"", b"git init did not finish in time")
    if proc.returncode != 0:
        raise SourceError(f"cannot create git cache '{cache_dir}': {_last_line(proc.stderr)}")
    with open(tmp / "config", "a") as config:
        config.write(_CACHE_CONFIG)
    tmp.chmod(0o700)
    try:
        tmp.rename(cache_dir)  # replaces an empty directory too
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if (cache_dir / "HEAD").is_file():  # another fetch made it meanwhile
            return
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
    plain, options, secrets = split_credentials(url)
    argv = ["-c", "protocol.ext.allow=never", *options, *argv, plain, *refspecs]
    try:
        proc = _run(argv, cache_dir, deadline, env=secrets)
    except _Timeout:
        raise SourceError(
            f"cannot fetch repository '{url}': the remote did not answer in time",
            hint="check the remote and the network; nothing on the host was changed",
        ) from None
    if proc.returncode != 0 and not quiet_fail:
        raise SourceError(
            f"cannot fetch repository '{url}': {_last_line(proc.stderr)}",
            hint="check the URL, the credentials and that the remote is reachable; "
            "nothing on the host was changed",
        )


def split_credentials(url: str) -> tuple[str, list[str], dict[str, str]]:
    """``http(s)://user:secret@host/x`` -> (the URL without them, git options, environment).

    The options install ``_CREDENTIAL_HELPER`` (and drop other helpers); the environment
    holds the percent-decoded user and secret. Other URLs are returned as they are.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, [], {}
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return url, [], {}
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    options = ["-c", "credential.helper=", "-c", f"credential.helper={_CREDENTIAL_HELPER}"]
    secrets = {
        "RECONCILER_GIT_USERNAME": unquote(user),
        "RECONCILER_GIT_PASSWORD": unquote(password),
    }
    return urlunsplit(parts._replace(netloc=host)), options, secrets


def _candidates(ref: str) -> list[str]:
    """Branch, then tag, then commit id; each peeled to a commit."""
    names = [ref] if ref.startswith("refs/") else [f"refs/heads/{ref}", f"refs/tags/{ref}"]
    if _HEX.fullmatch(ref):
        names.append(ref)
    return [f"{name}^{{commit}}" for name in names]


def _read(
    cache_dir: Path, names: list[str], verify: Verification | None, deadline: float
) -> Snapshot | None:
    """Resolve the first of ``names`` that exists and read its files; None: none exists."""
    with _Objects(cache_dir, deadline) as objects:
        found = [obj for obj in objects.get(names) if obj is not None]
        if not found:
            if objects.ambiguous:
                raise SourceError(
                    f"cannot resolve ref '{objects.ambiguous[0].partition('^')[0]}': "
                    "ambiguous commit id",
                    hint="give more digits of the commit id",
                )
            return None
        revision, _, commit = found[0]
        if verify is not None:
            _verify(cache_dir, revision, verify, deadline)
        files = _read_files(objects, revision, commit)
    message = commit.decode("utf-8", errors="replace").partition("\n\n")[2]
    return Snapshot(revision, files, message.strip().partition("\n")[0].strip())


def _read_files(objects: _Objects, revision: str, commit: bytes) -> dict[str, bytes]:
    """Walk the commit's tree level by level (one round trip per level), then read blobs."""
    raw_len = len(revision) // 2  # 20 bytes for SHA-1, 32 for SHA-256 repositories
    level = [("", commit.split(b"\n", 1)[0].removeprefix(b"tree ").decode())]
    blobs: list[tuple[str, str]] = []
    while level:
        trees = objects.get([oid for _, oid in level])
        deeper: list[tuple[str, str]] = []
        for (prefix, oid), tree in zip(level, trees, strict=True):
            if tree is None or tree[1] != "tree":
                raise SourceError(f"cannot read revision '{revision[:12]}': tree {oid} missing")
            for mode, name, child in _tree_entries(tree[2], raw_len):
                path = prefix + name
                if not prefix and name not in READ_DIRS:
                    continue
                if mode == "40000":
                    deeper.append((path + "/", child))
                elif mode == "120000":
                    raise _refused(revision, path, "a symlink (symlinks are never followed)")
                elif mode == "160000":
                    raise _refused(revision, path, "a submodule, not a file")
                else:
                    blobs.append((path, child))
        level = deeper
    limits = [_size_limit(path) for path, _ in blobs]
    try:
        bodies = objects.get([oid for _, oid in blobs], max_size=limits)
    except _TooLarge as exc:
        path = blobs[exc.index][0]
        raise _refused(revision, path, f"larger than {limits[exc.index] // 1024} KiB") from None
    files: dict[str, bytes] = {}
    for (path, oid), blob in zip(blobs, bodies, strict=True):
        if blob is None or blob[1] != "blob":
            raise SourceError(f"cannot read '{path}' at revision '{revision[:12]}': {oid} missing")
        files[path] = blob[2]
    return dict(sorted(files.items()))


def _size_limit(path: str) -> int:
    return MAX_INVENTORY_BYTES if path.startswith("inventory/") else MAX_FILE_BYTES


def _tree_entries(body: bytes, raw_len: int) -> Iterator[tuple[str, str, str]]:
    """(mode, name, object id) of a raw tree object: ``<mode> <name>\\0<raw id>`` each."""
    pos = 0
    while pos < len(body):
        space = body.index(b" ", pos)
        nul = body.index(b"\0", space)
        end = nul + 1 + raw_len
        name = body[space + 1 : nul].decode("utf-8", errors="replace")
        yield body[pos:space].decode(), name, body[nul + 1 : end].hex()
        pos = end


class _TooLarge(Exception):
    def __init__(self, index: int) -> None:
        self.index = index


class _Objects:
    """One ``git cat-file --batch`` for a whole read; killed (group) at the deadline."""

    def __init__(self, cache_dir: Path, deadline: float) -> None:
        left = max(deadline - time.monotonic(), 0.1)
        self.ambiguous: list[str] = []
        self.timed_out = False
        self.proc = subprocess.Popen(
            ["git", "cat-file", "--batch"],
            cwd=cache_dir,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=_env(left),
            start_new_session=True,
        )
        self.timer = threading.Timer(left, self._kill)
        self.timer.daemon = True
        self.timer.start()

    def __enter__(self) -> _Objects:
        return self

    def __exit__(self, *exc: object) -> None:
        self.timer.cancel()
        self._kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe:
                with suppress(OSError):
                    pipe.close()

    def _kill(self) -> None:
        if self.proc.poll() is None:
            self.timed_out = True
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def get(
        self, names: list[str], max_size: list[int] | None = None
    ) -> list[tuple[str, str, bytes] | None]:
        """(object id, type, content) per name, None when missing; chunked so pipes never fill.

        ``max_size``: the largest size allowed, per name.
        """
        assert self.proc.stdin and self.proc.stdout
        out: list[tuple[str, str, bytes] | None] = []
        try:
            for start in range(0, len(names), 256):
                chunk = names[start : start + 256]
                self.proc.stdin.write("".join(f"{n}\n" for n in chunk).encode())
                self.proc.stdin.flush()
                for name in chunk:
                    header = self.proc.stdout.readline().split()
                    if len(header) == 2 and header[1] in (b"missing", b"ambiguous"):
                        if header[1] == b"ambiguous":
                            self.ambiguous.append(name)
                        out.append(None)
                        continue
                    if len(header) != 3:
                        raise OSError("short read")
                    size = int(header[2])
                    if max_size is not None and size > max_size[len(out)]:
                        raise _TooLarge(len(out))
                    body = self.proc.stdout.read(size + 1)
                    if len(body) != size + 1:
                        raise OSError("short read")
                    out.append((header[0].decode(), header[1].decode(), body[:size]))
        except (OSError, ValueError):
            why = "git did not finish in time" if self.timed_out else "git cat-file failed"
            raise SourceError(f"cannot read objects from the git cache: {why}") from None
        return out


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


@contextmanager
def _cache_lock(cache_dir: Path, deadline: float) -> Iterator[None]:
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


def _run(
    argv: list[str],
    cwd: Path | None,
    deadline: float,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run git in a new session; past the deadline its whole process group is killed."""
    left = max(deadline - time.monotonic(), 0.1)
    full_env = {**_env(left), **(env or {})}
    try:
        proc = subprocess.Popen(
            ["git", *argv],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            start_new_session=True,  # no controlling tty (ssh cannot prompt); one group to kill
        )
    except FileNotFoundError:
        raise SourceError("cannot run git: not installed", hint="install git") from None
    try:
        out, err = proc.communicate(timeout=left)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise _Timeout from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _env(left: float) -> dict[str, str]:
    return {
        **os.environ,
        "LC_ALL": "C",
        "GIT_TERMINAL_PROMPT": "0",  # fail instead of asking for a password
        "GIT_HTTP_LOW_SPEED_LIMIT": "1000",  # bytes/s: a stalled HTTP transfer gives up
        "GIT_HTTP_LOW_SPEED_TIME": str(max(1, int(left))),
    }


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


def snapshot(settings: Settings, revision: str | None = None) -> Snapshot:
    """The sync's fetch step: the configured ref, or ``revision`` from the cache (rollback)."""
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
        return read_revision(cache, revision, verify=verify, timeout=timeout)
    if not settings.repo:
        raise UsageError(
            "cannot sync: no config repository configured",
            "set repo in /etc/reconciler/config.toml, $RECONCILER_REPO or --repo",
        )
    return fetch(settings.repo, settings.ref, cache, timeout=timeout, verify=verify)
