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

HELLO = Hello(Role.PRIMARY, "guest1", "node-a", generation=0x0102030405)
WIRE = (bytes.fromhex("436f6c6f644c6e6b 0002 01 00 0006 0006 0000000102030405") + b"guest1node-a"
        + bytes(4))
#: A version-1 hello (no generation): refused by its version as soon as the version is in.
WIRE_V1 = bytes.fromhex("436f6c6f644c6e6b 0001 01 00 0006 0006") + b"guest1node-a" + bytes(4)


def test_layout() -> None:
    assert HELLO.encode() == WIRE
    assert len(WIRE) % 8 == 0


def test_parse_needs_every_byte() -> None:
    for cut in range(len(WIRE)):
        assert Hello.parse(WIRE[:cut]) is None
    assert Hello.parse(WIRE + b"rest") == (HELLO, len(WIRE))


@pytest.mark.parametrize(
    ("data", "error", "reason"),
    [
        (b"GET /", MalformedHello, "the peer is not a colod peer link (bad magic)"),
        (WIRE[:8] + b"\x00\x03" + WIRE[10:], VersionMismatch,
         "peer speaks link protocol version 3, this colod 2"),
        (WIRE_V1[:10], VersionMismatch, "peer speaks link protocol version 1, this colod 2"),
        (WIRE[:16] + b"\x80" + bytes(7) + WIRE[24:], MalformedHello,
         "generation 9223372036854775808 out of range in the peer's hello"),
        (WIRE[:10] + b"\x03" + WIRE[11:], MalformedHello,
         "bad role byte 3 or reserved byte 0 in the peer's hello"),
        (WIRE[:11] + b"\x01" + WIRE[12:], MalformedHello,
         "bad role byte 1 or reserved byte 1 in the peer's hello"),
        (WIRE[:12] + b"\x00\x00" + WIRE[14:], MalformedHello,
         "domain or node name length out of range in the peer's hello"),
        (WIRE[:-1] + b"\x01", MalformedHello, "non-zero padding in the peer's hello"),
        (WIRE[:24] + b"\xff" + WIRE[25:], MalformedHello, "names in the peer's hello are not UTF-8"),
    ],
)
def test_parse_refuses(data: bytes, error: type, reason: str) -> None:
    with pytest.raises(error) as caught:
        Hello.parse(data)
    assert str(caught.value) == reason


def test_check_peer() -> None:
    secondary = Hello(Role.SECONDARY, "guest1", "node-b")
    check_peer(secondary, "node-a", HELLO)
    with pytest.raises(RoleMismatch) as role:
        check_peer(Hello(Role.PRIMARY, "guest1", "node-b"), "node-a", HELLO)
    assert str(role.value) == "both ends are primary"
    with pytest.raises(DomainMismatch) as domain:
        check_peer(Hello(Role.SECONDARY, "guest2", "node-b"), "node-a", HELLO)
    assert str(domain.value) == "peer protects domain 'guest1', this side 'guest2'"
    with pytest.raises(PeerMismatch) as node:
        check_peer(secondary, "node-c", HELLO)
    assert str(node.value) == "peer is node 'node-a', expected 'node-c'"


def test_generation_must_fit() -> None:
    with pytest.raises(ValueError, match=r"^generation must be 0 to 9223372036854775807$"):
        Hello(Role.PRIMARY, "d", "n", generation=-1).encode()
    assert Hello.parse(Hello(Role.PRIMARY, "d", "n", generation=2**63 - 1).encode()) is not None


def test_names_must_fit() -> None:
    with pytest.raises(ValueError, match=r"^domain name must be 1 to 255 bytes of UTF-8$"):
        Hello(Role.PRIMARY, "", "n").encode()
    with pytest.raises(ValueError, match=r"^domain name must be 1 to 255 bytes of UTF-8$"):
        Hello(Role.PRIMARY, "d" * 256, "n").encode()
    with pytest.raises(ValueError, match=r"^node name must be 1 to 255 bytes of UTF-8$"):
        Hello(Role.PRIMARY, "d", "n" * 256).encode()
