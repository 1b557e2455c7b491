"""A broken peer link ends replication on both sides, and the primary's guest runs on.

Garbage bytes, or a well-formed record the state does not allow, are injected
on either channel by the link proxy (tests.cluster), whose own behaviour is
tested first, against plain sockets.
"""

from __future__ import annotations

import re

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from colod.protocol import Channel, CheckpointEnd, CheckpointId, CheckpointState, Encoder, Record
from colod.protocol.handshake import Hello, Role
from colod.testing.lab import Poll
from tests.cluster import (
    GARBAGE,
    ClusterTestCase,
    Direction,
    LinkProxy,
    Match,
    RecordCutter,
    checkpoint_state,
    record_of,
    wait,
    wire,
)
from tests.protocol.streams import colo_back, colo_main
from tests.rig import ScratchTestCase, async_test, sleep

PRIMARY_HELLO = Hello(Role.PRIMARY, "lab", "host-a")
SECONDARY_HELLO = Hello(Role.SECONDARY, "lab", "host-b")
#: Seconds a plain-socket proxy test waits for bytes to come through.
DELIVERY_TIMEOUT = 5.0
#: Seconds both sides get to end replication after the fault.
END_TIMEOUT = 10.0
#: Why GARBAGE is refused: its record header claims a body over the limit.
OVERSIZED = "record type 0xa5a5a5a5 claims 2779096485 bytes, over the 128 MiB limit"


def encoded(hello: Hello, records: list[Record], channel: Channel) -> list[bytes]:
    """The hello and each record's bytes, in stream order."""
    encoder = Encoder(channel)
    return [hello.encode(), *(encoder.send(record) for record in records)]


MAIN = encoded(PRIMARY_HELLO, colo_main(2), Channel.MAIN)
BACK = encoded(SECONDARY_HELLO, colo_back(2), Channel.BACK)
#: The index in MAIN of the first CHECKPOINT_STATE(NEW).
FIRST_NEW = 1 + colo_main(2).index(CheckpointState(CheckpointId.NEW))


class RecordCutterTests(ScratchTestCase):
    def test_cuts_at_record_boundaries(self) -> None:
        """Fed in odd chunks, the cutter hands out the hello and then each record with exactly its bytes."""
        cutter = RecordCutter(Channel.MAIN)
        stream = b"".join(MAIN)
        pieces = [p for at in range(0, len(stream), 7) for p in cutter.feed(stream[at : at + 7])]
        self.assertEqual([chunk for _, chunk in pieces], MAIN)
        self.assertEqual([piece for piece, _ in pieces], [PRIMARY_HELLO, *colo_main(2)])
        self.assertIsNone(cutter.error)

    def test_passes_garbage_on_unread(self) -> None:
        """After bytes it cannot read, the cutter hands out everything as it comes, unparsed."""
        cutter = RecordCutter(Channel.BACK)
        good = b"".join(BACK[:3])
        pieces = cutter.feed(good + GARBAGE) + cutter.feed(BACK[3])
        self.assertEqual(b"".join(chunk for _, chunk in pieces), good + GARBAGE + BACK[3])
        self.assertEqual([piece for piece, _ in pieces][3:], [None, None])
        self.assertIsNotNone(cutter.error)


class Collector(Protocol):
    """Keeps what arrives, and can talk back."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed.callback(None)


class Collectors(Factory):
    """Builds Collectors and keeps them."""

    def __init__(self) -> None:
        self.built: list[Collector] = []

    def buildProtocol(self, addr: object) -> Collector:
        self.built.append(Collector())
        return self.built[-1]


class LinkProxyTests(ScratchTestCase):
    """The proxy between a plain client (the primary) and a plain server (the secondary)."""

    async def connect(self) -> tuple[LinkProxy, Collector, Collector]:
        """A proxy to a collecting server, and a collecting client connected through it."""
        servers = Collectors()
        port = reactor.listenTCP(0, servers, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        proxy = LinkProxy(port.getHost().port)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", proxy.listen())
        self.addCleanup(proxy.close)
        client = await endpoint.connect(Factory.forProtocol(Collector))
        self.addCleanup(client.transport.abortConnection)
        await wait(Poll(lambda: servers.built or None, DELIVERY_TIMEOUT, "the proxy's connection"))
        return proxy, client, servers.built[0]

    async def arrives(self, collector: Collector, expected: bytes) -> None:
        """``collector`` receives exactly ``expected`` (and nothing more for a moment)."""
        await wait(Poll(lambda: len(collector.received) >= len(expected) or None, DELIVERY_TIMEOUT,
                        f"{len(expected)} bytes", lambda: f"; got {len(collector.received)}"))
        await sleep(0.1)
        self.assertEqual(bytes(collector.received), expected)

    @async_test
    async def test_forwards_both_ways_unchanged(self) -> None:
        """Bytes pass unchanged both ways, and a close on one side closes the other."""
        _, primary, secondary = await self.connect()
        primary.transport.write(b"".join(MAIN))
        secondary.transport.write(b"".join(BACK))
        await self.arrives(secondary, b"".join(MAIN))
        await self.arrives(primary, b"".join(BACK))
        primary.transport.loseConnection()
        await secondary.closed.addTimeout(DELIVERY_TIMEOUT, reactor)

    @async_test
    async def test_action_before_a_record(self) -> None:
        """An action before a record runs with the bytes up to it forwarded; a hold there keeps the rest."""
        proxy, primary, secondary = await self.connect()
        fired = proxy.when(Direction.MAIN, checkpoint_state(CheckpointId.NEW),
                           lambda: proxy.hold(Direction.MAIN), before=True)
        primary.transport.write(b"".join(MAIN))
        self.assertEqual(await fired.addTimeout(DELIVERY_TIMEOUT, reactor), CheckpointState(CheckpointId.NEW))
        await self.arrives(secondary, b"".join(MAIN[:FIRST_NEW]))
        proxy.release(Direction.MAIN)
        await self.arrives(secondary, b"".join(MAIN))

    @async_test
    async def test_injects_after_a_record(self) -> None:
        """An action after a record runs once, and injected bytes follow that record."""
        proxy, primary, secondary = await self.connect()
        new = checkpoint_state(CheckpointId.NEW)
        proxy.when(Direction.MAIN, new, lambda: proxy.inject(Direction.MAIN, GARBAGE))
        primary.transport.write(b"".join(MAIN))
        head, tail = b"".join(MAIN[: FIRST_NEW + 1]), b"".join(MAIN[FIRST_NEW + 1 :])
        await self.arrives(secondary, head + GARBAGE + tail)

    @async_test
    async def test_back_channel(self) -> None:
        """The back channel is cut at its own records: a hold before SVM_RESUMED keeps it and what follows."""
        proxy, primary, secondary = await self.connect()
        resumed = checkpoint_state(CheckpointId.SVM_RESUMED)
        proxy.when(Direction.BACK, resumed, lambda: proxy.hold(Direction.BACK), before=True)
        secondary.transport.write(b"".join(BACK))
        await self.arrives(primary, b"".join(BACK[:2]))

    @async_test
    async def test_cut_record_goes_through_on_close(self) -> None:
        """What arrived of a record cut short is passed on when its sender closes, as TCP would."""
        _, primary, secondary = await self.connect()
        sent = b"".join(MAIN[: FIRST_NEW + 2])[:-100]
        primary.transport.write(sent)
        primary.transport.loseConnection()
        await secondary.closed.addTimeout(DELIVERY_TIMEOUT, reactor)
        self.assertEqual(bytes(secondary.received), sent)


class LinkFaultTests(ClusterTestCase):
    async def break_link(self, direction: Direction, after: Match, data: bytes, reason: str) -> None:
        """Inject ``data`` on ``direction`` right after a record matching ``after`` passed.

        Both sides end replication over a protocol error, ``reason`` (where in
        the stream aside), named in status and log; the secondary does not
        take over; the primary's guest runs on.
        """
        lab = await self.start_cluster(proxy=True)
        fired = self.proxy.when(direction, after, lambda: self.proxy.inject(direction, data))
        await fired.addTimeout(END_TIMEOUT, reactor)
        statuses = [await wait(lab.until(node, lambda s: not s["protected"] and s["error"], END_TIMEOUT,
                                         "replication ended")) for node in lab.nodes]
        # The side that reads the bad bytes names them; it tells the other, which says it was told.
        reader = "secondary" if direction is Direction.MAIN else "primary"
        offset_reason = rf"offset \d+: {re.escape(reason)}"
        for node, status in zip(lab.nodes, statuses, strict=True):
            said = ("protocol error: " if node.role == reader
                    else "the peer ended replication: protocol error: your stream, ")
            self.assertRegex(status["error"], rf"^replication ended: {said}{offset_reason}$")
            self.assertIn(status["error"], node.logs())
        # The secondary does not take over, not even after the heartbeat timeout.
        await sleep(lab.heartbeat_timeout + 0.5)
        secondary = lab.secondary.status()
        self.assertEqual((secondary["role"], secondary["failed_over"]), ("secondary", False))
        await self.assertGuestRuns()

    @async_test
    async def test_garbage_on_main_channel(self) -> None:
        await self.break_link(Direction.MAIN, record_of(CheckpointEnd), GARBAGE, OVERSIZED)

    @async_test
    async def test_garbage_on_back_channel(self) -> None:
        await self.break_link(Direction.BACK, checkpoint_state(CheckpointId.SVM_RESUMED), GARBAGE, OVERSIZED)

    @async_test
    async def test_second_new_on_main_channel(self) -> None:
        """CHECKPOINT_STATE(NEW) where the checkpoint's pages are due.

        There the stream is libxc's, whose type 5 is X86_PV_VCPU_EXTENDED,
        not CHECKPOINT_STATE: NEW's 4-byte body is refused as that record's.
        """
        await self.break_link(Direction.MAIN, checkpoint_state(CheckpointId.NEW),
                              wire(CheckpointState(CheckpointId.NEW)),
                              "X86_PV_VCPU_EXTENDED body is 4 bytes, shorter than its 8-byte header")

    @async_test
    async def test_checkpoint_end_between_checkpoints(self) -> None:
        """CHECKPOINT_END where CHECKPOINT_STATE(NEW) is due."""
        await self.break_link(Direction.MAIN, record_of(CheckpointEnd), wire(CheckpointEnd()),
                              "CHECKPOINT_END is not allowed between checkpoints, expecting "
                              "CHECKPOINT_STATE(NEW); expected CHECKPOINT_STATE(NEW)")

    @async_test
    async def test_svm_ready_instead_of_svm_suspended(self) -> None:
        """SVM_READY where the primary expects the next checkpoint's SVM_SUSPENDED."""
        await self.break_link(Direction.BACK, checkpoint_state(CheckpointId.SVM_RESUMED),
                              wire(CheckpointState(CheckpointId.SVM_READY)),
                              "CHECKPOINT_STATE(SVM_READY) is not allowed after SVM_RESUMED; "
                              "expected CHECKPOINT_STATE(SVM_SUSPENDED)")

