# -*- test-case-name: tests.protocol.test_peer -*-
"""
The peer link: both checkpoint channels between two colods over one TCP
connection, plus colod's liveness checks.

TCP is full duplex, so the connection's two directions are exactly Xen's two
file descriptors: primary to secondary carries the main stream, secondary to
primary the back channel.  Under TLS (L{colod.tls}, the default) nothing is
said before the peer is authenticated: the TLS handshake checks its
certificate against the CA, then the link checks that it names the configured
peer node, and only then says its hello.  Each direction starts with a hello
(L{colod.protocol.handshake}); then the primary's link writes the libxl
stream header itself, so that heartbeats are legal from the first moment.
After that each direction is nothing but its Xen stream, with colod
HEARTBEAT records (optional type, bit 31 set) between records, and perhaps a
last COLOD_REPLICATION_END (L{PeerLink.end}) when a side stops on purpose.

The link is a thin adapter: bytes go through a L{Decoder} and L{Encoder};
the observer (the checkpoint engine) gets typed records and four events.
"""

from __future__ import annotations

import socket
import struct
import typing
from collections.abc import Callable

import attrs
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IProtocol,
    IReactorTime,
    ISSLTransport,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from .decoder import CLOSED, NEED_DATA, Decoder
from .encoder import Encoder
from .errors import LocalEndedReplication, PeerEndedReplication, StreamCutShort, StreamError
from .handshake import (
    HandshakeError,
    HandshakeTimeout,
    Hello,
    LinkRefused,
    NotAuthenticated,
    Role,
    check_peer,
)
from .records import Heartbeat, Record, ReplicationEnd, SkippedRecord, StreamHeader
from .state import Channel
from .wire import ReplicationEndReason


class LinkTLS(typing.Protocol):
    """What the link asks of its TLS (colod.tls.PeerTLS, which builds on this package's errors)."""

    def wrapper(self, client: bool, clock: IReactorTime) -> Callable[[IProtocol], TLSMemoryBIOProtocol]:
        """Wraps a link's protocol in TLS, as the client (the primary) or the server."""

    def authenticate(self, transport: ISSLTransport, peer_node: str) -> None:
        """Accepts the peer only if its certificate names ``peer_node``; raises CertificateMismatch."""

    def failed(self, reason: Failure) -> NotAuthenticated:
        """Why a connection ended before its TLS handshake was done."""


#: Seconds between heartbeats in each direction.
HEARTBEAT_INTERVAL = 1.0
#: Seconds without a byte from the peer before the observer hears about it;
#: several heartbeat intervals, so that one late heartbeat is not a failure.
SILENCE_TIMEOUT = 5.0
#: Bytes read from the socket at a time.
READ_SIZE = 1 << 20
#: Seconds the peer has to complete the TLS handshake and send a complete hello after the connection is up.
HANDSHAKE_TIMEOUT = 10.0
#: Seconds over which connection attempts are counted and failed handshakes' log lines limited.
GUARD_WINDOW = 10.0
#: Connections taken per window; beyond, they are closed unread.  The primary tries once every
#: 2 s (colod.engine.peering), so more is a flood or a loop, and each costs a hello and a timer.
ATTEMPTS_PER_WINDOW = 20
#: Failed handshakes logged one by one per window; the rest are counted, then summed up in one line.
LOGGED_PER_WINDOW = 5

_SENDS = {Role.PRIMARY: Channel.MAIN, Role.SECONDARY: Channel.BACK}
_RECEIVES = {Role.PRIMARY: Channel.BACK, Role.SECONDARY: Channel.MAIN}


@attrs.frozen
class LinkTiming:
    heartbeat_interval: float = HEARTBEAT_INTERVAL
    silence_timeout: float = SILENCE_TIMEOUT
    handshake_timeout: float = HANDSHAKE_TIMEOUT

    def __attrs_post_init__(self) -> None:
        # The same rule as the configuration's peer.heartbeat_timeout.
        if not 0 < 2 * self.heartbeat_interval <= self.silence_timeout:
            raise ValueError("silence_timeout must be at least two heartbeat intervals")
        if self.handshake_timeout <= 0:
            raise ValueError("handshake_timeout must be positive")


#: struct tcp_info's tcpi_rtt (linux/tcp.h): microseconds, at this offset.
_TCP_INFO_RTT = struct.Struct("=I")
_RTT_OFFSET = 68


class LinkNotOpen(Exception):
    """A record was sent before the handshake finished or after the link closed."""


class IPeerLinkObserver(Interface):
    """What the checkpoint engine hears from a peer link."""

    def linkReady(link: PeerLink, peer: Hello) -> None:
        """The handshake succeeded; C{link.sendRecord} may be used from now on."""

    def recordReceived(link: PeerLink, record: Record) -> None:
        """
        A record of the peer's stream (heartbeats, skipped records and
        COLOD_REPLICATION_END are not passed on).
        """

    def peerSilent(link: PeerLink, seconds: float) -> None:
        """Nothing arrived for C{seconds}; repeated every silence timeout while it lasts."""

    def linkLost(link: PeerLink, reason: Failure) -> None:
        """
        The link is gone, once per link, as soon as that is decided (the TCP
        connection may still be closing).  C{reason} wraps:

          - L{PeerEndedReplication}: the peer ended replication on purpose
            (after SHUTDOWN its guest runs on: do not take over);
          - L{LocalEndedReplication}: this side called L{PeerLink.end};
          - a L{HandshakeError};
          - a L{StreamError}: the peer's stream was malformed;
          - L{StreamCutShort}: the connection closed where the stream may
            not end (inside a record, say), as when the peer's host dies;
          - or the connection's own reason for a clean or abrupt close,
            which cannot tell a peer that stopped from one that died.
        """


def address_text(address: IAddress | None) -> str:
    """A connection's remote end as a log names it: host:port, or a unix socket's path."""
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is not None and port is not None:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    name = getattr(address, "name", None)
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name or address)


class HandshakeGuard:
    """Keeps a flood of connections cheap and its log short.

    A failed handshake (a stray client, a misconfigured peer, a scanner) is
    logged with the remote address; past C{logged} in one window they are
    counted and summed up in one line when the window ends, so that a flood
    neither fills the disk nor hides in silence.  Past C{attempts} connections
    in one window, new ones are closed before a byte is read or written.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, attempts: int = ATTEMPTS_PER_WINDOW,
                 logged: int = LOGGED_PER_WINDOW, window: float = GUARD_WINDOW) -> None:
        self._clock = clock
        self._max_attempts = attempts
        self._max_logged = logged
        self._window = window
        self._started = float("-inf")
        self._attempts = 0
        self._logged = 0
        self._unlogged = 0
        self._last = ""
        self._summary: IDelayedCall | None = None

    def admit(self, domain: str, address: str) -> bool:
        """Whether to take a new connection from C{address}; a refusal is logged as a failed handshake."""
        self._roll()
        self._attempts += 1
        if self._attempts <= self._max_attempts:
            return True
        self.failed(domain, address, f"over {self._max_attempts} connection attempts in "
                                     f"{self._window:g} s; closed unread")
        return False

    def failed(self, domain: str, address: str, reason: str) -> None:
        """A connection from C{address} ended before it became a link."""
        self._roll()
        if self._logged < self._max_logged:
            self._logged += 1
            self.log.warn("domain {domain}: no peer link with {address}: {reason}",
                          domain=domain, address=address, reason=reason)
            return
        self._unlogged += 1
        self._last = f"domain {domain}: {address}: {reason}"
        if self._summary is None:
            self._summary = self._clock.callLater(self._started + self._window - self._clock.seconds(),
                                                  self._roll)

    def flush(self) -> None:
        """Sum up what is counted now, and leave no timer behind (the factory stops)."""
        self._started = float("-inf")
        self._roll()

    def _roll(self) -> None:
        """Start a new window once the current one is over, summing up the failures it did not log."""
        now = self._clock.seconds()
        if now - self._started < self._window:
            return
        if self._summary is not None and self._summary.active():
            self._summary.cancel()
        self._summary = None
        if self._unlogged:
            self.log.warn("{n} more failed peer link handshakes not logged one by one in {window:g} s; "
                          "the last: {last}", n=self._unlogged, window=self._window, last=self._last)
        self._started, self._attempts, self._logged, self._unlogged = now, 0, 0, 0


@implementer(IHandshakeListener)
class PeerLink(Protocol):
    """One connection to the peer colod, either end: under TLS when ``tls`` is given (then ``peer_node``
    must be), else plaintext."""

    def __init__(
        self,
        local: Hello,
        peer_node: str | None,
        observer: IPeerLinkObserver,
        clock: IReactorTime,
        timing: LinkTiming = LinkTiming(),
        guard: HandshakeGuard | None = None,
        tls: LinkTLS | None = None,
    ) -> None:
        if tls is not None and peer_node is None:
            raise ValueError("a TLS link authenticates its peer by name: give peer_node")
        self.local = local
        self._tls = tls
        #: Whether the peer proved who it is (TLS), so that this side may say its hello.
        self._authenticated = False
        #: The remote end, for the log (known once connected).
        self.peer_address = "(not connected)"
        self._guard = guard or HandshakeGuard(clock)
        self._peer_node = peer_node
        self._observer = observer
        self._clock = clock
        self._timing = timing
        self._encoder = Encoder(_SENDS[local.role])
        self._decoder = Decoder(_RECEIVES[local.role])
        self._hello = b""
        self._open = False
        #: Why the link ends, once decided (or once lost): later bytes are ignored.
        self._failure: Failure | None = None
        self._reported = False
        #: The handshake's deadline, then the peer's to close after L{end}.
        self._deadline: IDelayedCall | None = None
        self._silence: IDelayedCall | None = None
        self._last_heard = 0.0
        self._beats = LoopingCall(self._beat)
        self._beats.clock = clock
        self._sequence = 0
        self._beat_due = False
        #: Bytes of records sent with sendRecord (heartbeats and the link's own records aside).
        self.bytes_sent = 0

    # --- Protocol -----------------------------------------------------------

    def connectionMade(self) -> None:
        self.peer_address = address_text(self.transport.getPeer())
        # Under TLS the socket's transport is the TLS layer's.
        carrier = self.transport if self._tls is None else self.transport.transport
        if ITCPTransport.providedBy(carrier):
            # The protocol is lock-step: a small record (NEW, SVM_READY) held
            # back by Nagle until the peer's delayed ACK costs ~40 ms of pause.
            carrier.setTcpNoDelay(True)
        # Pages go by the MiB: read and send them in large bites, not 64 and 128 KiB ones,
        # each a turn of the event loop.
        if hasattr(carrier, "bufferSize"):
            carrier.bufferSize = READ_SIZE
        if hasattr(carrier, "SEND_LIMIT"):
            carrier.SEND_LIMIT = READ_SIZE
        self._deadline = self._clock.callLater(self._timing.handshake_timeout, self._handshakeExpired)
        if self._tls is None:
            self.transport.write(self.local.encode())  # plaintext: no peer is ever authenticated

    def handshakeCompleted(self) -> None:
        """TLS is up and the peer's certificate is the CA's: say hello if it names the configured peer."""
        assert self._tls is not None and self._peer_node is not None
        try:
            self._tls.authenticate(self.transport, self._peer_node)
        except HandshakeError as error:
            self._fail(error)
            return
        self._authenticated = True
        self.transport.write(self.local.encode())

    def dataReceived(self, data: bytes) -> None:
        if self._failure is not None:
            return
        try:
            if not self._open:
                data = self._readHello(data)
                if data is None:
                    return
            self._heard()
            if data:  # b"" would tell the decoder the stream ended
                self._decoder.receive_data(data)
            self._drain()
        except HandshakeError as error:
            self._fail(error)
        except StreamError as error:
            # Say why: a peer that only saw the connection close would take
            # this side for dead, and a secondary would take over the guest.
            said = ReplicationEnd(ReplicationEndReason.PROTOCOL_ERROR, f"your stream, {error}")
            self._finish(said, error)

    def connectionLost(self, reason: Failure) -> None:
        self._stopTimers()
        if self._failure is None:
            if self._tls is not None and not self._authenticated:
                reason = Failure(self._tls.failed(reason))
            elif not self._open:
                reason = Failure(HandshakeError("the connection closed before the peer's hello arrived"))
            else:
                try:
                    self._decoder.receive_data(b"")
                    self._drain()
                except StreamError as error:
                    # Malformed bytes were refused as they came: at the end of
                    # the file the stream can only have stopped short.
                    reason = Failure(StreamCutShort(error))
        self._open = False
        self._failure = self._failure or reason
        self._report()

    # --- API for the checkpoint engine --------------------------------------

    def sendRecord(self, record: Record) -> None:
        """
        Write C{record} to this side's stream.

        @raise LinkNotOpen: before L{IPeerLinkObserver.linkReady} or after the link is lost.
        @raise StreamError: the record is malformed or not allowed at this point of the stream.
        """
        if not self._open:
            raise LinkNotOpen("the peer link is not open")
        # Twisted's transports take bytes only: a view (a record read from another stream, such as a
        # save helper's pages) is copied here, once.
        chunks = [chunk if isinstance(chunk, bytes) else bytes(chunk)
                  for chunk in self._encoder.send_buffers(record)]
        self.bytes_sent += sum(map(len, chunks))
        self.transport.writeSequence(chunks)
        if self._beat_due:
            self._beat()

    def round_trip(self) -> float | None:
        """The link's round trip in seconds, as the kernel measures it on its TCP connection
        (smoothed, from its ACKs: heartbeats go one way); None on another kind of socket."""
        carrier = self.transport if self._tls is None else self.transport.transport
        handle = carrier.getHandle() if carrier is not None else None
        if not isinstance(handle, socket.socket) or handle.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        try:
            info = handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_RTT.size + _RTT_OFFSET)
        except OSError:
            return None
        return float(_TCP_INFO_RTT.unpack_from(info, _RTT_OFFSET)[0]) / 1e6

    def close(self) -> None:
        """Close the link; L{IPeerLinkObserver.linkLost} follows."""
        self.transport.loseConnection()

    def refuse(self, why: str) -> None:
        """
        The observer cannot take this link (from its C{linkReady}): close it
        as a failed handshake, logged with the guard's limits;
        L{IPeerLinkObserver.linkLost} follows with L{LinkRefused}.
        """
        self._fail(LinkRefused(why))

    def end(self, reason: ReplicationEndReason, text: str) -> None:
        """
        End replication on purpose, so that the peer can tell it from a crash:
        send COLOD_REPLICATION_END, then close.  L{IPeerLinkObserver.linkLost}
        follows with L{LocalEndedReplication}; nothing more is received or
        sent.  Does nothing once the link is ending or lost.

        Closing only the sending side and waiting for the peer to close (it
        does so on reading the record; a silence timeout at most) keeps the
        record from being destroyed by a TCP reset, which a full close sends
        if bytes from the peer are still unread.

        Before the handshake, and between LIBXC_CONTEXT and the libxc domain
        header, the record cannot be sent and the link just closes; the
        latter happens only before the first checkpoint, when the secondary
        has no guest to run anyway.

        @raise StreamError: C{text} is not encodable; the link stays as it was.
        """
        if self._failure is not None:
            return
        self._finish(ReplicationEnd(reason, text), LocalEndedReplication(reason, text))

    # --- internals ------------------------------------------------------------

    def _readHello(self, data: bytes) -> bytes | None:
        self._hello += data
        parsed = Hello.parse(self._hello)
        if parsed is None:
            return None
        peer, size = parsed
        check_peer(self.local, self._peer_node, peer)
        rest, self._hello = self._hello[size:], b""
        self._deadline.cancel()
        self._open = True
        self._silence = self._clock.callLater(self._timing.silence_timeout, self._silent)
        if self.local.role is Role.PRIMARY:
            self.transport.write(self._encoder.send(StreamHeader()))
        self._beats.start(self._timing.heartbeat_interval, now=False)
        self._observer.linkReady(self, peer)
        return rest

    def _drain(self) -> None:
        while self._open:
            record = self._decoder.next_record()
            if record is NEED_DATA or record is CLOSED:
                return
            if isinstance(record, ReplicationEnd):
                self._fail(PeerEndedReplication(record.reason, record.text))
            elif not isinstance(record, (Heartbeat, SkippedRecord)):
                self._observer.recordReceived(self, record)

    def _heard(self) -> None:
        self._last_heard = self._clock.seconds()
        if self._silence is not None and self._silence.active():
            self._silence.reset(self._timing.silence_timeout)

    def _silent(self) -> None:
        self._silence = self._clock.callLater(self._timing.silence_timeout, self._silent)
        self._observer.peerSilent(self, self._clock.seconds() - self._last_heard)

    def _beat(self) -> None:
        beat = Heartbeat(sequence=self._sequence, sent_at_ns=int(self._clock.seconds() * 1e9))
        self._beat_due = not self._encoder.can_send(beat)
        if not self._beat_due:
            self._sequence += 1
            self.transport.write(self._encoder.send(beat))

    def _handshakeExpired(self) -> None:
        missing = "hello" if self._tls is None or self._authenticated else "completed TLS handshake"
        self._fail(HandshakeTimeout(f"no {missing} from the peer within {self._timing.handshake_timeout} s"))

    def _fail(self, error: Exception) -> None:
        self._stop(error)
        self.transport.loseConnection()

    def _finish(self, record: ReplicationEnd, why: Exception) -> None:
        """Send C{record} as this side's last word, then close once the peer has read it (see L{end})."""
        sendable = self._open and self._encoder.can_send(record)
        chunks = self._encoder.send_buffers(record) if sendable else None
        self._stop(why)
        if chunks is None:
            self.transport.loseConnection()
            return
        self.transport.writeSequence(chunks)
        if self._tls is None:
            self.transport.loseWriteConnection()
        else:
            self.transport.loseConnection()  # TLS's half close: close_notify, then the peer's
        self._deadline = self._clock.callLater(self._timing.silence_timeout, self.transport.abortConnection)

    def _stop(self, error: Exception) -> None:
        """Decide that the link ends because of C{error}; closing is the caller's part."""
        self._failure = Failure(error)
        self._open = False
        self._stopTimers()
        self._report()

    def _report(self) -> None:
        """
        Tell the observer why the link ends, once, as soon as that is known:
        not when TCP is done closing, which after L{end} or a stream error
        waits for the peer, while the observer must stop using the link now.
        """
        if not self._reported:
            self._reported = True
            if self._failure.check(HandshakeError):
                self._guard.failed(self.local.domain, self.peer_address, self._failure.getErrorMessage())
            self._observer.linkLost(self, self._failure)

    def _stopTimers(self) -> None:
        for call in (self._deadline, self._silence):
            if call is not None and call.active():
                call.cancel()
        if self._beats.running:
            self._beats.stop()


@attrs.define
class PeerLinkFactory(Factory):
    """Builds a L{PeerLink} per connection, all reporting to one observer; under TLS when ``tls`` is given,
    as its client on the primary (which dials) and its server on the secondary."""

    noisy = False  # no "Starting factory" line per dial: a primary that redials says why, once per try

    local: Hello
    peer_node: str | None
    observer: IPeerLinkObserver
    clock: IReactorTime
    timing: LinkTiming = LinkTiming()
    tls: LinkTLS | None = None
    #: This node's generation of the domain now, for each link's hello (colod.engine.generation).
    generation: Callable[[], int] = attrs.field(default=lambda: 0)
    guard: HandshakeGuard = attrs.field(init=False)
    _wrap: Callable[[PeerLink], Protocol] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.guard = HandshakeGuard(self.clock)
        self._wrap = (lambda link: link) if self.tls is None else (
            self.tls.wrapper(client=self.local.role is Role.PRIMARY, clock=self.clock))

    def buildProtocol(self, addr: IAddress) -> Protocol | None:
        if not self.guard.admit(self.local.domain, address_text(addr)):
            return None
        local = attrs.evolve(self.local, generation=self.generation())
        return self._wrap(PeerLink(local, self.peer_node, self.observer, self.clock, self.timing,
                                   self.guard, self.tls))

    def stopFactory(self) -> None:
        self.guard.flush()


def link_of(protocol: Protocol) -> PeerLink:
    """The L{PeerLink} in a protocol a L{PeerLinkFactory} built, under TLS or not."""
    link = protocol.wrappedProtocol if isinstance(protocol, TLSMemoryBIOProtocol) else protocol
    assert isinstance(link, PeerLink)
    return link
