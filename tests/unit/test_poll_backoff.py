"""core.retry.next_poll_backoff and remote's pkt-line codec (pure): the poll's own rules."""

from __future__ import annotations

import pytest

from reconciler.core.retry import PollBackoff, next_poll_backoff
from reconciler.reconcile import remote

URL = "https://git.example.com/ops/hosts.git"

# (previous failures for URL or None, retry_after, rand) -> (failures, delay)
CASES = [
    (None, None, 0.0, 1, 30.0),  # base 60, jittered into its upper half: 30..60
    (None, None, 0.999, 1, 59.97),
    (1, None, 0.0, 2, 60.0),  # doubled
    (6, None, 0.0, 7, 1800.0),  # 60 * 2**6 = 3840, capped at 3600, jittered: 1800..3600
    (None, 5.0, 0.5, 1, 5.0),  # a Retry-After replaces the exponential wait ...
    (3, 7200.0, 0.5, 4, 3600.0),  # ... capped the same
    (None, -3.0, 0.5, 1, 0.0),
]


@pytest.mark.parametrize(("before", "retry_after", "rand", "failures", "delay"), CASES)
def test_next_poll_backoff(
    before: int | None, retry_after: float | None, rand: float, failures: int, delay: float
) -> None:
    previous = PollBackoff(URL, before, 900.0, "429") if before else None
    got = next_poll_backoff(
        previous, URL, "why", now=1000.0, retry_after=retry_after, base=60, cap=3600, rand=rand
    )
    assert (got.url, got.failures, got.why) == (URL, failures, "why")
    assert got.until == pytest.approx(1000.0 + delay)


def test_failures_count_per_url() -> None:
    previous = PollBackoff("https://other.example.com/x.git", 5, 900.0, "503")
    got = next_poll_backoff(
        previous, URL, "why", now=0.0, retry_after=None, base=60, cap=3600, rand=0.0
    )
    assert got.failures == 1


def test_ls_refs_request_and_answer() -> None:
    body = remote.ls_refs_request(["refs/heads/rollout/"])
    assert body == (
        b"0014command=ls-refs\n0015agent=reconciler\n0001"
        b"0009peel\n0023ref-prefix refs/heads/rollout/\n0000"
    )
    oid, tag, peeled = "a" * 40, "b" * 40, "c" * 40
    answer = remote.pkt_line(f"{oid} refs/heads/rollout/canary\n")
    answer += remote.pkt_line(f"{tag} refs/tags/v1 peeled:{peeled}\n") + b"0000"
    assert remote.parse_ls_refs(answer) == {
        "refs/heads/rollout/canary": oid,
        "refs/tags/v1": peeled,
    }
    assert remote.parse_ls_refs(b"0000") == {}


@pytest.mark.parametrize("answer", [b"", b"<html>", b"0008abc\n0000", b"00ff" + b"x" * 10, b"0004"])
def test_anything_but_an_ls_refs_answer_asks_git_instead(answer: bytes) -> None:
    with pytest.raises(remote._NotV2):
        remote.parse_ls_refs(answer)


def test_a_server_error_line_is_one_line() -> None:
    with pytest.raises(remote.SourceError, match="refused the ref listing: access denied"):
        remote.parse_ls_refs(remote.pkt_line("ERR access denied\n"))


@pytest.mark.parametrize(
    ("url", "served"),
    [
        ("https://git.example.com/ops/hosts.git", True),
        ("http://deploy:tok@10.0.0.1:8080/hosts.git", True),
        ("ssh://git@git.example.com/ops/hosts.git", True),
        ("git://127.0.0.1:9418/remote.git", True),
        ("git@git.example.com:ops/hosts.git", True),
        ("/srv/git/hosts.git", False),
        ("./hosts.git", False),
        ("hosts.git", False),
        ("file:///srv/git/hosts.git", False),
    ],
)
def test_only_a_git_server_is_backed_off_from(url: str, served: bool) -> None:
    """A local repository timed out under load and held every later sync for a minute."""
    from reconciler.reconcile.backoff import served as is_served

    assert is_served(url) is served
