"""Webhook authentication (pure): HMAC-SHA256 signatures and tokens, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

import pytest

from reconciler.core.push_policy import authenticate, signature_matches, token_matches

SECRET = b"s3cret-0123456789abcdef"
BODY = b'{"ref": "refs/heads/main", "after": "1a2b3c"}'


def sign(body: bytes, secret: bytes = SECRET) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


GOOD = sign(BODY)

# (case, headers, expected reason or None when accepted)
CASES: list[tuple[str, dict[str, str], str | None]] = [
    ("valid github signature", {"x-hub-signature-256": GOOD}, None),
    ("valid, upper-case hex", {"x-hub-signature-256": "sha256=" + GOOD[7:].upper()}, None),
    ("valid, prefix in capitals", {"x-hub-signature-256": "SHA256=" + GOOD[7:]}, None),
    ("valid gitea bare hex", {"x-gitea-signature": GOOD[7:]}, None),
    ("valid, surrounding spaces", {"x-hub-signature-256": f"  {GOOD} "}, None),
    ("wrong secret", {"x-hub-signature-256": sign(BODY, b"other")}, "bad-signature"),
    ("signature of another body", {"x-hub-signature-256": sign(b"{}")}, "bad-signature"),
    ("missing header", {}, "unsigned"),
    ("malformed: sha1", {"x-hub-signature-256": "sha1=" + "0" * 40}, "malformed-signature"),
    ("malformed: short hex", {"x-hub-signature-256": GOOD[:-2]}, "malformed-signature"),
    ("malformed: long hex", {"x-hub-signature-256": GOOD + "00"}, "malformed-signature"),
    ("malformed: not hex", {"x-hub-signature-256": "sha256=" + "z" * 64}, "malformed-signature"),
    ("malformed: empty", {"x-hub-signature-256": ""}, "malformed-signature"),
    ("bearer token", {"authorization": "Bearer " + SECRET.decode()}, None),
    ("bearer, other case", {"authorization": "bearer " + SECRET.decode()}, None),
    ("gitlab token", {"x-gitlab-token": SECRET.decode()}, None),
    ("wrong bearer token", {"authorization": "Bearer nope"}, "bad-token"),
    ("token prefix only", {"x-gitlab-token": SECRET.decode()[:-1]}, "bad-token"),
    ("token plus a suffix", {"x-gitlab-token": SECRET.decode() + "x"}, "bad-token"),
    ("basic auth", {"authorization": "Basic " + SECRET.decode()}, "malformed-token"),
    ("bearer without token", {"authorization": "Bearer "}, "malformed-token"),
    # A signature header decides alone: a right token never rescues a wrong signature.
    (
        "bad signature, good token",
        {"x-hub-signature-256": sign(BODY, b"x"), "x-gitlab-token": SECRET.decode()},
        "bad-signature",
    ),
]


@pytest.mark.parametrize(("case", "headers", "reason"), CASES, ids=[c[0] for c in CASES])
def test_authenticate(case: str, headers: dict[str, str], reason: str | None) -> None:
    refused = authenticate(SECRET, BODY, headers)
    if reason is None:
        assert refused is None
    else:
        assert refused is not None
        assert (refused.status, refused.reason) == (401, reason)


@pytest.mark.parametrize(("case", "headers", "reason"), CASES, ids=[c[0] for c in CASES])
def test_messages_never_carry_the_secret_or_the_signature(
    case: str, headers: dict[str, str], reason: str | None
) -> None:
    refused = authenticate(SECRET, BODY, headers)
    if refused is not None:
        assert SECRET.decode() not in refused.message
        for value in headers.values():
            assert len(value.strip()) < 10 or value.strip() not in refused.message
        assert GOOD[7:] not in refused.message


def test_signature_matches_tells_malformed_from_wrong() -> None:
    assert signature_matches(SECRET, BODY, GOOD) is True
    assert signature_matches(SECRET, BODY, sign(BODY, b"x")) is False
    assert signature_matches(SECRET, BODY, "sha256=abc") is None


def counting(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Record the lengths hmac.compare_digest is called with (the stdlib, not our code)."""
    calls: list[tuple[int, int]] = []
    real: Callable[[bytes, bytes], bool] = hmac.compare_digest

    def compare(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", compare)
    return calls


@pytest.mark.parametrize(
    "header", [GOOD, sign(BODY, b"wrong"), "sha256=" + "0" * 64], ids=["right", "wrong", "zeros"]
)
def test_signatures_are_compared_with_compare_digest(
    monkeypatch: pytest.MonkeyPatch, header: str
) -> None:
    calls = counting(monkeypatch)
    signature_matches(SECRET, BODY, header)
    assert calls == [(64, 64)]  # one constant-time comparison of two hex digests


@pytest.mark.parametrize("token", ["", "x", SECRET.decode(), "y" * 500])
def test_tokens_are_compared_as_equal_length_digests(
    monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    calls = counting(monkeypatch)
    assert token_matches(SECRET, token) is (token == SECRET.decode())
    assert calls == [(32, 32)]  # hashed first: neither the content nor the length leaks


def test_malformed_header_is_refused_without_computing_a_comparison(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = counting(monkeypatch)
    assert signature_matches(SECRET, BODY, "sha256=short") is None
    assert calls == []
