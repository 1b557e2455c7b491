# -*- test-case-name: tests.engine.test_peering -*-
"""Where a domain's peer link comes from: the secondary listens, the primary dials.

Both use the Twisted endpoint strings of ``[peer]``, and put the link under
mutual TLS with the files of ``[tls]`` unless ``peer.tls = false`` (colod.tls).
The primary dials again,
every RETRY_INTERVAL seconds (colod.retry), until its engine has answered one
link's hello (the secondary's colod may start later, or refuse a first
handshake).  The engine's answer ends the dialling, whichever it is: it took
the link, and the link is the engine's from then on (stopping never cuts it);
or it refused it.  Once that link is gone, the primary dials again, later
each time (up to REDIAL_MAX): not to protect the domain again (that is not
automatic in this version; the engine refuses the link), but so that each
side reads the other's generation once the network heals, and a primary that
was taken over from meanwhile learns it and stops its guest
(colod.engine.generation).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import endpoints
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from colod.config import Config, DomainConfig
from colod.protocol import HandshakeError, Record
from colod.protocol.handshake import Hello
from colod.protocol.peer import IPeerLinkObserver, LinkTiming, PeerLink, PeerLinkFactory, link_of
from colod.retry import Retry
from colod.role import Role
from colod.tls import PeerTLS, load

#: Seconds between the primary's attempts to reach its secondary.
RETRY_INTERVAL = 2.0
#: The longest wait before the primary dials again after a link it had was lost: it dials on, so that a
#: peer that took the domain over meanwhile (a newer generation) is found once the network heals.
REDIAL_MAX = 300.0


class PeerEndpoint:
    """Makes the peer link of one domain's engine."""

    log = Logger()

    def __init__(self, config: Config, domain: DomainConfig, engine: IPeerLinkObserver,
                 reactor: IReactorTime, retry_interval: float = RETRY_INTERVAL,
                 generation: Callable[[], int] = lambda: 0) -> None:
        """@raise colod.tls.TLSFileError: a file of ``[tls]`` no longer serves."""
        self._config = config
        self._reactor = reactor
        self._dialler: _Dialler | None = None
        observer = engine
        if config.role is Role.PRIMARY:
            observer = self._dialler = _Dialler(engine, on_lost=self._redial_later)
        self._factory = PeerLinkFactory(
            local=Hello(config.role, domain.name, config.node_name),
            peer_node=config.peer.node_name,
            observer=observer,
            clock=reactor,
            timing=LinkTiming(heartbeat_interval=config.peer.heartbeat_interval,
                              silence_timeout=config.peer.heartbeat_timeout),
            tls=_tls(config),
            generation=generation,
        )
        self._dialling = Retry(self._dial, succeeded=lambda _: None, failed=self._undialled,
                               delay=retry_interval, clock=reactor)
        self._port: IListeningPort | None = None
        #: After each link lost, the wait before dialling again; it doubles up to REDIAL_MAX, so that a
        #: peer that refuses every link (neither side can take it up) is asked rarely.
        self._redial_delay = retry_interval
        self._redial: IDelayedCall | None = None
        self._stopped = False

    def start(self) -> Deferred[None]:
        """Listen (secondary) or begin dialling (primary); fails if the address cannot be listened on."""
        if self._factory.tls is not None:
            assert self._config.tls is not None
            self.log.info("domain {domain}: the peer link is mutual TLS: only {peer}, with a certificate "
                          "from the CA of {ca}, is let in", domain=self._factory.local.domain,
                          peer=self._config.peer.node_name, ca=self._config.tls.ca)
        if self._dialler is None:
            endpoint = endpoints.serverFromString(self._reactor, self._config.peer.listen)
            return endpoint.listen(self._factory).addCallback(self._listening)
        self._dialling.start()
        return succeed(None)

    def _listening(self, port: IListeningPort) -> None:
        self._port = port
        address = port.getHost()
        self.log.info("listening for the primary on {host}:{port}", host=address.host, port=address.port)

    def _dial(self) -> Deferred[None]:
        assert self._dialler is not None
        endpoint = endpoints.clientFromString(self._reactor, self._config.peer.connect)
        return Deferred.fromCoroutine(self._dialler.dial(endpoint.connect(self._factory)))

    def _undialled(self, failure: Failure) -> bool:
        if not failure.check(HandshakeError):  # the link logged it, with its limits
            self.log.info("secondary not reachable at {where} ({why}); trying again in {delay:g} s",
                          where=self._config.peer.connect, why=failure.getErrorMessage(),
                          delay=self._dialling.delay)
        return True

    def _redial_later(self) -> None:
        """A link the engine answered is gone: dial again, later each time."""
        if self._stopped or (self._redial is not None and self._redial.active()):
            return
        self._redial = self._reactor.callLater(self._redial_delay, self._dialling.start)
        self._redial_delay = min(self._redial_delay * 2, REDIAL_MAX)

    def stop(self) -> Deferred[None]:
        """Stop listening or dialling (a link the engine has answered is the engine's to end)."""
        self._stopped = True
        if self._redial is not None and self._redial.active():
            self._redial.cancel()
        self._dialling.stop()
        if self._port is not None:
            return Deferred.fromCoroutine(_stop_listening(self._port))
        return succeed(None)


@implementer(IPeerLinkObserver)
class _Dialler:
    """The primary's links on their way to its engine: tells a dial whether the engine answered its hello.

    One dial is under way at a time (colod.retry), so one answer is awaited at a time.
    """

    def __init__(self, engine: IPeerLinkObserver, on_lost: Callable[[], None]) -> None:
        self._engine = engine
        self._on_lost = on_lost
        self._link: PeerLink | None = None
        self._answer: Deferred[None] | None = None
        #: The last link whose hello the engine answered: its loss is reported to ``on_lost``.
        self._answered: PeerLink | None = None

    async def dial(self, connecting: Deferred[Protocol]) -> None:
        """Fire once the engine answered the hello of the link ``connecting`` makes; fail if it ends before.

        Cancelled while the handshake is under way, the link is closed: the
        engine never saw it.
        """
        self._answer = Deferred(lambda _: self._hang_up())
        try:
            self._link = link_of(await connecting)
            await self._answer
        finally:
            self._link = self._answer = None

    def _hang_up(self) -> None:
        if self._link is not None:
            self._link.close()

    def linkReady(self, link: PeerLink, peer: Hello) -> None:
        answer, self._answer = self._answer, None
        if answer is not None:
            answer.callback(None)
        self._answered = link
        self._engine.linkReady(link, peer)

    def recordReceived(self, link: PeerLink, record: Record) -> None:
        self._engine.recordReceived(link, record)

    def peerSilent(self, link: PeerLink, seconds: float) -> None:
        self._engine.peerSilent(link, seconds)

    def linkLost(self, link: PeerLink, reason: Failure) -> None:
        answer = self._answer if link is self._link else None
        if answer is not None:
            self._answer = None
            answer.errback(reason)
        self._engine.linkLost(link, reason)
        if link is self._answered:
            self._answered = None
            self._on_lost()


def _tls(config: Config) -> PeerTLS | None:
    """The link's TLS, or None for a plaintext link (``peer.tls = false``)."""
    if not config.peer.tls:
        return None
    assert config.tls is not None  # the configuration requires [tls] for a TLS link
    files = config.tls
    return PeerTLS(load(files.ca, files.certificate, files.key, config.node_name))


async def _stop_listening(port: IListeningPort) -> None:
    await port.stopListening()
