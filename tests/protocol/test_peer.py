"""The peer link over real TCP on 127.0.0.1, with timers on injected clocks."""

from __future__ import annotations

import socket
from collections.abc import Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from colod.protocol import (
    Channel,
    CheckpointDirtyPfnList,
    CheckpointId,
    CheckpointState,
    DomainHeader,
    EmulatorContext,
    Heartbeat,
    ImageHeader,
    LibxcContext,
    LocalEndedReplication,
    PageData,
    PeerEndedReplication,
    Record,
    ReplicationEnd,
    ReplicationEndReason,
    StaticDataEnd,
    StreamCutShort,
    StreamError,
    StreamHeader,
)
from colod.protocol.handshake import (
    DomainMismatch,
    HandshakeTimeout,
    Hello,
    MalformedHello,
    PeerMismatch,
    Role,
    RoleMismatch,
    VersionMismatch,
)
from colod.protocol.peer import (
    ATTEMPTS_PER_WINDOW,
    GUARD_WINDOW,
    LOGGED_PER_WINDOW,
    READ_SIZE,
    IPeerLinkObserver,
    LinkNotOpen,
    LinkTiming,
    PeerLink,
    PeerLinkFactory,
)

from .streams import encode, pages

PRIMARY = Hello(Role.PRIMARY, "guest1", "node-a")
SECONDARY = Hello(Role.SECONDARY, "guest1", "node-b")
TIMING = LinkTiming(heartbeat_interval=1.0, silence_timeout=5.0, handshake_timeout=10.0)


@implementer(IPeerLinkObserver)
class Recorder:
    """Remembers what a link reported."""

    def __init__(self) -> None:
        self.ready: Deferred[Hello] = Deferred()
        self.lost: Deferred[BaseException] = Deferred()
        self.link: PeerLink | None = None
        self.records: list[Record] = []
        self.silences: list[float] = []
        self.losses: list[BaseException] = []

    def linkReady(self, link: PeerLink, peer: Hello) -> None:
        self.link = link
        self.ready.callback(peer)

    def recordReceived(self, link: PeerLink, record: Record) -> None:
        self.records.append(record)

    def peerSilent(self, link: PeerLink, seconds: float) -> None:
        self.silences.append(seconds)

    def linkLost(self, link: PeerLink, reason: Failure) -> None:
        self.losses.append(reason.value)
        self.lost.callback(reason.value)  # a second call fails the test


@inlineCallbacks
def wait_for(condition: Callable[[], bool], timeout: float = 5.0):
    """Let the real reactor run until C{condition()} holds; fail after C{timeout} s."""
    for _ in range(int(timeout / 0.005)):
        if condition():
            return
        yield deferLater(reactor, 0.005, lambda: None)
    raise AssertionError("condition not met in time")


class RawHello(Protocol):
    """A fake peer that sends fixed bytes and nothing else."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.port = 0

    def connectionMade(self) -> None:
        self.port = self.transport.getHost().port
        self.transport.write(self.data)


@implementer(IHalfCloseableProtocol)
class NeverCloses(RawHello):
    """A fake peer that sends fixed bytes, keeps what it receives, and never closes."""

    received = b""
    eof = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def readConnectionLost(self) -> None:
        self.eof = True

    def writeConnectionLost(self) -> None:
        pass


class PeerLinkTests(TestCase):
    def setUp(self) -> None:
        self.primary_clock, self.secondary_clock = Clock(), Clock()
        self.primary, self.secondary = Recorder(), Recorder()

    @inlineCallbacks
    def listen(self, local: Hello = SECONDARY, peer_node: str = "node-a"):
        factory = PeerLinkFactory(local, peer_node, self.secondary, self.secondary_clock, TIMING)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @inlineCallbacks
    def connect(self, port: int, factory: Factory | None = None):
        factory = factory or PeerLinkFactory(PRIMARY, "node-b", self.primary, self.primary_clock, TIMING)
        protocol = yield TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
        return protocol

    @inlineCallbacks
    def open_pair(self):
        port = yield self.listen()
        yield self.connect(port)
        peers = yield from_both(self.primary.ready, self.secondary.ready)
        self.addCleanup(self.close_pair)
        return peers

    @inlineCallbacks
    def close_pair(self):
        if not self.primary.lost.called:
            self.primary.link.close()
        yield self.primary.lost
        yield self.secondary.lost

    @inlineCallbacks
    def assertEnded(self, ender: Recorder, other: Recorder, reason: ReplicationEndReason, text: str):
        """C{other} learns the end was deliberate, C{ender} that it ended it; one linkLost each."""
        peer = yield other.lost
        self.assertIsInstance(peer, PeerEndedReplication)
        self.assertEqual((peer.reason, peer.text), (reason, text))
        local = yield ender.lost
        self.assertIsInstance(local, LocalEndedReplication)
        self.assertEqual((local.reason, local.text), (reason, text))
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual((len(ender.losses), len(other.losses)), (1, 1))
        self.assertNotIn(ReplicationEnd, [type(r) for r in ender.records + other.records])

    @inlineCallbacks
    def test_primary_shutdown(self):
        """The secondary hears that the primary stopped on purpose: not a crash, do not take over."""
        yield self.open_pair()
        self.primary.link.sendRecord(EmulatorContext(blob=b"dm"))
        self.primary.link.end(ReplicationEndReason.SHUTDOWN, "colod stopping")
        yield self.assertEnded(self.primary, self.secondary, ReplicationEndReason.SHUTDOWN, "colod stopping")
        self.assertEqual(self.secondary.records, [StreamHeader(), EmulatorContext(blob=b"dm")])
        said = [str(self.secondary.losses[0]), str(self.primary.losses[0])]
        self.assertEqual(said, ["the peer ended replication: shutdown: colod stopping",
                                "this colod ended replication: shutdown: colod stopping"])

    @inlineCallbacks
    def test_secondary_ends(self):
        """The back channel carries it too, from its first byte."""
        yield self.open_pair()
        error = ReplicationEndReason.PROTOCOL_ERROR
        self.secondary.link.end(error, "bad stream")
        yield self.assertEnded(self.secondary, self.primary, error, "bad stream")

    @inlineCallbacks
    def test_nothing_after_end(self):
        """After end() the link sends nothing; ending again, or after the loss, does nothing."""
        yield self.open_pair()
        link = self.primary.link
        link.end(ReplicationEndReason.LOCAL_FAILURE, "")
        with self.assertRaises(LinkNotOpen) as caught:
            link.sendRecord(EmulatorContext())
        self.assertEqual(str(caught.exception), "the peer link is not open")
        link.end(ReplicationEndReason.SHUTDOWN, "again")
        yield self.assertEnded(self.primary, self.secondary, ReplicationEndReason.LOCAL_FAILURE, "")
        link.end(ReplicationEndReason.SHUTDOWN, "after the loss")
        self.assertEqual(len(self.primary.losses), 1)

    @inlineCallbacks
    def test_end_waits_for_the_peer_to_close(self):
        """The ending side closes only its sending half; a peer that never closes is cut off after the
        silence timeout, and the record reached it whole."""
        port = yield self.listen()
        fake = NeverCloses(PRIMARY.encode() + encode([StreamHeader()]))
        yield self.connect(port, Factory.forProtocol(lambda: fake))
        yield self.secondary.ready
        link = self.secondary.link
        link.end(ReplicationEndReason.SHUTDOWN, "bye")
        # The observer hears at once; TCP stays half open for the peer to read the record.
        self.assertTrue(self.secondary.lost.called)
        reason = yield self.secondary.lost
        self.assertIsInstance(reason, LocalEndedReplication)
        yield wait_for(lambda: fake.eof)
        self.assertFalse(link.transport.disconnected)
        self.secondary_clock.advance(TIMING.silence_timeout)
        yield wait_for(lambda: link.transport.disconnected)
        self.assertEqual(len(self.secondary.losses), 1)
        bye = encode([ReplicationEnd(ReplicationEndReason.SHUTDOWN, "bye")], Channel.BACK)
        self.assertEqual(fake.received, SECONDARY.encode() + bye)

    @inlineCallbacks
    def test_end_inside_the_libxc_headers(self):
        """No record fits between LIBXC_CONTEXT and the domain header: the link just closes there,
        which the secondary sees as a stream cut short (before any checkpoint: nothing to take over)."""
        yield self.open_pair()
        self.primary.link.sendRecord(LibxcContext())
        self.primary.link.end(ReplicationEndReason.SHUTDOWN, "colod stopping")
        reason = yield self.secondary.lost
        self.assertIsInstance(reason, StreamCutShort)
        self.assertIn("stream ends expecting the libxc image header", str(reason))
        self.assertIsInstance((yield self.primary.lost), LocalEndedReplication)

    def test_end_before_handshake(self):
        """Before the peer's hello nothing but our hello was sent; the link closes, ended locally."""
        link = PeerLink(PRIMARY, "node-b", self.primary, self.primary_clock, TIMING)
        transport = StringTransport()
        link.makeConnection(transport)
        link.end(ReplicationEndReason.SHUTDOWN, "colod stopping")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), PRIMARY.encode())
        link.connectionLost(Failure(ConnectionDone()))
        self.assertIsInstance(self.primary.losses[0], LocalEndedReplication)
        self.assertEqual(self.primary_clock.getDelayedCalls(), [])

    @inlineCallbacks
    def test_handshake_and_both_channels(self):
        """Each side learns who the other is; main records flow P->S, back records S->P."""
        peer_of_primary, peer_of_secondary = yield self.open_pair()
        self.assertEqual(peer_of_primary, SECONDARY)
        self.assertEqual(peer_of_secondary, PRIMARY)
        sent = [LibxcContext(), ImageHeader(3), DomainHeader()]
        for record in sent:
            self.primary.link.sendRecord(record)
        back = [CheckpointState(CheckpointId.SVM_READY), CheckpointState(CheckpointId.SVM_RESUMED),
                CheckpointState(CheckpointId.SVM_SUSPENDED), CheckpointDirtyPfnList([1, 2, 3])]
        for record in back:
            self.secondary.link.sendRecord(record)
        yield wait_for(lambda: len(self.secondary.records) == 4 and len(self.primary.records) == 4)
        self.assertEqual(self.secondary.records, [StreamHeader(), *sent])
        self.assertEqual(self.primary.records, back)

    @inlineCallbacks
    def test_no_nagle_and_large_reads(self):
        """Lock-step records go out at once (no Nagle delay), and pages are read a MiB at a time."""
        yield self.open_pair()
        for link in (self.primary.link, self.secondary.link):
            handle = link.transport.getHandle()
            self.assertEqual(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)
            self.assertEqual(link.transport.bufferSize, READ_SIZE)

    @inlineCallbacks
    def test_large_page_data(self):
        """A 4 MiB PAGE_DATA crosses TCP in many segments and arrives intact."""
        yield self.open_pair()
        for record in (LibxcContext(), ImageHeader(2), DomainHeader()):
            self.primary.link.sendRecord(record)
        batch = pages(1024, fill=0x5A)
        self.primary.link.sendRecord(batch)
        yield wait_for(lambda: len(self.secondary.records) == 5)
        self.assertEqual(self.secondary.records[-1], batch)

    @inlineCallbacks
    def test_refused_records_raise(self):
        """The link refuses records its stream may not carry; the stream stays usable."""
        yield self.open_pair()
        with self.assertRaises(StreamError) as main:
            self.primary.link.sendRecord(CheckpointState(CheckpointId.SVM_READY))
        self.assertEqual(str(main.exception),
                         "offset 16: cannot send CHECKPOINT_STATE: CHECKPOINT_STATE(SVM_READY) is not "
                         "allowed in the libxl stream, before its libxc stream; expected LIBXC_CONTEXT, "
                         "EMULATOR_XENSTORE_DATA, EMULATOR_CONTEXT, END")
        with self.assertRaises(StreamError) as back:
            self.secondary.link.sendRecord(CheckpointState(CheckpointId.NEW))
        self.assertEqual(str(back.exception),
                         "offset 0: cannot send CHECKPOINT_STATE: CHECKPOINT_STATE(NEW) is not allowed "
                         "expecting the first SVM_READY; expected CHECKPOINT_STATE(SVM_READY)")
        self.primary.link.sendRecord(LibxcContext())
        yield wait_for(lambda: self.secondary.records == [StreamHeader(), LibxcContext()])

    @inlineCallbacks
    def test_records_holding_views_are_sent(self):
        """Pages read from another stream are views of its buffers (a save helper's, on a Xen primary):
        they go out whole, as Twisted's transports take only bytes."""
        yield self.open_pair()
        data = bytearray(b"\x5a" * 4096 + b"\xa5" * 4096)
        records = [LibxcContext(), ImageHeader(3), DomainHeader(), StaticDataEnd(),
                   PageData([1, 2], bytes(2), memoryview(data))]
        for record in records:
            self.primary.link.sendRecord(record)
        yield wait_for(lambda: len(self.secondary.records) == 1 + len(records))
        received = self.secondary.records[-1]
        self.assertEqual(bytes(received.data), bytes(data))
        self.assertEqual(list(received.pfns), [1, 2])

    @inlineCallbacks
    def test_heartbeats_keep_a_quiet_peer_alive(self):
        """Heartbeats every interval reset the peer's silence deadline; their absence is reported."""
        yield self.open_pair()
        self.secondary_clock.advance(4.0)
        self.primary_clock.advance(1.0)  # the primary's first heartbeat
        yield wait_for(lambda: 9.0 in [call.getTime() for call in self.secondary_clock.getDelayedCalls()])
        self.secondary_clock.advance(4.9)
        self.assertEqual(self.secondary.silences, [])
        self.secondary_clock.advance(0.1)
        self.assertEqual(self.secondary.silences, [5.0])
        self.secondary_clock.advance(5.0)
        self.assertEqual(self.secondary.silences, [5.0, 10.0])
        self.assertEqual(self.secondary.records, [StreamHeader()])  # heartbeats are not passed on

    @inlineCallbacks
    def test_heartbeat_waits_for_a_record_boundary(self):
        """Between LIBXC_CONTEXT and the libxc headers a heartbeat is illegal; it follows the headers."""
        yield self.open_pair()
        self.primary.link.sendRecord(LibxcContext())
        self.primary_clock.advance(1.0)
        self.primary.link.sendRecord(ImageHeader(3))
        self.primary.link.sendRecord(DomainHeader())
        yield wait_for(lambda: len(self.secondary.records) == 4)
        self.assertNotIn(Heartbeat, [type(r) for r in self.secondary.records])

    def test_send_before_handshake(self):
        """Records cannot be sent before the peer's hello arrived."""
        link = PeerLink(PRIMARY, "node-b", self.primary, self.primary_clock, TIMING)
        with self.assertRaises(LinkNotOpen) as caught:
            link.sendRecord(LibxcContext())
        self.assertEqual(str(caught.exception), "the peer link is not open")

    @inlineCallbacks
    def assertRefused(self, error: type, message: str, local: Hello = SECONDARY, peer_node: str = "node-a",
                      primary: Hello = PRIMARY, primary_peer: str = "node-b"):
        """The secondary refuses the link with ``error`` saying ``message``; returns the primary's reason."""
        port = yield self.listen(local, peer_node)
        factory = PeerLinkFactory(primary, primary_peer, self.primary, self.primary_clock, TIMING)
        yield self.connect(port, factory)
        reason = yield self.secondary.lost
        self.assertIsInstance(reason, error)
        self.assertEqual(str(reason), message)
        primary_reason = yield self.primary.lost
        self.assertFalse(self.secondary.ready.called)
        self.assertEqual(self.secondary_clock.getDelayedCalls(), [])
        return primary_reason

    @inlineCallbacks
    def test_wrong_domain(self):
        reason = yield self.assertRefused(DomainMismatch, "peer protects domain 'guest1', this side 'guest2'",
                                          local=Hello(Role.SECONDARY, "guest2", "node-b"))
        self.assertIsInstance(reason, DomainMismatch)
        self.assertEqual(str(reason), "peer protects domain 'guest2', this side 'guest1'")

    @inlineCallbacks
    def test_wrong_role(self):
        reason = yield self.assertRefused(RoleMismatch, "both ends are primary",
                                          local=Hello(Role.PRIMARY, "guest1", "node-b"))
        self.assertIsInstance(reason, RoleMismatch)
        self.assertEqual(str(reason), "both ends are primary")

    @inlineCallbacks
    def test_wrong_peer(self):
        yield self.assertRefused(PeerMismatch, "peer is node 'node-a', expected 'node-c'", peer_node="node-c")

    @inlineCallbacks
    def test_wrong_version(self):
        port = yield self.listen()
        hello = bytearray(PRIMARY.encode())
        hello[9] = 3
        yield self.connect(port, Factory.forProtocol(lambda: RawHello(bytes(hello))))
        reason = yield self.secondary.lost
        self.assertIsInstance(reason, VersionMismatch)
        self.assertEqual(str(reason), "peer speaks link protocol version 3, this colod 2")

    @inlineCallbacks
    def test_not_a_peer(self):
        port = yield self.listen()
        yield self.connect(port, Factory.forProtocol(lambda: RawHello(b"GET / HTTP/1.1\r\n\r\n")))
        reason = yield self.secondary.lost
        self.assertIsInstance(reason, MalformedHello)
        self.assertEqual(str(reason), "the peer is not a colod peer link (bad magic)")

    @inlineCallbacks
    def test_handshake_deadline(self):
        """A peer that connects and says nothing is dropped when the handshake deadline passes."""
        port = yield self.listen()
        yield self.connect(port, Factory.forProtocol(lambda: RawHello(b"ColodLnk")))
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertFalse(self.secondary.lost.called)
        self.secondary_clock.advance(10.0)
        reason = yield self.secondary.lost
        self.assertIsInstance(reason, HandshakeTimeout)
        self.assertEqual(str(reason), "no hello from the peer within 10.0 s")

    @inlineCallbacks
    def test_malformed_stream(self):
        """After a valid hello, bytes that are not a libxl stream end the link with a StreamError."""
        port = yield self.listen()
        yield self.connect(port, Factory.forProtocol(lambda: RawHello(PRIMARY.encode() + b"NotLibxl" * 2)))
        reason = yield self.secondary.lost
        self.assertIsInstance(reason, StreamError)
        self.assertEqual(reason.offset, 0)
        self.assertEqual(str(reason), "offset 0: not a libxl stream: ident 0x4e6f744c6962786c, "
                                      "expected 0x4c6962786c466d74 ('LibxlFmt')")

    @inlineCallbacks
    def test_malformed_stream_is_named_to_the_peer(self):
        """The side that finds the peer's stream malformed tells it why before closing."""
        yield self.open_pair()
        self.secondary.link.transport.write(b"NotARecord" * 4)
        reason = yield self.primary.lost
        self.assertIsInstance(reason, StreamError)
        told = yield self.secondary.lost
        self.assertIsInstance(told, PeerEndedReplication)
        self.assertEqual(told.reason, ReplicationEndReason.PROTOCOL_ERROR)
        self.assertEqual(told.text, f"your stream, {reason}")

    @inlineCallbacks
    def test_any_peer_node_when_none_is_configured(self):
        port = yield self.listen(peer_node=None)
        yield self.connect(port)
        _, peer = yield from_both(self.primary.ready, self.secondary.ready)
        self.addCleanup(self.close_pair)
        self.assertEqual(peer.node, PRIMARY.node)

    @inlineCallbacks
    def test_truncated_stream(self):
        """A peer that closes inside a record is a lost connection (its host may have died), not a
        clean close, and not a malformed stream (which would forbid a takeover)."""
        port = yield self.listen()
        header = StreamHeader()
        data = PRIMARY.encode() + encode([header, LibxcContext()])[:20]
        client = yield self.connect(port, Factory.forProtocol(lambda: RawHello(data)))
        yield wait_for(lambda: self.secondary.records == [header])
        client.transport.loseConnection()
        reason = yield self.secondary.lost
        self.assertIsInstance(reason, StreamCutShort)
        self.assertIsInstance(reason, ConnectionLost)
        self.assertNotIsInstance(reason, StreamError)
        self.assertEqual(str(reason), "the link closed before the peer's stream was complete (offset 16: "
                                      "stream ends inside a header (4 bytes of it))")


@implementer(IPeerLinkObserver)
class LossCounter:
    """An observer for many links that only counts the ones that ended."""

    def __init__(self) -> None:
        self.losses: list[BaseException] = []

    def linkReady(self, link: PeerLink, peer: Hello) -> None:
        pass

    def recordReceived(self, link: PeerLink, record: Record) -> None:
        pass

    def peerSilent(self, link: PeerLink, seconds: float) -> None:
        pass

    def linkLost(self, link: PeerLink, reason: Failure) -> None:
        self.losses.append(reason.value)


class Probe(Protocol):
    """A client that sends nothing, keeps what it receives, and notes when the connection ends."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[None] = Deferred()
        self.port = 0

    def connectionMade(self) -> None:
        self.port = self.transport.getHost().port

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed.callback(None)


def guard_lines(events: list[dict]) -> list[str]:
    """What the handshake guard logged, among everything else that was."""
    return [formatEvent(e) for e in events if e.get("log_namespace") == "colod.protocol.peer.HandshakeGuard"]


class HandshakeGuardTests(TestCase):
    """Failed handshakes over real TCP: logged with the remote address, their log and count limited."""

    @inlineCallbacks
    def test_failed_handshake_names_the_remote_address(self):
        clock, observer = Clock(), LossCounter()
        factory = PeerLinkFactory(SECONDARY, "node-c", observer, clock, TIMING)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        with capturedLogs() as events:
            client = yield TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
                Factory.forProtocol(lambda: RawHello(PRIMARY.encode())))
            yield wait_for(lambda: len(observer.losses) == 1)
        self.assertIsInstance(observer.losses[0], PeerMismatch)
        self.assertEqual(guard_lines(events), [
            f"domain guest1: no peer link with 127.0.0.1:{client.port}: "
            "peer is node 'node-a', expected 'node-c'"])

    @inlineCallbacks
    def test_a_flood_is_cut_and_summed_up(self):
        """Past the attempts of one window connections are closed unread; past the logged ones the
        failures are counted and summed up in one line when the window ends; then a peer links again."""
        clock, observer = Clock(), LossCounter()
        factory = PeerLinkFactory(SECONDARY, "node-a", observer, clock, TIMING)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        with capturedLogs() as events:
            for _ in range(ATTEMPTS_PER_WINDOW):
                yield endpoint.connect(Factory.forProtocol(lambda: RawHello(b"GET / HTTP/1.1\r\n\r\n")))
            yield wait_for(lambda: len(observer.losses) == ATTEMPTS_PER_WINDOW)
            probe = yield endpoint.connect(Factory.forProtocol(Probe))
            yield probe.closed
            lines = guard_lines(events)
            self.assertEqual(len(lines), LOGGED_PER_WINDOW)
            self.assertTrue(all("the peer is not a colod peer link (bad magic)" in line for line in lines))
            clock.advance(GUARD_WINDOW)
        self.assertEqual(probe.received, b"")  # not even a hello: closed unread
        unlogged = ATTEMPTS_PER_WINDOW + 1 - LOGGED_PER_WINDOW
        self.assertEqual(guard_lines(events)[LOGGED_PER_WINDOW:], [
            f"{unlogged} more failed peer link handshakes not logged one by one in {GUARD_WINDOW:g} s; "
            f"the last: domain guest1: 127.0.0.1:{probe.port}: over "
            f"{ATTEMPTS_PER_WINDOW} connection attempts in {GUARD_WINDOW:g} s; closed unread"])
        self.assertEqual(clock.getDelayedCalls(), [])
        primary = Recorder()
        yield endpoint.connect(PeerLinkFactory(PRIMARY, "node-b", primary, Clock(), TIMING))
        yield primary.ready
        primary.link.close()
        yield primary.lost


@inlineCallbacks
def from_both(first: Deferred, second: Deferred):
    a = yield first
    b = yield second
    return a, b
