# -*- test-case-name: tests.failover.test_ownership -*-
"""A TCP relay on loopback that can be frozen: a network partition between one client and its server.

A client that reaches the server through the relay can be cut off while
others still reach the server directly (e.g. a primary cut from etcd while its
secondary is not).  Frozen, the relay reads nothing from either side, and
connections made meanwhile are accepted but carry nothing: to both ends it
looks like a network that drops every packet, and TCP retries.  Thawed,
whatever was held goes through, as after a healed partition.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IAddress, IListeningPort, IPushProducer, IReactorTCP, ITCPTransport
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.python.failure import Failure


class _Side(Protocol):
    """One end of a relayed connection: what it reads goes to the other end."""

    def __init__(self, relay: Relay, other: _Side | None = None) -> None:
        self.relay = relay
        self.other = other
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.relay.sides.add(self)
        if self.relay.frozen or self.other is None:
            self.pause()

    def pause(self) -> None:
        IPushProducer(self.transport).pauseProducing()

    def resume(self) -> None:
        IPushProducer(self.transport).resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        assert self.other is not None and self.other.transport is not None
        self.other.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.relay.sides.discard(self)
        if self.other is not None and self.other.transport is not None:
            self.other.transport.loseConnection()
        self.closed.callback(None)


class _Inbound(_Side):
    """The client's connection to the relay, which opens one to the server."""

    def connectionMade(self) -> None:
        super().connectionMade()
        server = TCP4ClientEndpoint(self.relay.reactor, "127.0.0.1", self.relay.target_port)
        connectProtocol(server, _Side(self.relay, self)).addCallbacks(self._linked, self._unreachable)

    def _linked(self, outbound: _Side) -> None:
        if self not in self.relay.sides:  # the client left meanwhile
            ITCPTransport(outbound.transport).loseConnection()
            return
        self.other = outbound
        if not self.relay.frozen:
            self.resume()

    def _unreachable(self, failure: Failure) -> None:
        ITCPTransport(self.transport).loseConnection()


class _Listener(ServerFactory):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def buildProtocol(self, addr: IAddress | None) -> _Inbound:
        return _Inbound(self.relay)


class Relay:
    """Relays connections to 127.0.0.1:``target_port`` from a port of its own, until close()."""

    def __init__(self, reactor: IReactorTCP, target_port: int) -> None:
        self.reactor = reactor
        self.target_port = target_port
        self.frozen = False
        self.sides: set[_Side] = set()
        self._listening: IListeningPort = reactor.listenTCP(0, _Listener(self), interface="127.0.0.1")

    @property
    def port(self) -> int:
        """Where the relay listens, on 127.0.0.1."""
        address = self._listening.getHost()
        assert isinstance(address, IPv4Address)
        return address.port

    @property
    def url(self) -> str:
        """The relay's address as a plain HTTP endpoint."""
        return f"http://127.0.0.1:{self.port}"

    def freeze(self) -> None:
        """Carry nothing more, either way, until thaw()."""
        self.frozen = True
        for side in self.sides:
            side.pause()

    def thaw(self) -> None:
        """Carry everything again, what was held first."""
        self.frozen = False
        for side in self.sides:
            if side.other is not None:
                side.resume()

    def close(self) -> Deferred[None]:
        """Stop listening and cut every connection; fires once all are closed."""
        return Deferred.fromCoroutine(self._close())

    async def _close(self) -> None:
        closing = [side.closed for side in self.sides]
        for side in list(self.sides):
            ITCPTransport(side.transport).abortConnection()
        for closed in closing:
            await closed
        await maybeDeferred(self._listening.stopListening)
