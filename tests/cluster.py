"""The engine tests' cluster: a lab (colod.testing.lab) per test, always reaped, and a fault-injecting
link proxy.

The proxy sits on the peer link: the primary connects to it and it connects to
the secondary.  It terminates the link's TLS on both sides (to the primary it is
the secondary, with its certificate, and to the secondary the primary), so
that the daemons run exactly as they do without it, TLS included, while the
proxy sees the plain stream.  It cuts each direction at record boundaries (the colod hello,
then the records, read with the stream codec) so that a test can act exactly
when a given record passes: kill a process before or after the record is
forwarded, or after only part of it was, hold one direction back, or inject
bytes at a record boundary.  Otherwise every byte goes through unchanged, and
once a direction stops parsing (after garbage, say) its bytes still go
through.

What the proxy really wrote to the secondary is kept in a L{MainLedger}: the
records of the checkpoint under way, and the guest writer's operation count
in the last checkpoint whose CHECKPOINT_END went through whole, which is
exactly the state a secondary that takes over must hold.

The lab's waits are Polls; wait() drives them on the reactor, so that the
proxy keeps forwarding while a test waits.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IListeningPort, ITransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from colod.engine.core import record_name
from colod.protocol import (
    CLOSED,
    NEED_DATA,
    Channel,
    CheckpointEnd,
    CheckpointId,
    CheckpointState,
    Decoder,
    DomainHeader,
    Frame,
    HandshakeError,
    Heartbeat,
    ImageHeader,
    PageData,
    Record,
    StreamError,
    StreamHeader,
)
from colod.protocol.handshake import Hello
from colod.protocol.pagedata import pages_with_data
from colod.protocol.wire import PAGE_SIZE, RECORD_HEADER, padding
from colod.protocol.writers import write_record
from colod.testing.lab import POLL_INTERVAL, Lab, LabError, Node, Poll
from colod.testing.writer import Header, Verdict
from colod.tls import PeerTLS, load
from tests.rig import ScratchTestCase, sleep

T = TypeVar("T")

#: What passes the proxy: a hello, a record, or None for bytes passed on unparsed.
Piece = Hello | Record | None
Match = Callable[[Piece], bool]

#: A record header claiming a body over 128 MiB: refused as soon as it is read, in either namespace.
GARBAGE = b"\xa5" * 16
#: The writer's pause between operations in the engine tests: busy, yet leaving the 2 CPUs some air.
WRITER_INTERVAL = 0.002


class Direction(enum.Enum):
    """A direction of the peer link, by the channel it carries."""

    MAIN = Channel.MAIN  # primary to secondary
    BACK = Channel.BACK  # secondary to primary


def checkpoint_state(checkpoint_id: CheckpointId) -> Match:
    """Matches CHECKPOINT_STATE(checkpoint_id)."""
    return lambda piece: isinstance(piece, CheckpointState) and piece.id == checkpoint_id


def record_of(kind: type) -> Match:
    """Matches records of class ``kind``."""
    return lambda piece: isinstance(piece, kind)


def wire(record: Record) -> bytes:
    """``record`` as it goes on the wire, wherever the stream is (so it can be wrong for the state)."""
    return b"".join(write_record(record))


async def wait(poll: Poll[T]) -> T:
    """Wait for ``poll`` on the reactor: the proxy keeps running meanwhile."""
    while (found := poll.attempt()) is None:
        await sleep(POLL_INTERVAL)
    return found


def _end(record: Record, frame: Frame) -> int:
    """The stream offset just past ``record``, from the decoder's frame of it."""
    if isinstance(record, StreamHeader | ImageHeader | DomainHeader):
        return frame.offset + frame.length  # a fixed header: the frame is the whole of it
    return frame.offset + RECORD_HEADER.size + frame.length + padding(frame.length)


class RecordCutter:
    """Cuts one direction of the link into its hello and its records, sans-IO.

    @ivar error: why the bytes stopped parsing; from then on they are handed out unread.
    """

    def __init__(self, channel: Channel) -> None:
        self._decoder = Decoder(channel)
        self._pending = bytearray()  # received, not yet handed out
        self._at = 0  # the stream offset (after the hello) of _pending[0]
        self.hello: Hello | None = None
        self.error: Exception | None = None

    def feed(self, data: bytes) -> list[tuple[Piece, bytes]]:
        """The pieces ``data`` completes, each with its bytes, in stream order."""
        self._pending += data
        if self.error is not None:
            return self.rest()
        pieces: list[tuple[Piece, bytes]] = []
        try:
            if self.hello is None:
                parsed = Hello.parse(bytes(self._pending))
                if parsed is None:
                    return pieces
                self.hello, size = parsed
                pieces.append((self.hello, self._take(size)))
                data = bytes(self._pending)  # what followed the hello is the stream's
            if data:
                self._decoder.receive_data(data)
            while (record := self._decoder.next_record()) is not NEED_DATA and record is not CLOSED:
                end = _end(record, self._decoder.last_frame)
                pieces.append((record, self._take(end - self._at)))
                self._at = end
        except (HandshakeError, StreamError) as error:
            self.error = error
            pieces += self.rest()
        return pieces

    def rest(self) -> list[tuple[Piece, bytes]]:
        """The bytes received but not handed out (a record cut short), unparsed."""
        return [(None, self._take(len(self._pending)))] if self._pending else []

    def _take(self, size: int) -> bytes:
        taken = bytes(self._pending[:size])
        del self._pending[:size]
        return taken


def _writer_ops(record: PageData) -> int | None:
    """The writer's operation count in ``record``'s copy of page 0 (its header), if the record carries it."""
    for index, pfn in enumerate(record.pfns):
        if pfn == 0:
            at = pages_with_data(record.types[:index]) * PAGE_SIZE
            header = Header.unpack(bytes(record.data[at : at + PAGE_SIZE]))
            return header.ops if header else 0
    return None


class MainLedger:
    """What of the main channel the proxy wrote to the secondary, record by record, sans-IO.

    @ivar current: the names of the records of the checkpoint under way (from
        its CHECKPOINT_STATE(NEW)), or of the last one; a record written only
        in part is named with " (part)".  Heartbeats are left out.
    @ivar committed: how many checkpoints' CHECKPOINT_END went through whole
        (to a connection still up when written: one the secondary had given up
        on reads nothing more).
    @ivar committed_ops: the writer's operation count in the memory of the
        last of those: what a secondary holds once it has applied it.
    @ivar applied_ops: the writer's operation count in the last checkpoint the
        secondary said it applied (its SVM_READY came back): a secondary that
        takes over holds at least that, and at most committed_ops.
    """

    def __init__(self) -> None:
        self.current: list[str] = []
        self.committed = 0
        self.committed_ops: int | None = None
        self.applied_ops: int | None = None
        self._ops: int | None = None  # page 0's count as of the records written so far

    def came_back(self, piece: Piece) -> None:
        """``piece`` came from the secondary."""
        if isinstance(piece, CheckpointState) and piece.id is CheckpointId.SVM_READY:
            self.applied_ops = self.committed_ops

    def written(self, piece: Piece, whole: bool) -> None:
        """``piece`` went to the secondary, to its last byte if ``whole``, else only its first part."""
        if not isinstance(piece, Record) or isinstance(piece, Heartbeat):
            return
        if isinstance(piece, CheckpointState) and piece.id is CheckpointId.NEW:
            self.current = []
        self.current.append(record_name(piece) + ("" if whole else " (part)"))
        if not whole:
            return
        if isinstance(piece, PageData) and (ops := _writer_ops(piece)) is not None:
            self._ops = ops
        elif isinstance(piece, CheckpointEnd):
            self.committed += 1
            self.committed_ops = self._ops


@attrs.define
class _Trigger:
    """An action waiting for a piece to pass (LinkProxy.when)."""

    direction: Direction
    match: Match
    action: Callable[[], object]
    before: bool
    #: With ``before``: how many of the piece's bytes go through before the action runs.
    part: int = 0
    fired: Deferred[Piece] = attrs.field(factory=Deferred)


class _Pipe:
    """One direction of a proxied connection: cut, shown to the triggers, forwarded unless held."""

    def __init__(self, proxy: LinkProxy, direction: Direction) -> None:
        self._proxy = proxy
        self.direction = direction
        self._cutter = RecordCutter(direction.value)
        #: What waits to be written: each piece's bytes (or part of them), and whether they end it.
        self._queue: list[tuple[Piece, bytes, bool]] = []
        self._closed = False
        self.destination: ITransport | None = None

    def received(self, data: bytes) -> None:
        for piece, chunk in self._cutter.feed(data):
            if self.direction is Direction.BACK:
                self._proxy.ledger.came_back(piece)
            for trigger in self._proxy.due(self.direction, piece, before=True):
                if trigger.part:
                    self.send(chunk[: trigger.part], piece, whole=False)
                    chunk = chunk[trigger.part :]
                self._proxy.fire(trigger, piece)
            self.send(chunk, piece)
            for trigger in self._proxy.due(self.direction, piece, before=False):
                self._proxy.fire(trigger, piece)

    def send(self, chunk: bytes, piece: Piece = None, whole: bool = True) -> None:
        self._queue.append((piece, chunk, whole))
        self.flush()

    def flush(self) -> None:
        """Write what waits unless held, once connected; close after the source did (held bytes are lost)."""
        if self.destination is None:
            return
        if self.direction not in self._proxy.held:
            queue, self._queue = self._queue, []
            self.destination.writeSequence([chunk for _, chunk, _ in queue])
            if self.direction is Direction.MAIN and self.destination.connected:
                for piece, _, whole in queue:
                    self._proxy.ledger.written(piece, whole)
        if self._closed:
            self.destination.loseConnection()

    def connected(self, destination: ITransport) -> None:
        self.destination = destination
        self.flush()

    def source_closed(self) -> None:
        """Pass on what arrived of a record cut short, as TCP would, then close the destination."""
        self._queue += [(None, chunk, True) for _, chunk in self._cutter.rest()]
        self._closed = True
        self.flush()


class _Building(Factory):
    """Builds each protocol with ``build``, as it is (Factory.forProtocol would make itself the factory of a
    TLS wrapper, whose factory must stay its TLS factory)."""

    def __init__(self, build: Callable[[], Protocol]) -> None:
        self._build = build

    def buildProtocol(self, addr: object) -> Protocol:
        return self._build()


class _PrimarySide(Protocol):
    """The connection from the primary."""

    def __init__(self, proxy: LinkProxy) -> None:
        self.proxy = proxy
        self.main = _Pipe(proxy, Direction.MAIN)
        self.back = _Pipe(proxy, Direction.BACK)

    def connectionMade(self) -> None:
        self.proxy.pipes = {Direction.MAIN: self.main, Direction.BACK: self.back}
        self.back.connected(self.transport)
        secondary = TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxy.target_port, timeout=5)
        d = secondary.connect(_Building(lambda: self.proxy.as_primary(_SecondarySide(self))))
        d.addErrback(lambda _: self.transport.loseConnection())

    def dataReceived(self, data: bytes) -> None:
        self.main.received(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.main.source_closed()


class _SecondarySide(Protocol):
    """The proxy's connection to the secondary."""

    def __init__(self, primary: _PrimarySide) -> None:
        self.primary = primary

    def connectionMade(self) -> None:
        self.primary.main.connected(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.primary.back.received(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.primary.back.source_closed()


class LinkProxy:
    """A TCP proxy for the peer link that forwards record by record and injects faults on request.

    It serves the latest connection from the primary (a reconnection replaces
    it); holds and triggers outlive connections.  Plain TCP until
    L{terminate_tls}.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        #: Wrap the proxy's side of each connection, in TLS once told to.
        self.as_secondary: Callable[[Protocol], Protocol] = lambda protocol: protocol
        self.as_primary: Callable[[Protocol], Protocol] = lambda protocol: protocol
        self.held: set[Direction] = set()
        self.pipes: dict[Direction, _Pipe] = {}
        self.ledger = MainLedger()
        self._triggers: list[_Trigger] = []
        self._listening: IListeningPort | None = None

    def listen(self) -> int:
        """Listen on 127.0.0.1; returns the port for the primary's configuration."""
        accept = _Building(lambda: self.as_secondary(_PrimarySide(self)))
        self._listening = reactor.listenTCP(0, accept, interface="127.0.0.1")
        return int(self._listening.getHost().port)

    def terminate_tls(self, secondary: PeerTLS, primary: PeerTLS) -> None:
        """Speak TLS to the primary as ``secondary`` (its certificate) and to the secondary as ``primary``."""
        self.as_secondary = secondary.wrapper(client=False, clock=reactor)
        self.as_primary = primary.wrapper(client=True, clock=reactor)

    def close(self) -> Deferred[None] | None:
        """Stop listening and cut the connections at once."""
        for pipe in self.pipes.values():
            # A TLS transport cannot be aborted once it is closed (TCP's can).
            if pipe.destination is not None and pipe.destination.connected:
                pipe.destination.abortConnection()
        return self._listening.stopListening() if self._listening is not None else None

    def hold(self, direction: Direction) -> None:
        """Stop forwarding ``direction``: its bytes wait (its heartbeats too) until release()."""
        self.held.add(direction)

    def release(self, direction: Direction) -> None:
        self.held.discard(direction)
        if direction in self.pipes:
            self.pipes[direction].flush()

    def inject(self, direction: Direction, data: bytes) -> None:
        """Send ``data`` on ``direction`` now, at the record boundary where it stands."""
        self.pipes[direction].send(data)

    def when(self, direction: Direction, match: Match, action: Callable[[], object], *,
             before: bool = False, part: int = 0) -> Deferred[Piece]:
        """Run ``action`` once, as the next piece that ``match``es passes on ``direction``.

        ``before``: run it before the piece is forwarded (else right after);
        then ``part`` of its bytes go through first, so that an action that
        holds the direction cuts the piece there.  The Deferred fires with the
        piece a moment later, off the proxy's call stack.
        """
        if part and not before:
            raise ValueError("only a trigger that runs before its piece is forwarded can cut it")
        trigger = _Trigger(direction, match, action, before, part)
        self._triggers.append(trigger)
        return trigger.fired

    def due(self, direction: Direction, piece: Piece, before: bool) -> list[_Trigger]:
        """The triggers that wait for ``piece`` at this moment of its passing, taken off the list."""
        found = [t for t in self._triggers
                 if t.direction is direction and t.before is before and t.match(piece)]
        for trigger in found:
            self._triggers.remove(trigger)
        return found

    def fire(self, trigger: _Trigger, piece: Piece) -> None:
        """Run ``trigger``'s action now; its Deferred fires a moment later."""
        done = maybeDeferred(trigger.action).addCallback(lambda _: piece)
        reactor.callLater(0, done.chainDeferred, trigger.fired)


def node_tls(lab: Lab, node: Node) -> PeerTLS:
    """TLS with ``node``'s certificate from the lab (for the proxy to stand in for it)."""
    return PeerTLS(load(*(str(path) for path in lab.tls_files(node)), node.name))


async def start_protected(lab: Lab, proxy: LinkProxy | None = None) -> None:
    """Start ``lab``'s nodes (linked through ``proxy``, if given), wait until protected, and start the writer.

    @raise LabError: a wait ran out, or NBD is not under TLS in a TLS lab.
    """
    lab.prepare(proxy.listen() if proxy is not None else None)
    if proxy is not None:
        proxy.terminate_tls(*(node_tls(lab, node) for node in (lab.secondary, lab.primary)))
    lab.start_qemus()
    lab.start_daemons()
    await wait(lab.until_protected())
    nbd_tls = f"NBD is TLS: the NBD server lets in only CN={lab.primary.name}"
    if lab.tls and nbd_tls not in lab.secondary.logs():  # as the daemon runs by default
        raise LabError("the secondary's NBD is not under TLS" + lab.secondary.context())
    lab.start_writer(WRITER_INTERVAL)
    await wait(lab.until_ops(1, 10.0))


class ClusterTestCase(ScratchTestCase):
    """Runs a lab (and the proxy, if asked) per test, and always reaps its processes."""

    #: Seconds trial gives one test: a few QEMU and daemon starts, and some hundred checkpoints.
    timeout = 240

    lab: Lab
    proxy: LinkProxy

    async def start_cluster(self, *, proxy: bool = False, **settings: Any) -> Lab:
        """Both nodes up and protected, and the writer running on the primary."""
        self.lab = lab = Lab(self.workdir, **settings)
        self.addCleanup(lab.close)
        if proxy:
            self.proxy = LinkProxy(lab.secondary_port)
            self.addCleanup(self.proxy.close)
        await start_protected(lab, self.proxy if proxy else None)
        return lab

    async def assertGuestRuns(self, ops_more: int = 20, timeout: float = 10.0) -> None:
        """The primary's QEMU runs and the writer keeps making progress there."""
        self.assertEqual(self.lab.primary.qemu_status(), "running")
        await wait(self.lab.until_ops(self.lab.ops() + ops_more, timeout))

    def assertVerified(self, verdict: Verdict, floor: int = 0) -> None:
        """A writer verdict that holds, and holds at least ``floor`` operations."""
        self.assertTrue(verdict.ok, verdict.summary)
        self.assertGreaterEqual(verdict.ops, floor, verdict.summary)
