"""Strangers at the peer link's door: clients that are not the configured primary, for the TLS tests.

Each says its bytes as soon as it can (under TLS, Twisted holds them until
its handshake is done) and keeps everything it hears, so that a test can
check what a stranger learned.  A TLS stranger checks nothing of the server
(an attacker wants in, not safety): it talks to anyone.
"""

from __future__ import annotations

import attrs
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from colod.tls import load
from tests.certs import Files

#: Seconds a stranger waits for the link to close on it.
CLOSE_TIMEOUT = 10.0


class Stranger(Protocol):
    """Says ``says`` once connected; keeps what it hears (decrypted, under TLS) and why it was closed."""

    def __init__(self, says: bytes) -> None:
        self.says = says
        self.heard = b""
        #: This end's port, which the link's log names.
        self.port = 0
        #: Fires with why the connection ended (an exception, never an errback).
        self.closed: Deferred[BaseException] = Deferred()

    def connectionMade(self) -> None:
        self.port = self.transport.getHost().port
        if self.says:
            self.transport.write(self.says)

    def dataReceived(self, data: bytes) -> None:
        self.heard += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed.callback(reason.value)


@attrs.frozen
class Credentials:
    """What a stranger brings: no TLS, TLS without a certificate, or TLS with ``files``' certificate."""

    tls: bool
    files: Files | None = None

    def options(self) -> ssl.CertificateOptions:
        if self.files is None:
            return ssl.CertificateOptions(verify=False, raiseMinimumTo=ssl.TLSVersion.TLSv1_3)
        name = self.files.ca.parent.name  # the node the certificate is for (colod.certs' layout)
        real = load(str(self.files.ca), str(self.files.certificate), str(self.files.key), name)
        return ssl.CertificateOptions(privateKey=real.privateKey, certificate=real.certificate, verify=False,
                                      raiseMinimumTo=ssl.TLSVersion.TLSv1_3)


PLAIN = Credentials(tls=False)
NO_CERTIFICATE = Credentials(tls=True)


async def arrive(port: int, credentials: Credentials, says: bytes) -> Stranger:
    """Connect to 127.0.0.1:``port`` as a stranger that says ``says``; returns it connected."""
    stranger = Stranger(says)
    factory: Factory = Factory.forProtocol(lambda: stranger)
    if credentials.tls:
        factory = TLSMemoryBIOFactory(credentials.options(), True, factory, reactor)
    await TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5).connect(factory)
    return stranger


async def visit(port: int, credentials: Credentials, says: bytes) -> Stranger:
    """As L{arrive}; returns the stranger once it was closed on."""
    stranger = await arrive(port, credentials, says)
    await stranger.closed.addTimeout(CLOSE_TIMEOUT, reactor)
    return stranger
