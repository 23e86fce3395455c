"""Source faults (issue 11, revisions and network): what the host applies is what the operator
meant, whoever can push a branch, and whatever the network answers.

Every case is a whole ``reconciler sync`` process against a real bare repository (or a real
HTTP server on 127.0.0.1) and the disposable systemd host.
"""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import FaultEnv, Report
from tests.faults.test_security_faults import signed_commit
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
