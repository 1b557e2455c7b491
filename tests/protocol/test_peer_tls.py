"""The peer link under mutual TLS over real TCP on 127.0.0.1: who is let in, and what a stranger hears.

The certificates are colod.certs' (tests.certs): one CA with the nodes, and another CA.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase

from colod.protocol import (
    CheckpointId,
    CheckpointState,
    EmulatorContext,
    LocalEndedReplication,
    PeerEndedReplication,
    ReplicationEndReason,
    StreamError,
    StreamHeader,
)
from colod.protocol.handshake import (
    CertificateMismatch,
    DomainMismatch,
    HandshakeTimeout,
    Hello,
    NotAuthenticated,
    Role,
)
from colod.protocol.peer import LinkTiming, PeerLinkFactory, link_of
from colod.tls import PeerTLS, load
from tests import certs
from tests.rig import async_test
from tests.strangers import NO_CERTIFICATE, PLAIN, Credentials, Stranger, visit

from .streams import encode
from .test_peer import Recorder, wait_for

PRIMARY = Hello(Role.PRIMARY, "guest1", "host-a")
SECONDARY = Hello(Role.SECONDARY, "guest1", "host-b")
TIMING = LinkTiming(heartbeat_interval=1.0, silence_timeout=5.0, handshake_timeout=10.0)
#: A record header claiming a body over 128 MiB.
GARBAGE = b"\xa5" * 16


def node_tls(node: str, authority: object = None) -> PeerTLS:
    files = certs.files(node, authority)  # type: ignore[arg-type]
    return PeerTLS(load(str(files.ca), str(files.certificate), str(files.key), node))


class PeerLinkTLSTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.primary, self.secondary = Recorder(), Recorder()

    async def listen(self, local: Hello = SECONDARY, node: str = "host-b", peer: str = "host-a") -> int:
        """The secondary's link under TLS with ``node``'s certificate, expecting the peer ``peer``."""
        factory = PeerLinkFactory(local, peer, self.secondary, self.clock, TIMING, tls=node_tls(node))
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    async def dial(self, port: int, node: str = "host-a", peer: str = "host-b") -> None:
        factory = PeerLinkFactory(PRIMARY, peer, self.primary, self.clock, TIMING, tls=node_tls(node))
        link = link_of(await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory))
        self.addCleanup(link.transport.abortConnection)

    async def refused(self, port: int, credentials: Credentials, says: bytes = PRIMARY.encode()) -> Stranger:
        """A stranger is refused and hears nothing of this node (under TLS nothing at all); returns it."""
        stranger = await visit(port, credentials, says)
        await wait_for(lambda: self.secondary.lost.called)
        self.assertFalse(self.secondary.ready.called)
        for secret in (b"ColodLnk", SECONDARY.domain.encode(), SECONDARY.node.encode()):
            self.assertNotIn(secret, stranger.heard)
        if credentials.tls:
            self.assertEqual(stranger.heard, b"")
        return stranger

    async def loss(self, recorder: Recorder) -> BaseException:
        return await recorder.lost  # type: ignore[no-any-return]

    @async_test
    async def test_both_channels_under_tls(self) -> None:
        """The nodes of one CA, each the other's configured peer, link under TLS 1.3 and exchange records."""
        await self.dial(await self.listen())
        peer_of_primary = await self.primary.ready
        self.assertEqual((peer_of_primary, await self.secondary.ready), (SECONDARY, PRIMARY))
        link = self.primary.link
        assert link is not None
        self.assertTrue(ISSLTransport.providedBy(link.transport))
        self.assertEqual(link.transport.getHandle().get_protocol_version_name(), "TLSv1.3")
        link.sendRecord(EmulatorContext(blob=b"dm"))
        self.secondary.link.sendRecord(CheckpointState(CheckpointId.SVM_READY))
        await wait_for(lambda: len(self.secondary.records) == 2 and len(self.primary.records) == 1)
        self.assertEqual(self.secondary.records, [StreamHeader(), EmulatorContext(blob=b"dm")])
        link.end(ReplicationEndReason.SHUTDOWN, "colod stopping")
        told = await self.loss(self.secondary)
        self.assertIsInstance(told, PeerEndedReplication)
        self.assertEqual(str(told), "the peer ended replication: shutdown: colod stopping")
        self.assertIsInstance(await self.loss(self.primary), LocalEndedReplication)

    @async_test
    async def test_plain_tcp_is_refused_unheard(self) -> None:
        port = await self.listen()
        await self.refused(port, PLAIN)
        reason = await self.loss(self.secondary)
        self.assertIsInstance(reason, NotAuthenticated)
        self.assertRegex(str(reason), r"^TLS handshake failed: ")

    @async_test
    async def test_no_certificate_is_refused_unheard(self) -> None:
        port = await self.listen()
        await self.refused(port, NO_CERTIFICATE)
        reason = await self.loss(self.secondary)
        self.assertIsInstance(reason, NotAuthenticated)
        self.assertIn("certificate", str(reason))

    @async_test
    async def test_another_cas_certificate_is_refused_unheard(self) -> None:
        """A certificate with the right name from another CA."""
        port = await self.listen()
        await self.refused(port, Credentials(tls=True, files=certs.files("host-a", certs.theirs())))
        reason = await self.loss(self.secondary)
        self.assertIsInstance(reason, NotAuthenticated)
        self.assertIn("certificate verify failed", str(reason))

    @async_test
    async def test_another_node_of_the_ca_is_refused_by_name(self) -> None:
        port = await self.listen()
        await self.refused(port, Credentials(tls=True, files=certs.files("host-c")))
        reason = await self.loss(self.secondary)
        self.assertIsInstance(reason, CertificateMismatch)
        self.assertEqual(str(reason), "the peer's certificate is for 'host-c', not for 'host-a'")

    @async_test
    async def test_the_primary_refuses_a_wrong_secondary_unheard(self) -> None:
        """The primary checks the server too: a node of the CA that is not its secondary never hears its
        hello (the server here is host-c, a full colod link that would say what it heard)."""
        port = await self.listen(local=Hello(Role.SECONDARY, "guest1", "host-c"), node="host-c")
        await self.dial(port)
        reason = await self.loss(self.primary)
        self.assertIsInstance(reason, CertificateMismatch)
        self.assertEqual(str(reason), "the peer's certificate is for 'host-c', not for 'host-b'")
        lost = await self.loss(self.secondary)
        self.assertFalse(self.secondary.ready.called)
        self.assertNotIsInstance(lost, DomainMismatch)

    @async_test
    async def test_wrong_domain_is_refused_by_name(self) -> None:
        """The configured peer, authenticated, for another domain: the hellos name the mismatch."""
        port = await self.listen(local=Hello(Role.SECONDARY, "guest2", "host-b"))
        await self.dial(port)
        reason = await self.loss(self.secondary)
        self.assertIsInstance(reason, DomainMismatch)
        self.assertEqual(str(reason), "peer protects domain 'guest1', this side 'guest2'")
        self.assertFalse(self.secondary.ready.called)

    @async_test
    async def test_tls_handshake_has_a_deadline(self) -> None:
        """A client that connects and never speaks TLS is dropped at the handshake deadline."""
        port = await self.listen()
        stranger = Stranger(b"")
        await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(Factory.forProtocol(lambda: stranger))
        await wait_for(lambda: bool(self.clock.getDelayedCalls()))
        self.clock.advance(TIMING.handshake_timeout)
        reason = await self.loss(self.secondary)
        self.assertIsInstance(reason, HandshakeTimeout)
        self.assertEqual(str(reason), "no completed TLS handshake from the peer within 10.0 s")
        await stranger.closed
        self.assertEqual(stranger.heard, b"")

    async def authenticated_says(self, data: bytes) -> BaseException:
        """The configured primary (its certificate) says its hello, then ``data``: why the secondary ends."""
        port = await self.listen()
        files = certs.files("host-a")
        options = load(str(files.ca), str(files.certificate), str(files.key), "host-a")
        stranger = Stranger(PRIMARY.encode() + encode([StreamHeader()]) + data)
        factory = TLSMemoryBIOFactory(options, True, Factory.forProtocol(lambda: stranger), reactor)
        await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
        self.addCleanup(lambda: stranger.transport.abortConnection())
        await self.secondary.ready
        return await self.loss(self.secondary)

    @async_test
    async def test_oversize_record_is_refused_by_name(self) -> None:
        reason = await self.authenticated_says(GARBAGE)
        self.assertIsInstance(reason, StreamError)
        self.assertEqual(str(reason), "offset 20: record type 0xa5a5a5a5 claims 2779096485 bytes, "
                                      "over the 128 MiB limit")

    @async_test
    async def test_replayed_hello_is_refused_by_name(self) -> None:
        """A second hello, where the stream's first record is due: its magic read as a record header."""
        reason = await self.authenticated_says(PRIMARY.encode())
        self.assertIsInstance(reason, StreamError)
        self.assertEqual(str(reason), "offset 20: record type 0x6f6c6f43 claims 1802390628 bytes, "
                                      "over the 128 MiB limit")

    def test_a_tls_link_needs_its_peers_name(self) -> None:
        with self.assertRaises(ValueError):
            PeerLinkFactory(PRIMARY, None, self.primary, self.clock, TIMING,
                            tls=node_tls("host-a")).buildProtocol(None)

