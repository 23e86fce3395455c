"""Source faults (issue 11, revisions and network): what the host applies is what the operator
meant, whoever can push a branch, and whatever the network answers.

Every case is a whole ``reconciler sync`` process against a real bare repository (or a real
HTTP server on 127.0.0.1) and the disposable systemd host.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.faults.conftest import FaultEnv, Report
from tests.faults.test_security_faults import dumb_git, signed_commit
from tests.integration.gitrepo import git
from tests.integration.test_source import Keys, keys
from tests.integration.test_sync import base_files, service

pytestmark = pytest.mark.host
__all__ = ["keys"]  # the gpg keys fixture of test_source


def test_ref_confusion_is_refused(fenv: FaultEnv, fault_report: Report) -> None:
    """Issue 11 #8: a ref pinned to a tag or a short commit id, then a branch of the same
    name is pushed: the branch used to win and its commit was applied."""
    a = fenv.name("pinned")
    unit = f"{a}.service"
    work = fenv.repo.work
    pinned = fenv.repo.commit(base_files(fenv, service(a, greeting="pinned")), message="release")
    git(work, "tag", "-a", "v1", "-m", "release 1")
    git(work, "push", "-q", "origin", "v1")
    first = fenv.sync("--ref", "v1")
    hijack = fenv.repo.commit(base_files(fenv, service(a, greeting="hijack")), message="hijack")
    before = fenv.invocations(unit)
    git(work, "push", "-q", "origin", f"{hijack}:refs/heads/v1")  # a branch named like the tag
    git(work, "push", "-q", "origin", f"{hijack}:refs/heads/{pinned[:10]}")  # like the commit
    faulted = time.monotonic()
    by_tag = fenv.run("sync", "--ref", "v1")
    by_short_id = fenv.run("sync", "--ref", pinned[:10])
    untouched = "pinned" in (fenv.host.unit_dir / unit).read_text()
    untouched = untouched and fenv.invocations(unit) == before
    explicit = fenv.sync("--ref", "refs/tags/v1")
    full = fenv.sync("--ref", pinned)
    converge = time.monotonic() - faulted
    fault_report(
        "ref confusion (a branch named like the pinned tag or commit id)",
        "an ambiguous ref is refused in one line naming the kinds; refs/tags/, refs/heads/ "
        "and a full commit id resolve exactly; sync says what the ref resolved to",
        converge,
        untouched,
    )
    assert untouched, "the branch named like the tag or the commit id was applied"
    for proc, ref in ((by_tag, "v1"), (by_short_id, pinned[:10])):
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1, proc.stderr
        assert f"cannot resolve ref '{ref}': ambiguous" in lines[0], lines
        assert f"refs/heads/{ref}" in lines[0] and f"refs/tags/{ref}" in lines[0]
    assert f"a branch ({hijack[:12]}) and a tag ({pinned[:12]})" in by_tag.stderr
    assert f"a branch ({hijack[:12]}) and a commit ({pinned[:12]})" in by_short_id.stderr
    assert first["revision"] == pinned and first["resolved"] == "refs/tags/v1"
    assert explicit["revision"] == pinned and explicit["result"] == "noop"
    assert explicit["resolved"] == "refs/tags/v1"
    assert full["revision"] == pinned and full["resolved"] == f"commit {pinned}"


def test_signed_downgrade_is_refused(fenv: FaultEnv, keys: Keys, fault_report: Report) -> None:
    """Issue 11 #9: in signed mode a branch force-pushed back to an older signed commit was
    applied silently."""
    fenv.configure(top=f'verify_signatures = true\ngpg_home = "{keys.trusted}"\n')
    a = fenv.name("signed")
    unit = f"{a}.service"
    key = (keys.signer, keys.signer_fpr)
    old = signed_commit(fenv, base_files(fenv, service(a, greeting="vulnerable")), *key)
    assert fenv.sync()["result"] == "applied"
    fixed = signed_commit(fenv, base_files(fenv, service(a, greeting="fixed")), *key)
    assert fenv.sync()["revision"] == fixed
    before = fenv.invocations(unit)
    since = time.time()
    git(fenv.repo.work, "push", "-q", "--force", "origin", f"{old}:main")
    faulted = time.monotonic()
    refused = fenv.run("sync")
    untouched = "fixed" in (fenv.host.unit_dir / unit).read_text()
    untouched = untouched and fenv.invocations(unit) == before
    fenv.host.journal_sync()
    warned = [
        e
        for e in fenv.host.journal("RECONCILER_EVENT=sync.downgrade")
        if float(e["__REALTIME_TIMESTAMP"]) / 1e6 >= since - 1
    ]
    allowed = fenv.run("sync", "--json", "--allow-downgrade")
    converge = time.monotonic() - faulted
    fault_report(
        "signed downgrade (branch force-pushed back to an older signed commit)",
        "refused in signed mode unless sync --allow-downgrade / allow_downgrade; always a "
        "journal warning naming both revisions",
        converge,
        untouched,
    )
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode != 0 and len(lines) == 1, refused.stderr
    assert f"cannot apply revision '{old[:12]}'" in lines[0]
    assert f"applied revision '{fixed[:12]}'" in lines[0] and "--allow-downgrade" in lines[0]
    assert untouched
    assert warned and old[:12] in warned[0]["MESSAGE"] and fixed[:12] in warned[0]["MESSAGE"]
    assert allowed.returncode == 0, allowed.stderr
    assert "vulnerable" in (fenv.host.unit_dir / unit).read_text()


# ---- credentials (issue 11 #15) --------------------------------------------------------------


class _Redirect(BaseHTTPRequestHandler):
    """Every GET is redirected to another origin (``server.target``)."""

    server: RedirectServer

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(302)
        self.send_header("Location", self.server.target + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Collector(BaseHTTPRequestHandler):
    """Asks for Basic credentials and keeps whatever Authorization it is sent."""

    server: RedirectServer

    def do_GET(self) -> None:  # noqa: N802
        if self.headers.get("Authorization"):
            self.server.seen.append(self.headers["Authorization"])
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="git"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class RedirectServer(ThreadingHTTPServer):
    daemon_threads = True
    target = ""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.seen: list[str] = []
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(5)


def test_credentials_never_follow_a_redirect(fenv: FaultEnv, fault_report: Report) -> None:
    """A redirect from the repository URL to another origin made the credential helper hand
    the token to the redirect target."""
    token = "tok" + uuid.uuid4().hex
    collector, redirect = RedirectServer(_Collector), RedirectServer(_Redirect)
    redirect.target = collector.origin
    try:
        url = f"http://deploy:{token}@{redirect.origin.removeprefix('http://')}/config.git"
        started = time.monotonic()
        proc = fenv.run("sync", repo=url)
        seconds = time.monotonic() - started
    finally:
        redirect.stop()
        collector.stop()
    leaked = [h for h in collector.seen if base64.b64decode(h.split()[-1]).endswith(token.encode())]
    lines = proc.stderr.strip().splitlines()
    fault_report(
        "repository URL redirected to another origin (credentials would follow)",
        "the credential helper answers only for the configured protocol and host[:port]; "
        f"the redirect target gets no credentials; one line ({seconds:.1f}s)",
        None,
        not leaked,
    )
    assert not leaked, "the token was sent to the redirect target"
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "cannot fetch repository" in lines[0] and token not in proc.stderr


def test_password_with_an_unencoded_slash_is_never_shown(
    fenv: FaultEnv, fault_report: Report
) -> None:
    """Redaction missed ``https://user:pa/ss@host``: the password showed in stderr, history
    and the journal (and went to git's command line)."""
    secret = "pa/" + uuid.uuid4().hex
    a = fenv.name("slashed")
    fenv.repo.commit(base_files(fenv, service(a)))
    git(fenv.repo.remote, "update-server-info")
    with dumb_git(fenv.repo.remote.parent, "deploy", secret) as server:
        url = f"http://deploy:{secret}@127.0.0.1:{server.server_address[1]}/remote.git"
        proc = fenv.run("sync", "--json", repo=url)
    history = fenv.reconciler("history", "--json").stdout
    fenv.host.journal_sync()
    journal = json.dumps(fenv.host.journal("RECONCILER_EVENT=sync.applied"))
    shown = [
        where
        for where, text in {
            "stdout": proc.stdout,
            "stderr": proc.stderr,
            "history": history,
            "journal": journal,
        }.items()
        if secret in text or secret.split("/")[1] in text
    ]
    fault_report(
        "repository password with an unencoded '/' (redaction missed it)",
        "the userinfo is split off even when its password holds '/', sent through the "
        "credential helper, and redacted everywhere; the sync works",
        None,
        not shown,
    )
    assert not shown, f"the password appeared in {shown}"
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["result"] == "applied"


def test_ssh_password_never_on_a_command_line(fenv: FaultEnv, fault_report: Report) -> None:
    """``ssh://user:pass@host`` put the password on git's and ssh's command lines."""
    secret = "pw" + uuid.uuid4().hex
    record = fenv.state / "ssh-argv"
    fake = fenv.state / "fake-ssh"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {record}\nexit 255\n')
    fake.chmod(0o755)
    argv = fenv.argv("sync")
    argv[argv.index("--repo") + 1] = f"ssh://deploy:{secret}@127.0.0.1:1/config.git"
    env = {**fenv.env(), "GIT_SSH_COMMAND": str(fake)}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    ran = record.read_text() if record.exists() else ""
    lines = proc.stderr.strip().splitlines()
    fault_report(
        "ssh:// URL with a password (it went on git's and ssh's command lines)",
        "refused before git runs, in one line naming neither the password nor where it was",
        None,
        secret not in ran,
    )
    assert secret not in ran, "the password was on ssh's command line"
    assert not ran, "no git (nor ssh) ran"
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "a password in an ssh URL" in lines[0] and secret not in proc.stderr


# ---- large blobs (issue 11 #14) --------------------------------------------------------------


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_large_blobs_are_never_fetched(fenv: FaultEnv, fault_report: Report) -> None:
    """A 300 MB blob outside inventory/ and templates/ made every sync time out, also after
    it was deleted from the branch; each killed fetch left a tmp_pack; the cache grew."""
    git(fenv.repo.remote, "config", "uploadpack.allowFilter", "true")  # as GitHub, GitLab
    a = fenv.name("light")
    big = fenv.repo.work / "assets" / "big.bin"
    big.parent.mkdir()
    big.write_bytes(os.urandom(40 << 20))  # incompressible: 40 MiB on the wire if fetched
    fenv.repo.commit(base_files(fenv, service(a)), message="add a large asset")
    cache = fenv.state / "repo"
    started = time.monotonic()
    first = fenv.run("sync", "--json")
    first_sec = time.monotonic() - started
    first_size = tree_bytes(cache)
    leftover = cache / "objects" / "pack" / "tmp_pack_killed"
    leftover.write_bytes(b"\0" * (8 << 20))  # what a fetch killed at its deadline leaves
    fenv.repo.remove("assets/big.bin")
    fenv.repo.commit(base_files(fenv, service(a, greeting="two")), message="drop the asset")
    second = fenv.run("sync", "--json")
    huge = fenv.repo.work / "inventory" / "huge.toml"
    huge.write_bytes(b"#" * ((16 << 20) + 1))
    fenv.repo.commit({}, message="an inventory file over the limit")
    refused = fenv.run("sync")
    size = tree_bytes(cache)
    lines = refused.stderr.strip().splitlines()
    fault_report(
        "large blob in the repository (40 MiB asset; a killed fetch's tmp_pack)",
        "a partial clone: blobs over the 16 MiB read limit are never fetched, not even "
        "lazily; what a killed fetch left is removed; an inventory file over the limit is "
        f"refused in one line (first sync {first_sec:.1f}s, cache {size >> 10} KiB)",
        None,
        first.returncode == 0 and second.returncode == 0,
    )
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["result"] == "applied"
    assert first_size < 4 << 20, f"the cache holds {first_size} bytes: the blob was fetched"
    assert second.returncode == 0, second.stderr
    assert not leftover.exists(), "the killed fetch's tmp_pack was left"
    assert refused.returncode != 0 and len(lines) == 1, refused.stderr
    assert "'inventory/huge.toml'" in lines[0] and "larger than 16384 KiB" in lines[0]
    assert size < 4 << 20, f"the cache holds {size} bytes after the refusal"


def test_git_cache_is_bounded(fenv: FaultEnv, fault_report: Report) -> None:
    """Issue 11 #14: the cache kept every object forever (gc.pruneExpire=never). History
    force-pushed away that the host never applied goes; applied revisions stay readable."""
    a = fenv.name("bounded")
    fenv.configure(top="cache_max_mb = 1\n")
    first = fenv.repo.commit(base_files(fenv, service(a)), message="good")
    fenv.sync()
    blob = fenv.repo.work / "assets" / "noise.bin"
    blob.parent.mkdir()
    blob.write_bytes(os.urandom(3 << 20))  # 3 MiB under the read limit: it is fetched
    bad = base_files(fenv, service(a, greeting="two"))
    bad["inventory/services.toml"] += "\nunknown_key = 1\n"
    fenv.repo.commit(bad, message="a broken push with a large asset")
    broken = fenv.run("sync")
    cache = fenv.state / "repo"
    fetched = tree_bytes(cache / "objects")
    work = fenv.repo.work
    # History rewritten from scratch: the applied revision and the broken one are gone
    git(work, "checkout", "-q", "--orphan", "rewritten")
    git(work, "rm", "-q", "-r", "--cached", "assets")
    blob.unlink()
    fenv.repo.write(base_files(fenv, service(a, greeting="three")))
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "fixed")
    second = git(work, "rev-parse", "HEAD")
    git(work, "push", "-q", "--force", "origin", f"HEAD:{fenv.repo.branch}")
    faulted = time.monotonic()
    fenv.sync()
    converge = time.monotonic() - faulted
    trimmed = tree_bytes(cache / "objects")
    kept = git(cache, "for-each-ref", "--format=%(refname)", "refs/reconciler/kept/")
    rollback = fenv.run("rollback", first)
    fault_report(
        "git cache grows forever (history force-pushed away)",
        "applied revisions are pinned (refs/reconciler/kept/, the newest 20); the rest is "
        "pruned by git's gc after two weeks, at once past cache_max_mb "
        f"({fetched >> 10} KiB -> {trimmed >> 10} KiB)",
        converge,
        rollback.returncode == 0,
    )
    assert broken.returncode == 1 and fetched > 3 << 20, (broken.stderr, fetched)
    assert trimmed < 1 << 20, f"the cache still holds {trimmed} bytes"
    assert f"refs/reconciler/kept/{first}" in kept and f"refs/reconciler/kept/{second}" in kept
    assert rollback.returncode == 0, rollback.stderr  # pinned: no branch of the remote has it
    assert git(fenv.repo.remote, "branch", "--contains", first) == ""
