# -*- test-case-name: tests.protocol.test_handshake -*-
"""
The peer link's hello: the one thing colod puts before Xen's bytes.

Each side writes a hello as soon as the TCP connection is up and reads the
other's before anything else; Xen's stream (main channel from the primary,
back channel from the secondary) follows right after it.  The hello names the
link protocol version, the sender's role, the protected domain, the sender's
node and its generation of the domain (colod.engine.generation: how many
takeovers it knows of), so that a misdirected, stale or superseded
connection is refused before a single guest page moves.  Layout (big-endian,
like Xen's stream headers)::

    0   8  magic        "ColodLnk"
    8   2  version      2
   10   1  role         1 primary, 2 secondary
   11   1  reserved     0
   12   2  domain_len   1..255
   14   2  node_len     1..255
   16   8  generation   0..2**63-1
   24      domain name, then node name (UTF-8), zero-padded to a multiple of 8
"""

from __future__ import annotations

import struct

import attrs

from colod.role import Role

from .wire import padding

MAGIC = b"ColodLnk"
VERSION = 2
NAME_MAX = 255
GENERATION_MAX = 2**63 - 1
_FIXED = struct.Struct(">8sHBBHHQ")


_ROLE_CODES = {Role.PRIMARY: 1, Role.SECONDARY: 2}
_CODE_ROLES = {code: role for role, code in _ROLE_CODES.items()}


class HandshakeError(Exception):
    """The link was refused before the stream started; the message says why."""


class MalformedHello(HandshakeError):
    """The peer sent something that is not a colod hello."""


class VersionMismatch(HandshakeError):
    """The peer speaks another version of the link protocol."""


class RoleMismatch(HandshakeError):
    """Both ends claim the same role."""


class DomainMismatch(HandshakeError):
    """The peer protects another domain."""


class PeerMismatch(HandshakeError):
    """The peer is not the node this side is configured to pair with."""


class HandshakeTimeout(HandshakeError):
    """The peer's hello did not arrive in time."""


class NotAuthenticated(HandshakeError):
    """The TLS handshake failed: no certificate, one from another CA, not TLS at all (colod.tls)."""


class CertificateMismatch(HandshakeError):
    """The peer's certificate is from the CA but for another node than the configured peer (colod.tls)."""


class LinkRefused(HandshakeError):
    """The hello was valid, but this side's engine cannot take a link now (one is open, say)."""


@attrs.frozen
class Hello:
    role: Role
    domain: str
    node: str
    #: The sender's generation of the domain (colod.engine.generation).
    generation: int = 0

    def encode(self) -> bytes:
        domain, node = self.domain.encode(), self.node.encode()
        for what, name in (("domain", domain), ("node", node)):
            if not 0 < len(name) <= NAME_MAX:
                raise ValueError(f"{what} name must be 1 to {NAME_MAX} bytes of UTF-8")
        if not 0 <= self.generation <= GENERATION_MAX:
            raise ValueError(f"generation must be 0 to {GENERATION_MAX}")
        names = domain + node
        fixed = _FIXED.pack(MAGIC, VERSION, _ROLE_CODES[self.role], 0, len(domain), len(node),
                            self.generation)
        return fixed + names + bytes(padding(len(names)))

    @classmethod
    def parse(cls, data: bytes) -> tuple[Hello, int] | None:
        """
        A hello from the start of C{data} and its size, or None if more bytes
        are needed.

        @raise MalformedHello: C{data} does not start with a valid hello.
        @raise VersionMismatch: it is a hello of another version.
        """
        if len(data) < len(MAGIC):
            if not MAGIC.startswith(bytes(data)):
                raise MalformedHello("the peer is not a colod peer link (bad magic)")
            return None
        if bytes(data[: len(MAGIC)]) != MAGIC:
            raise MalformedHello("the peer is not a colod peer link (bad magic)")
        if len(data) >= 10 and (version := int.from_bytes(data[8:10], "big")) != VERSION:
            raise VersionMismatch(f"peer speaks link protocol version {version}, this colod {VERSION}")
        if len(data) < _FIXED.size:
            return None
        _, _, code, reserved, domain_len, node_len, generation = _FIXED.unpack_from(data)
        if code not in _CODE_ROLES or reserved:
            raise MalformedHello(f"bad role byte {code} or reserved byte {reserved} in the peer's hello")
        if not (0 < domain_len <= NAME_MAX and 0 < node_len <= NAME_MAX):
            raise MalformedHello("domain or node name length out of range in the peer's hello")
        if generation > GENERATION_MAX:
            raise MalformedHello(f"generation {generation} out of range in the peer's hello")
        names_len = domain_len + node_len
        size = _FIXED.size + names_len + padding(names_len)
        if len(data) < size:
            return None
        names = bytes(data[_FIXED.size : size])
        if any(names[names_len:]):
            raise MalformedHello("non-zero padding in the peer's hello")
        try:
            domain = names[:domain_len].decode()
            node = names[domain_len:names_len].decode()
        except UnicodeDecodeError:
            raise MalformedHello("names in the peer's hello are not UTF-8") from None
        return cls(role=_CODE_ROLES[code], domain=domain, node=node, generation=generation), size


def check_peer(local: Hello, peer_node: str | None, peer: Hello) -> None:
    """
    Accept C{peer}'s hello for a link from C{local} to the node C{peer_node}
    (None: any node).

    @raise HandshakeError: a subclass naming the mismatch.
    """
    if peer.role is local.role:
        raise RoleMismatch(f"both ends are {local.role.value}")
    if peer.domain != local.domain:
        raise DomainMismatch(f"peer protects domain {peer.domain!r}, this side {local.domain!r}")
    if peer_node is not None and peer.node != peer_node:
        raise PeerMismatch(f"peer is node {peer.node!r}, expected {peer_node!r}")
