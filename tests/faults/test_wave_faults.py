"""Faults of the host side of a rollout (issue 15): a wave ref force-pushed backwards, a git
server that rate-limits, a rollout definition that leaves the host in no wave.

Every sync is the CLI as a whole process against the shared disposable systemd host; the
git server is a real bare repository (local path, or git's ``http-backend`` behind a
counting front on 127.0.0.1).
"""

from __future__ import annotations

import json
import time

import pytest

from tests.faults.conftest import FaultEnv, Report
from tests.faults.test_network_faults import journal_since
from tests.integration.gitrepo import git
from tests.integration.gitserver import git_http
from tests.integration.test_sync import base_files, service

pytestmark = pytest.mark.host

ONE_WAVE = '[[rollout.waves]]\nname = "all"\nhosts = ["all"]\n'


def configure(fenv: FaultEnv, top: str) -> None:
    fenv.configure(top=top)


def synced(fenv: FaultEnv, *args: str, **flags: str) -> dict[str, str]:
    proc = fenv.run("sync", "--json", *args, **flags)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, str] = json.loads(proc.stdout)
    return result


def push_wave(fenv: FaultEnv, rev: str, *flags: str) -> None:
    git(fenv.repo.work, "push", "-q", *flags, "origin", f"{rev}:refs/heads/rollout/all")


def fleet_metrics(fenv: FaultEnv) -> dict[str, tuple[dict[str, str], float]]:
    """The fleet's lines of the monitoring pass's textfile, through prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families

    text = (fenv.state / "reconciler.prom").read_text()
    return {
        s.name: (s.labels, s.value)
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name.startswith(("reconciler_roll", "reconciler_last_success", "reconciler_health"))
    }


def events(fenv: FaultEnv, since: float, kind: str) -> list[dict[str, str]]:
    found = []
    for line in journal_since(fenv.host, since).splitlines():
        entry = json.loads(line)
        if entry.get("RECONCILER_EVENT") == kind:
            found.append(entry)
    return found


def test_wave_ref_forced_backwards_is_refused(fenv: FaultEnv, fault_report: Report) -> None:
    a = fenv.name("waved")
    unit = f"{a}.service"
    configure(fenv, "rollout = true\n")
    old = fenv.repo.commit({**base_files(fenv, service(a)), "inventory/rollout.toml": ONE_WAVE})
    push_wave(fenv, old)
    assert fenv.sync()["result"] == "applied"
    new = fenv.repo.commit(base_files(fenv, service(a, greeting="new")))
    push_wave(fenv, new)
    assert fenv.sync()["revision"] == new
    before, text = fenv.invocations(unit), (fenv.host.unit_dir / unit).read_text()
    push_wave(fenv, old, "--force")  # someone force-pushed the wave ref back
    proc = fenv.run("sync")
    lines = proc.stderr.strip().splitlines()
    untouched = fenv.invocations(unit) == before and (fenv.host.unit_dir / unit).read_text() == text
    kept = fenv.history()[0]["result"] == "failed" and "echo new;" in text
    metrics = fleet_metrics(fenv)  # the refused run's pass: on `new`, its wave ref at `old`
    started = time.monotonic()
    allowed = fenv.run("sync", "--json", "--allow-downgrade")
    fault_report(
        "wave ref force-pushed backwards",
        f"{lines[0] if lines else proc.stderr!r}; host untouched; --allow-downgrade applies it",
        time.monotonic() - started,
        untouched,
    )
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "not a fast-forward of the applied revision" in lines[0]
    assert "wave refs only move forward" in lines[0]
    assert untouched and kept
    who = {"host": "testhost", "wave": "all"}
    assert metrics["reconciler_rollout_info"] == ({**who, "revision": new, "target": old}, 1)
    assert metrics["reconciler_rollout_failed"] == ({**who, "target": old}, 0)
    since = metrics["reconciler_rollout_healthy_since_timestamp_seconds"]
    assert since[0] == {**who, "revision": new} and since[1] > 0
    assert allowed.returncode == 0 and json.loads(allowed.stdout)["revision"] == old


def test_rate_limited_git_server_is_backed_off(fenv: FaultEnv, fault_report: Report) -> None:
    a = fenv.name("polled")
    configure(fenv, "rollout = true\n")
    first = fenv.repo.commit({**base_files(fenv, service(a)), "inventory/rollout.toml": ONE_WAVE})
    push_wave(fenv, first)
    with git_http(fenv.repo.remote.parent) as server:
        url = server.url("remote.git")
        assert synced(fenv, repo=url)["result"] == "applied"
        server.take()
        assert synced(fenv, repo=url)["result"] == "noop"
        assert [r[2] for r in server.take()] == ["ls-refs"], "a no-change poll: one request"
        since = time.time()
        server.refuse, server.retry_after = 429, "30"
        refused = fenv.run("sync", repo=url)
        asked_refused = server.take()
        held = fenv.run("sync", repo=url)  # the timer's next run, within the backoff
        asked_held = server.take()
        server.refuse = None
        started = time.monotonic()  # the operator does not wait the 30 s out: --force asks
        forced = synced(fenv, "--force", repo=url)
        converge = time.monotonic() - started
        server.take()
        after = fenv.run("sync", "--json", repo=url)  # the backoff ended with that success
        asked_after = server.take()
        logged = events(fenv, since, "sync.backoff")
    lines = refused.stderr.strip().splitlines()
    fault_report(
        "git server rate-limits (429, Retry-After 30)",
        f"{lines[0] if lines else refused.stderr!r}; the next run asks nothing "
        f"({held.stdout.strip()[:80]}...); sync --force asks anyway and converges",
        converge,
        True,
    )
    assert refused.returncode == 1 and len(lines) == 1, refused.stderr
    assert "answered 429" in lines[0] and "next poll not before" in lines[0]
    assert len(asked_refused) == 1, "no retry inside the run"
    assert held.returncode == 0 and "backing off from the git server" in held.stdout
    assert asked_held == [], "a run within the backoff asks the git server nothing"
    assert len(logged) == 1, "one journal line for the held run"
    assert all("backing off" in e["MESSAGE"] for e in logged)
    assert "(in 30 s;" in lines[0] or "(in 29 s;" in lines[0], "Retry-After honoured"
    assert forced["result"] in ("applied", "noop")
    assert json.loads(after.stdout)["result"] == "noop" and len(asked_after) == 1


def test_host_left_in_no_wave_is_refused(fenv: FaultEnv, fault_report: Report) -> None:
    a = fenv.name("nowave")
    unit = f"{a}.service"
    configure(fenv, "rollout = true\n")
    good = fenv.repo.commit({**base_files(fenv, service(a)), "inventory/rollout.toml": ONE_WAVE})
    push_wave(fenv, good)
    assert fenv.sync()["result"] == "applied"
    before = fenv.invocations(unit)
    bad_waves = '[[rollout.waves]]\nname = "all"\nhosts = ["web"]\npercent = 10\n'
    bad = fenv.repo.commit(
        {**base_files(fenv, service(a, greeting="x")), "inventory/rollout.toml": bad_waves}
    )
    push_wave(fenv, bad)
    proc = fenv.run("sync")
    lines = proc.stderr.strip().splitlines()
    untouched = fenv.invocations(unit) == before
    fault_report(
        "rollout.toml refused (a wave with both hosts and percent)",
        f"{lines[0] if lines else proc.stderr!r}; host untouched, keeps its revision",
        None,
        untouched,
    )
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "inventory/rollout.toml: rollout.waves[0]: a wave has either" in lines[0]
    assert untouched
    metrics = fleet_metrics(fenv)  # the host tried `bad` and failed; healthy on `good`
    who = {"host": "testhost", "wave": "all"}
    assert metrics["reconciler_rollout_info"] == ({**who, "revision": good, "target": bad}, 1)
    assert metrics["reconciler_rollout_failed"] == ({**who, "target": bad}, 1)
    assert metrics["reconciler_rollout_healthy_since_timestamp_seconds"][1] > 0
    assert metrics["reconciler_rollbacks_total"] == (who, 0)
    assert metrics["reconciler_last_success_timestamp_seconds"][1] > 0


def test_rollout_turned_on_before_any_wave_ref_holds(fenv: FaultEnv, fault_report: Report) -> None:
    """A first operator's report: ``rollout = true`` on a host that had applied a revision
    (without rollout.toml), before the promoter created any wave ref: every sync failed
    (exit 1, "no wave refs yet"), so every timer run was a failed run. As the README says
    of a wave ref that does not exist yet, the host holds its revision, then follows."""
    a = fenv.name("early")
    unit = f"{a}.service"
    configure(fenv, "")
    first = fenv.repo.commit(base_files(fenv, service(a)))
    assert fenv.sync()["result"] == "applied"
    before = fenv.invocations(unit)
    configure(fenv, "rollout = true\n")
    waves = fenv.repo.commit({"inventory/rollout.toml": ONE_WAVE}, "waves")
    held = fenv.run("sync", "--json")
    started = time.monotonic()
    push_wave(fenv, waves)  # the promoter's first move
    followed = fenv.sync()
    fault_report(
        "rollout turned on before the promoter created any wave ref",
        "held (exit 0, one line: no wave refs yet, the host keeps its revision); follows "
        "its wave once the promoter created it",
        time.monotonic() - started,
        fenv.invocations(unit) == before,
    )
    assert held.returncode == 0, held.stderr
    result = json.loads(held.stdout)
    assert result["result"] == "held" and "no wave refs" in result["message"], result
    assert result["revision"] == first, result  # the revision it keeps
    assert followed["revision"] == waves and followed["result"] in ("applied", "noop"), followed
    assert fenv.invocations(unit) == before


def test_host_moved_to_a_wave_behind_it_holds(fenv: FaultEnv, fault_report: Report) -> None:
    """An operator moves the host from wave a to wave b: the commit doing it reaches the
    host through a, and b's ref is still behind it. Not a force-push: the host holds."""
    a = fenv.name("mover")
    unit = f"{a}.service"
    configure(fenv, "rollout = true\n")
    in_a = '[[rollout.waves]]\nname = "a"\nhosts = ["testhost"]\n'
    in_a += '[[rollout.waves]]\nname = "b"\npercent = 100\n'
    first = fenv.repo.commit({**base_files(fenv, service(a)), "inventory/rollout.toml": in_a})
    for name in ("a", "b"):
        git(fenv.repo.work, "push", "-q", "origin", f"{first}:refs/heads/rollout/{name}")
    assert fenv.sync()["result"] == "applied"
    in_b = '[[rollout.waves]]\nname = "a"\nhosts = []\n'
    in_b += '[[rollout.waves]]\nname = "b"\npercent = 100\n'
    moved = fenv.repo.commit({"inventory/rollout.toml": in_b}, "move testhost to wave b")
    git(fenv.repo.work, "push", "-q", "origin", f"{moved}:refs/heads/rollout/a")
    assert fenv.sync()["revision"] == moved  # through wave a
    before = fenv.invocations(unit)
    held = fenv.run("sync", "--json")  # now in wave b, whose ref is at `first`
    started = time.monotonic()
    git(fenv.repo.work, "push", "-q", "origin", f"{moved}:refs/heads/rollout/b")
    caught_up = fenv.sync()
    fault_report(
        "host moved to a wave whose ref is behind its revision",
        "held (exit 0, one line: holding until the wave reaches it), never refused as a "
        "downgrade; follows the new wave once it caught up",
        time.monotonic() - started,
        fenv.invocations(unit) == before,
    )
    assert held.returncode == 0, held.stderr
    result = json.loads(held.stdout)
    assert result["result"] == "held" and "moved to wave 'b'" in result["message"]
    assert fenv.invocations(unit) == before
    assert caught_up["result"] == "noop" and caught_up["revision"] == moved


def test_timer_run_refused_briefly_asks_once_more(fenv: FaultEnv, fault_report: Report) -> None:
    """The timer's run meets a per-minute limiter (429, Retry-After 1): it asks once more
    within the run at a random moment past the wait, and syncs (``poll_retry_sec = 2``
    keeps the test short: the moment is drawn within 2 s past the wait, not a minute)."""
    a = fenv.name("retried")
    configure(fenv, "rollout = true\npoll_retry_sec = 2\n")
    first = fenv.repo.commit({**base_files(fenv, service(a)), "inventory/rollout.toml": ONE_WAVE})
    push_wave(fenv, first)
    with git_http(fenv.repo.remote.parent) as server:
        url = server.url("remote.git")
        server.refuse, server.retry_after, server.refuse_count = 429, "1", 1
        started = time.monotonic()
        result = synced(fenv, "--trigger", "timer", repo=url)
        seconds = time.monotonic() - started
        asked = [r[2] for r in server.take()]
    fault_report(
        "git server refuses a timer's poll once (429, Retry-After 1)",
        f"asked once more within the run after {seconds:.1f}s and applied",
        seconds,
        True,
    )
    assert result["result"] == "applied"
    assert asked[:2] == ["ls-refs", "ls-refs"], asked  # refused, then asked again
    assert seconds >= 1, "not before the Retry-After"
