"""The git server's ref advertisement, for one poll (talks to the git server: HTTP or git).

A poll that finds nothing new must cost the git server one request: a fleet of 10,000
hosts polling every 5 minutes is 2,000 requests a minute, and self-managed GitLab allows
600 SSH git operations a minute per user and project. ``list_refs`` asks for the refs
under a few prefixes only and nothing else; the cache is fetched only when one moved.

Hand-written for http(s), because git's own client spends two requests on it: protocol v2
over HTTP starts with ``GET /info/refs`` (the capability advertisement) before the
``POST`` that carries ``ls-refs``, and protocol v0 advertises every ref of the repository
in its ``GET``. A v2 server is stateless between requests (git's ``http-backend`` runs
``upload-pack --stateless-rpc`` per request), so the ``ls-refs`` command is sent in one
``POST`` with the header ``Git-Protocol: version=2``, in git's pkt-line framing
(``gitprotocol-v2(5)``, ``gitprotocol-common(5)``). A server that does not answer it in
kind (dumb HTTP, v0 only, a redirect), a TLS or name failure (git may trust another CA) and
a proxy in the environment leave it to ``git ls-remote``, as do ssh://, git:// and local
URLs (one connection each).

A server that refuses (connection refused or reset, a timeout, HTTP 429 or 5xx) raises
``BusyError``, with its ``Retry-After``: the sync backs off (``reconcile.backoff``).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from reconciler.core.retry import parse_retry_after
from reconciler.errors import SourceError, redact
from reconciler.reconcile import credentials

AGENT = "reconciler"
# too many requests; an error, a bad gateway, unavailable, a gateway timeout: wait and retry
# (501 "not implemented" and the like: a server that does not speak this, not a busy one)
BUSY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_ADVERTISEMENT = 8 << 20  # bytes: an answer past this is not an ls-refs of a few refs
_OID = re.compile(r"[0-9a-f]{40}")
# what git prints when a server refused or was not there (ls-remote, fetch)
_GIT_BUSY = re.compile(
    r"returned error: (?P<status>429|50[0234])|connection refused|connection reset|"
    r"timed out|could not resolve host|failed to connect|unable to connect|"
    r"the remote end hung up unexpectedly|early eof",
    re.IGNORECASE,
)


_BOILERPLATE = (
    "fatal: could not read from remote repository.",
    "please make sure you have the correct access rights",
    "and the repository exists.",
    "error: process killed because it timed out.",
)
BUSY_HINT = (
    "the git server is busy, rate-limits or is down: polls back off; nothing on the host "
    "was changed"
)


class BusyError(SourceError):
    """The git server refused or was not there: wait (``retry_after``: what it asked for)."""

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, hint)
        self.status = status
        self.retry_after = retry_after


class _NotV2(Exception):
    """The HTTP server did not answer ``ls-refs`` in protocol v2: ask git instead."""


def pkt_line(text: str) -> bytes:
    """One pkt-line: four hex digits of length (themselves included), then the data."""
    data = text.encode("utf-8")
    return b"%04x" % (len(data) + 4) + data


def ls_refs_request(prefixes: Iterable[str]) -> bytes:
    """The body of a protocol v2 ``ls-refs`` (tags peeled, only refs under ``prefixes``)."""
    body = pkt_line("command=ls-refs\n") + pkt_line(f"agent={AGENT}\n") + b"0001"
    body += pkt_line("peel\n")
    body += b"".join(pkt_line(f"ref-prefix {p}\n") for p in prefixes)
    return body + b"0000"


def parse_ls_refs(body: bytes) -> dict[str, str]:
    """``{ref: commit}`` from an ``ls-refs`` answer (a tag as the commit it peels to).

    Raises ``_NotV2`` on anything but a well-formed answer ending in a flush packet.
    """
    refs: dict[str, str] = {}
    at = 0
    while True:
        head = body[at : at + 4]
        try:
            size = int(head, 16)
        except ValueError:
            raise _NotV2(f"not a pkt-line at byte {at}") from None
        if size == 0:
            return refs
        if size < 4 or at + size > len(body):
            raise _NotV2(f"bad pkt-line length at byte {at}")
        line = body[at + 4 : at + size].decode("utf-8", "replace").rstrip("\n")
        at += size
        if line.startswith("ERR "):
            raise SourceError(f"the git server refused the ref listing: {line[4:][:200]}")
        oid, _, rest = line.partition(" ")
        name, *attributes = rest.split(" ")
        if not _OID.fullmatch(oid) or not name.startswith("refs/"):
            raise _NotV2(f"not a ref line: {line[:80]!r}")
        peeled = [a.removeprefix("peeled:") for a in attributes if a.startswith("peeled:")]
        refs[name] = peeled[0] if peeled else oid


def list_refs(url: str, prefixes: Iterable[str], *, timeout: float) -> dict[str, str]:
    """The remote's refs under ``prefixes`` (``{ref: commit}``, tags peeled): one request."""
    wanted = tuple(prefixes)
    if url.lower().startswith(("http://", "https://")) and not _proxied():
        try:
            return _http(url, wanted, timeout)
        except _NotV2:
            pass
    return _ls_remote(url, wanted, timeout)


def _proxied() -> bool:
    """A proxy in the environment: git honours it, the hand-written request does not."""
    names = ("http_proxy", "https_proxy", "all_proxy")
    return any(os.environ.get(n) or os.environ.get(n.upper()) for n in names)


def _http(url: str, prefixes: tuple[str, ...], timeout: float) -> dict[str, str]:
    from reconciler.host import http  # requests: ~50 ms, only for an http(s) remote

    plain, _, secrets = credentials.split_credentials(url)
    headers = {
        "Content-Type": "application/x-git-upload-pack-request",
        "Accept": "application/x-git-upload-pack-result",
        "Git-Protocol": "version=2",
        "User-Agent": f"git/{AGENT}",
    }
    if secrets:
        import base64

        user = secrets["RECONCILER_GIT_USERNAME"] + ":" + secrets["RECONCILER_GIT_PASSWORD"]
        headers["Authorization"] = "Basic " + base64.b64encode(user.encode()).decode()
    endpoint = plain.rstrip("/") + "/git-upload-pack"
    policy = http.RetryPolicy(retries=0, total_sec=timeout)  # one request: backoff is ours
    with http.request(
        "POST",
        endpoint,
        policy=policy,
        timeout=(min(timeout, 10.0), timeout),
        headers=headers,
        data=ls_refs_request(prefixes),
        stream=True,
    ) as call:
        response = call.response
        if response is None:
            last = call.attempts[-1] if call.attempts else None
            error = (last.error or "") if last else ""
            if last is not None and last.timed_out:
                raise BusyError(
                    f"cannot fetch repository '{url}': the remote did not answer in time",
                    hint=BUSY_HINT,
                )
            if "refused" not in error.lower():  # TLS (git may trust another CA), DNS...
                raise _NotV2(error)  # git says what it is, with git's own settings
            raise BusyError(f"cannot fetch repository '{url}': {call.error}", hint=BUSY_HINT)
        status = response.status_code
        if status in BUSY_STATUSES:
            raise BusyError(
                f"cannot fetch repository '{url}': the git server answered {status} "
                f"{response.reason or ''}".rstrip(),
                hint=BUSY_HINT,
                status=status,
                retry_after=parse_retry_after(
                    response.headers.get("Retry-After"), datetime.now(UTC)
                ),
            )
        kind = response.headers.get("Content-Type", "")
        if status != 200 or kind != "application/x-git-upload-pack-result":
            raise _NotV2(f"HTTP {status} {kind}")
        body = response.raw.read(MAX_ADVERTISEMENT + 1, decode_content=True)
    if len(body) > MAX_ADVERTISEMENT:
        raise _NotV2("answer too large")
    return parse_ls_refs(body)


def _ls_remote(url: str, prefixes: tuple[str, ...], timeout: float) -> dict[str, str]:
    """``git ls-remote`` (one connection; over HTTP, v0's one GET): tags peeled."""
    plain, options, secrets = credentials.split_credentials(url)
    argv = ["git", "-c", "protocol.ext.allow=never"]
    for option in options:
        argv += ["-c", option]
    argv.append("ls-remote")
    for kind in ("heads", "tags"):  # lets git ask a v2 server for that prefix only
        if prefixes and all(p.startswith(f"refs/{kind}/") for p in prefixes):
            argv.append(f"--{kind}")
    argv += ["--", plain, *(f"{p}*" for p in prefixes)]
    env = {
        **os.environ,  # ssh's keys and config, git's own config: as the fetch has them
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_HTTP_LOW_SPEED_LIMIT": "1000",
        "GIT_HTTP_LOW_SPEED_TIME": str(max(1, int(timeout))),
        **secrets,
    }
    started = time.monotonic()
    # its own process group: a timeout kills git and its helpers (ssh, git-remote-http)
    proc = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise BusyError(
            f"cannot fetch repository '{url}': the remote did not answer in time "
            f"({time.monotonic() - started:.0f}s)",
            hint=BUSY_HINT,
        ) from None
    if proc.returncode != 0:
        lines = stderr.splitlines()
        why = last_line(lines)
        status = busy_status(lines)
        if status is not None:
            raise BusyError(
                f"cannot fetch repository '{url}': {why[:300]}",
                hint=BUSY_HINT,
                status=status or None,
            )
        raise SourceError(
            f"cannot fetch repository '{url}': {why[:300]}",
            hint="check the URL, the credentials and that the remote is reachable; "
            "nothing on the host was changed",
        )
    refs: dict[str, str] = {}
    for line in stdout.splitlines():
        oid, _, name = line.partition("\t")
        if name.endswith("^{}"):
            refs[name[:-3]] = oid  # the commit an annotated tag peels to
        else:
            refs.setdefault(name, oid)
    return {n: o for n, o in refs.items() if n.startswith(prefixes) and _OID.fullmatch(o)}


def matching(advertised: Mapping[str, str], names: Iterable[str]) -> dict[str, str]:
    """The advertised refs named exactly ``names`` (a prefix also matches longer names)."""
    return {n: advertised[n] for n in names if n in advertised}


def busy_status(stderr: Iterable[str]) -> int | None:
    """Whether git's stderr says the server refused or was not there: its HTTP status
    (429, 5xx), 0 for a refused or lost connection, None for any other failure."""
    match = _GIT_BUSY.search("\n".join(stderr))
    if match is None:
        return None
    return int(match["status"]) if match["status"] else 0


def last_line(stderr: list[str]) -> str:
    """The last meaningful line of git's stderr, redacted; git's boilerplate is skipped."""
    lines = [
        line.strip()
        for line in stderr
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
