"""The D-Bus handshake and address parsing (``systemd.auth``) against jeepney's."""

from __future__ import annotations

import pytest
from jeepney.auth import BEGIN, Authenticator, make_auth_external
from jeepney.bus import get_connectable_addresses

from reconciler.systemd import auth


@pytest.mark.parametrize(
    "address",
    [
        "unix:path=/run/dbus/system_bus_socket",
        "unix:path=/proc/123/root/run/systemd/private",
        "unix:abstract=/tmp/dbus-XYZ,guid=0123",
        "tcp:host=x,port=1;unix:path=/run/a%20b%3bc",
        "unix:guid=1,path=/p",
    ],
)
def test_socket_path_is_jeepneys(address: str) -> None:
    assert auth.socket_path(address) == next(get_connectable_addresses(address))


@pytest.mark.parametrize("address", ["tcp:host=x,port=1", "", "path=/x", "unix:guid=1"])
def test_an_address_without_a_unix_socket_is_refused(address: str) -> None:
    with pytest.raises(ValueError):
        auth.socket_path(address)


@pytest.mark.parametrize("uid", [0, 1000, 65534])
def test_the_handshake_sends_jeepneys_bytes(uid: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: uid)  # jeepney reads the euid itself
    jeep = Authenticator(inc_null_byte=False)
    assert auth.external(uid) == next(iter(jeep)) == make_auth_external()
    ours = auth.Handshake()
    ours.feed(b"OK 1234")
    assert not ours.done  # no line end yet
    ours.feed(b"abcd\r\n")
    jeep.feed(b"OK 1234abcd\r\n")
    assert ours.done and jeep.authenticated and auth.BEGIN == BEGIN


@pytest.mark.parametrize(
    "reply", [b"REJECTED EXTERNAL\r\n", b"ERROR\r\n", b"OK 12\r\nDATA\r\n", b"x" * 9000]
)
def test_a_refusal_or_garbage_raises(reply: bytes) -> None:
    with pytest.raises(auth.AuthenticationError):
        auth.Handshake().feed(reply)
