"""The peer link hello: layout, incremental parsing, named mismatches."""

from __future__ import annotations

import pytest

from colod.protocol.handshake import (
    DomainMismatch,
    Hello,
    MalformedHello,
    PeerMismatch,
    Role,
    RoleMismatch,
    VersionMismatch,
    check_peer,
)

HELLO = Hello(Role.PRIMARY, "guest1", "node-a")
WIRE = bytes.fromhex("436f6c6f644c6e6b 0001 01 00 0006 0006") + b"guest1node-a" + bytes(4)


def test_layout() -> None:
    assert HELLO.encode() == WIRE
    assert len(WIRE) % 8 == 0


def test_parse_needs_every_byte() -> None:
    for cut in range(len(WIRE)):
        assert Hello.parse(WIRE[:cut]) is None
    assert Hello.parse(WIRE + b"rest") == (HELLO, len(WIRE))


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"GET /", MalformedHello),
        (WIRE[:8] + b"\x00\x02" + WIRE[10:], VersionMismatch),
        (WIRE[:10] + b"\x03" + WIRE[11:], MalformedHello),
        (WIRE[:12] + b"\x00\x00" + WIRE[14:], MalformedHello),
        (WIRE[:-1] + b"\x01", MalformedHello),
        (WIRE[:16] + b"\xff" + WIRE[17:], MalformedHello),
    ],
)
def test_parse_refuses(data: bytes, error: type) -> None:
    with pytest.raises(error):
        Hello.parse(data)


def test_check_peer() -> None:
    secondary = Hello(Role.SECONDARY, "guest1", "node-b")
    check_peer(secondary, "node-a", HELLO)
    with pytest.raises(RoleMismatch):
        check_peer(Hello(Role.PRIMARY, "guest1", "node-b"), "node-a", HELLO)
    with pytest.raises(DomainMismatch):
        check_peer(Hello(Role.SECONDARY, "guest2", "node-b"), "node-a", HELLO)
    with pytest.raises(PeerMismatch):
        check_peer(secondary, "node-c", HELLO)


def test_names_must_fit() -> None:
    with pytest.raises(ValueError):
        Hello(Role.PRIMARY, "", "n").encode()
    with pytest.raises(ValueError):
        Hello(Role.PRIMARY, "d" * 256, "n").encode()
