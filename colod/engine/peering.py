# -*- test-case-name: tests.engine.test_engines -*-
"""Where a domain's peer link comes from: the secondary listens, the primary connects.

Both use the Twisted endpoint strings of ``[peer]``.  The primary keeps
trying, every RETRY_INTERVAL seconds, for as long as its engine waits for a
secondary (the secondary's colod may start later, or refuse a first
handshake); once the engine has a secondary, or has given one up, it stops:
protecting the domain again is not automatic in this version.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import endpoints
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from colod.config import Config, DomainConfig
from colod.engine.core import EngineCore
from colod.protocol.handshake import Hello, Role
from colod.protocol.peer import LinkTiming, PeerLinkFactory

#: Seconds between the primary's attempts to reach its secondary.
RETRY_INTERVAL = 2.0


class PeerEndpoint:
    """Makes the peer link of one domain's engine."""

    log = Logger()

    def __init__(self, config: Config, domain: DomainConfig, engine: EngineCore, reactor: Any) -> None:
        self._config = config
        self._engine = engine
        self._reactor = reactor
        role = Role(config.role)
        self._factory = PeerLinkFactory(
            local=Hello(role, domain.name, config.node_name),
            peer_node=config.peer.node_name,
            observer=engine,
            clock=reactor,
            timing=LinkTiming(heartbeat_interval=config.peer.heartbeat_interval,
                              silence_timeout=config.peer.heartbeat_timeout),
        )
        self._port: IListeningPort | None = None
        self._attempts: LoopingCall | None = None
        self._connecting: Deferred[Any] | None = None
        self._protocol: Any = None

    def start(self) -> Deferred[None]:
        """Listen (secondary) or begin connecting (primary); fails if the address cannot be listened on."""
        if self._config.role == "secondary":
            endpoint = endpoints.serverFromString(self._reactor, self._config.peer.listen)
            return endpoint.listen(self._factory).addCallback(self._listening)
        self._attempts = LoopingCall(self._attempt)
        self._attempts.clock = self._reactor
        self._attempts.start(RETRY_INTERVAL, now=True)
        return succeed(None)

    def _listening(self, port: IListeningPort) -> None:
        self._port = port
        address = port.getHost()
        self.log.info("listening for the primary on {host}:{port}", host=address.host, port=address.port)

    def _attempt(self) -> None:
        if self._engine.state != "waiting_for_secondary":
            self._attempts.stop()  # type: ignore[union-attr]
            return
        if self._connecting is not None or (self._protocol is not None and self._protocol.connected):
            return
        endpoint = endpoints.clientFromString(self._reactor, self._config.peer.connect)
        self._connecting = endpoint.connect(self._factory)
        self._connecting.addCallbacks(self._connected, self._failed)

    def _connected(self, protocol: Any) -> None:
        self._connecting = None
        self._protocol = protocol

    def _failed(self, failure: Any) -> None:
        self._connecting = None
        self.log.info("secondary not reachable at {where} ({why}); trying again in {delay:g} s",
                      where=self._config.peer.connect, why=failure.getErrorMessage(), delay=RETRY_INTERVAL)

    def stop(self) -> Deferred[None]:
        """Stop listening or connecting (an open link is the engine's to end)."""
        if self._attempts is not None and self._attempts.running:
            self._attempts.stop()
        if self._connecting is not None:
            self._connecting.cancel()
        if self._port is not None:
            return Deferred.fromCoroutine(_stop_listening(self._port))
        return succeed(None)


async def _stop_listening(port: IListeningPort) -> None:
    await port.stopListening()
