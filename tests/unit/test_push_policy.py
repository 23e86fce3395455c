"""The webhook's checks, replay window, rate limit and sync gate (pure, table-driven)."""

from __future__ import annotations

import json

import pytest

from reconciler.core.push_policy import (
    QUEUED,
    STARTED,
    Event,
    RateLimiter,
    Rejection,
    ReplayWindow,
    SyncGate,
    WebhookConfig,
    check_length,
    follows,
    parse_config,
    parse_event,
    parse_listen,
    replay_keys,
    route,
    wanted_ref,
)
from reconciler.errors import UsageError

MIB = 1 << 20


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"content-length": "0"}, 0),
        ({"content-length": "1048576"}, MIB),
        ({"content-length": "1048577"}, 413),
        ({"content-length": "99999999999999999999"}, 413),
        ({"content-length": "-1"}, 400),
        ({"content-length": "12a"}, 400),
        ({"transfer-encoding": "chunked"}, 411),
        ({"transfer-encoding": "chunked", "content-length": "5"}, 411),
    ],
)
def test_check_length(headers: dict[str, str], expected: int | None) -> None:
    got = check_length(headers, MIB)
    if isinstance(got, Rejection):
        assert got.status == expected
    else:
        assert got == expected


@pytest.mark.parametrize(
    ("method", "path", "length", "expected"),
    [
        ("POST", "/hooks/push", 10, "push"),
        ("POST", "/hooks/push?x=1", 10, "push"),
        ("POST", "/hooks/push", None, 411),
        ("GET", "/hooks/push", None, 405),
        ("PUT", "/hooks/push", 10, 405),
        ("GET", "/healthz", None, "health"),
        ("POST", "/healthz", 3, 405),
        ("POST", "/hooks/push/", 10, 404),
        ("GET", "/", None, 404),
        ("POST", "/../hooks/push", 10, 404),
    ],
)
def test_route(method: str, path: str, length: int | None, expected: str | int) -> None:
    got = route(method, path, length)
    assert (got.status if isinstance(got, Rejection) else got) == expected


PUSH = json.dumps({"ref": "refs/heads/main", "after": "abc"}).encode()


@pytest.mark.parametrize(
    ("body", "headers", "expected"),
    [
        (PUSH, {"x-github-event": "push", "x-github-delivery": "d-1"}, ("push", "d-1")),
        (PUSH, {"x-gitea-event": "push", "x-gitea-delivery": "g1"}, ("push", "g1")),
        (PUSH, {"x-gitlab-event": "Push Hook"}, ("push", None)),
        (PUSH, {}, ("push", None)),
        (b'{"zen": "x"}', {"x-github-event": "ping"}, ("ping", None)),
        (b'{"action": "opened"}', {"x-github-event": "issues"}, ("issues", None)),
        (b"{}", {}, ("unknown", None)),
        (b"not json", {"x-github-event": "push"}, 400),
        (b"\xff\xfe", {}, 400),
        (b"[1, 2]", {}, 400),
        (b'{"after": "abc"}', {"x-github-event": "push"}, 400),
        (b'{"ref": 5}', {"x-github-event": "push"}, 400),
        (PUSH, {"x-github-delivery": "a\nb"}, 400),
        (PUSH, {"x-github-delivery": "x" * 129}, 400),
        (b"[" * 100_000 + b"]" * 100_000, {}, 400),
    ],
)
def test_parse_event(body: bytes, headers: dict[str, str], expected: object) -> None:
    got = parse_event(body, headers)
    if isinstance(got, Rejection):
        assert got.status == expected
    else:
        assert (got.kind, got.delivery) == expected


def test_replay_keys_cover_the_unsigned_delivery_id_and_the_signed_body() -> None:
    push = parse_event(PUSH, {"x-github-event": "push", "x-github-delivery": "d1"})
    assert isinstance(push, Event)
    assert replay_keys(push) == ["id:d1", f"body:{push.digest}"]
    ping = parse_event(b"{}", {"x-github-event": "ping"})
    assert isinstance(ping, Event) and replay_keys(ping) == []


@pytest.mark.parametrize(
    ("ref", "expected"),
    [("main", "refs/heads/main"), ("refs/heads/x", "refs/heads/x"), ("v/1", "refs/heads/v/1")],
)
def test_wanted_ref(ref: str, expected: str) -> None:
    assert wanted_ref(ref) == expected


@pytest.mark.parametrize(
    ("rollout", "pushed", "expected"),
    [
        (False, "refs/heads/main", True),
        (False, "refs/heads/rollout/canary", False),
        (False, None, False),
        # a rollout host follows its wave's ref, never the configured branch (a first
        # operator's report: the webhook ignored the promoter's moves, synced on main)
        (True, "refs/heads/rollout/canary", True),
        (True, "refs/heads/rollout/rest", True),
        (True, "refs/heads/main", False),
        (True, "refs/heads/rollout-control/pause", False),
        (True, "refs/heads/rollout/a/b", False),  # not a wave ref: a wave name has no '/'
    ],
)
def test_a_push_moves_what_the_host_follows(
    rollout: bool, pushed: str | None, expected: bool
) -> None:
    assert follows(pushed, wanted_ref("main", rollout)) is expected


def test_replay_window_expires_by_age_and_count_and_survives_a_dump() -> None:
    window = ReplayWindow(window_sec=100, keep=3)
    window.record(["id:a"], now=0)
    assert window.seen(["id:a"], now=50)
    assert not window.seen(["id:a"], now=101)  # older than the window
    for i, key in enumerate(["b", "c", "d", "e"]):
        window.record([f"id:{key}"], now=200 + i)
    assert not window.seen(["id:b"], now=204)  # only the last 3 are kept
    assert window.seen(["id:x", "id:e"], now=204)
    again = ReplayWindow(window_sec=100, keep=3)
    again.load(window.dump(), now=250)
    assert again.seen(["id:c"], now=250) and len(again) == 3
    fresh = ReplayWindow(window_sec=100, keep=3)
    fresh.load(window.dump(), now=400)  # everything older than the window on load
    assert len(fresh) == 0


@pytest.mark.parametrize("text", ["[]", '{"version": 2}', '{"version": 1, "entries": [5]}'])
def test_replay_window_refuses_a_foreign_file(text: str) -> None:
    with pytest.raises(ValueError):
        ReplayWindow(10, 10).load(text, now=0)


def test_rate_limiter_token_bucket_per_address() -> None:
    limiter = RateLimiter(burst=3, per_sec=1.0)
    for _ in range(3):
        assert limiter.allowed("10.0.0.1", now=0)
        limiter.charge("10.0.0.1", now=0)
    assert not limiter.allowed("10.0.0.1", now=0)
    assert limiter.retry_after("10.0.0.1", now=0) == 1
    assert limiter.allowed("10.0.0.2", now=0)  # other addresses are not affected
    assert limiter.allowed("10.0.0.1", now=1.0)  # one token back per second
    assert not limiter.allowed("10.0.0.1", now=0.5)


def test_rate_limiter_groups_an_ipv6_slash_64_and_stays_bounded() -> None:
    limiter = RateLimiter(burst=1, per_sec=0.1, max_addresses=2)
    limiter.charge("2001:db8:1:2::1", now=0)
    assert not limiter.allowed("2001:db8:1:2::ffff", now=0)
    assert limiter.allowed("2001:db8:1:3::1", now=0)
    limiter.charge("10.0.0.1", now=0)
    limiter.charge("10.0.0.2", now=0)
    assert limiter.allowed("2001:db8:1:2::1", now=0)  # the oldest bucket was dropped


def test_sync_gate_keeps_at_most_one_follow_up() -> None:
    gate = SyncGate(debounce_sec=10)
    idle, running = (lambda: False), (lambda: True)
    assert gate.request(0, idle) == STARTED
    gate.started(0)
    assert gate.due_at() is None
    assert gate.request(1, idle) == QUEUED  # within the debounce
    assert gate.due_at() == 10
    assert [gate.request(t, idle) for t in range(2, 50)] == [QUEUED] * 48  # still one slot
    gate.started(12)
    assert gate.request(30, running) == QUEUED  # a sync runs (started by the timer)
    assert gate.due_at() == 22
    gate.started(31)
    assert gate.request(45, idle) == STARTED


def test_sync_gate_never_asks_systemd_while_a_follow_up_is_pending() -> None:
    gate = SyncGate(debounce_sec=1)
    gate.pending = True

    def busy() -> bool:
        raise AssertionError("asked")

    assert gate.request(100, busy) == QUEUED


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"debounce": 1}, "debounce: unknown key"),
        ({"__init__": 1}, "__init__: unknown key"),
        ({"debounce_sec": "1"}, "expected a number, got '1'"),
        ({"debounce_sec": True}, "expected a number, got True"),
        ({"max_body_bytes": 0}, "expected a number above 0, got 0"),
        ({"replay_keep": 1.5}, "expected an integer, got 1.5"),
        ({"listen": 9420}, "expected a string"),
        ({"listen": "localhost"}, "expected HOST:PORT"),
    ],
)
def test_parse_config_refuses(raw: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_config(raw)


def test_parse_config_defaults_and_values() -> None:
    assert parse_config({}) == WebhookConfig()
    got = parse_config({"debounce_sec": 2, "max_body_bytes": 4096.0, "listen": "[::1]:80"})
    assert (got.debounce_sec, got.max_body_bytes, got.listen) == (2.0, 4096, "[::1]:80")
    assert parse_listen("[::1]:80") == ("::1", 80)
    assert parse_listen(":9420") == ("", 9420)
