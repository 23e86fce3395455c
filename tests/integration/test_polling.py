"""Polling a git server: one request when nothing changed, a shallow fetch only when the ref
moved, the host's wave found from rollout.toml, a refusing server raises BusyError.

Real git: a bare repository served by git's ``http-backend`` behind a counting front
(tests/integration/gitserver.py) on 127.0.0.1; no systemd needed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.reconcile import fetch, remote, wave
from tests.integration.gitrepo import ConfigRepo, git
from tests.integration.gitserver import GitServer, git_http

LS_REFS = ("POST", "/remote.git/git-upload-pack", "ls-refs")
HOSTS = '[hosts.c1]\n[hosts.web1]\n[hosts.web2]\ngroups = ["web"]\n'
ROLLOUT = """
[rollout]
source = "main"
[[rollout.waves]]
name = "canary"
hosts = ["c1"]
[[rollout.waves]]
name = "rest"
percent = 100
"""
FILES = {
    "inventory/hosts.toml": HOSTS,
    "inventory/services.toml": "",
    "inventory/rollout.toml": ROLLOUT,
}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ConfigRepo, GitServer]]:
    repo = ConfigRepo(tmp_path / "git")
    with git_http(tmp_path / "git") as server:
        yield repo, server


def push_wave(repo: ConfigRepo, name: str, rev: str, *flags: str) -> None:
    git(repo.work, "push", "-q", *flags, "origin", f"{rev}:refs/heads/rollout/{name}")


def test_a_poll_that_finds_nothing_costs_one_request(
    served: tuple[ConfigRepo, GitServer], tmp_path: Path
) -> None:
    repo, server = served
    first = repo.commit(FILES, "first")
    url, cache = server.url("remote.git"), tmp_path / "cache"
    assert fetch.fetch(url, "main", cache, timeout=10).revision == first
    assert (cache / "shallow").is_file(), "a first fetch needs no history: --depth 1"
    assert ("POST", "/remote.git/git-upload-pack", "fetch") in server.take()
    for _ in range(3):
        assert fetch.fetch(url, "main", cache, timeout=10).revision == first
    assert server.take() == [LS_REFS] * 3, "one protocol v2 ls-refs per poll, no fetch"
    second = repo.commit({"inventory/services.toml": "# changed\n"}, "second")
    assert fetch.fetch(url, "main", cache, timeout=10).revision == second
    asked = [r[2] for r in server.take()]
    assert asked[0] == "ls-refs" and "fetch" in asked
    # history since the shallow cut is there: the downgrade check can tell
    assert fetch.is_ancestor(cache, first, second) is True
    assert fetch.is_ancestor(cache, second, first) is False


def test_the_host_follows_its_wave(served: tuple[ConfigRepo, GitServer], tmp_path: Path) -> None:
    repo, server = served
    old = repo.commit(FILES, "first")
    new = repo.commit({"inventory/services.toml": "# new\n"}, "second")
    push_wave(repo, "canary", new)
    push_wave(repo, "rest", old)
    url, cache = server.url("remote.git"), tmp_path / "cache"
    canary = wave.find(url, "c1", cache, None, 10)
    assert canary is not None and (canary.wave, canary.ref, canary.target) == (
        "canary",
        "refs/heads/rollout/canary",
        new,
    )
    server.take()
    rest = wave.find(url, "web2", cache, new, 10)  # the applied revision names the wave
    assert rest is not None and (rest.wave, rest.target) == ("rest", old)
    snap = fetch.fetch(url, rest.ref, cache, timeout=10, advertised=rest.advertised)
    assert snap.revision == old
    assert server.take() == [LS_REFS], "the poll's one listing serves the fetch step too"
    with pytest.raises(Exception, match="host 'nobody' is not in the inventory"):
        wave.find(url, "nobody", cache, new, 10)
    # the wave already found for the applied revision: nothing read, nothing parsed
    known = wave.find(url, "web2", tmp_path / "no-cache", new, 10, known="rest")
    assert (
        known is not None
        and (known.wave, known.target) == ("rest", old)
        and not (tmp_path / "no-cache").exists()
    )


def test_no_wave_refs_yet_is_one_line(served: tuple[ConfigRepo, GitServer], tmp_path: Path) -> None:
    repo, server = served
    first = repo.commit(FILES, "first")
    with pytest.raises(remote.SourceError, match=r"no wave refs \(refs/heads/rollout/\*\) yet"):
        wave.find(server.url("remote.git"), "c1", tmp_path / "cache", None, 10)
    # a host that applied a revision (rollout turned on before the promoter's first move)
    # holds it: no wave to find, nothing to follow yet
    assert wave.find(server.url("remote.git"), "c1", tmp_path / "cache", first, 10) is None


@pytest.mark.parametrize(("status", "retry_after"), [(429, "7"), (503, None)])
def test_a_refusing_server_is_busy(
    served: tuple[ConfigRepo, GitServer], tmp_path: Path, status: int, retry_after: str | None
) -> None:
    repo, server = served
    repo.commit(FILES, "first")
    server.refuse, server.retry_after = status, retry_after
    with pytest.raises(remote.BusyError) as caught:
        fetch.fetch(server.url("remote.git"), "main", tmp_path / "cache", timeout=10)
    assert caught.value.status == status
    assert caught.value.retry_after == (float(retry_after) if retry_after else None)
    assert f"answered {status}" in caught.value.message
    assert len(server.take()) == 1, "no retry inside a poll: the next poll backs off"


def test_a_server_that_refuses_connections_is_busy(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(remote.BusyError, match="Connection refused"):
        remote.list_refs(f"http://127.0.0.1:{port}/x.git", ["refs/heads/main"], timeout=5)


def test_a_wave_whose_ref_does_not_exist_yet_has_no_target(
    served: tuple[ConfigRepo, GitServer], tmp_path: Path
) -> None:
    repo, server = served
    first = repo.commit(FILES, "first")
    push_wave(repo, "canary", first)  # the promoter has not created rest's ref yet
    place = wave.find(server.url("remote.git"), "web1", tmp_path / "cache", None, 10)
    assert place is not None and (place.wave, place.target) == (
        "rest",
        None,
    )  # the sync holds: result "held"
