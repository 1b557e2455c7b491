"""The primary dials its secondary until its engine answers one hello, then never again; stopping never
cuts a link the engine has.  Real TCP on the loopback, real peer links on both ends; the engines are
recorders."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path

from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from colod import config
from colod.engine.peering import PeerEndpoint
from colod.protocol.handshake import Hello, Role
from colod.protocol.peer import IPeerLinkObserver, PeerLink, PeerLinkFactory
from colod.testing.processes import free_port
from tests.rig import ScratchTestCase, async_test, sleep
from tests.test_config import CONNECT, edited

RETRY = 0.05
DOMAIN = "guest1"  # tests.test_config.GOOD's


@implementer(IPeerLinkObserver)
class Recorder:
    """An engine that takes (or refuses) every link and records what it heard."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.ready: list[PeerLink] = []
        self.lost: list[tuple[PeerLink, Failure]] = []

    def linkReady(self, link: PeerLink, peer: Hello) -> None:
        self.ready.append(link)
        if self.refuse:
            link.refuse("not waiting for a secondary")

    def recordReceived(self, link: PeerLink, record: object) -> None:
        pass

    def peerSilent(self, link: PeerLink, seconds: float) -> None:
        pass

    def linkLost(self, link: PeerLink, reason: Failure) -> None:
        self.lost.append((link, reason))


class Mute(Protocol):
    """A listener that accepts and never says hello."""


class PeeringTests(ScratchTestCase):
    def setUp(self) -> None:
        super().setUp()
        from twisted.internet import reactor

        self.reactor = reactor
        self.port = free_port()
        path = Path(self.workdir) / "colod.toml"
        connect = f'connect = "tcp:host=127.0.0.1:port={self.port}"'
        path.write_text(edited(CONNECT, connect, edited('role = "secondary"', 'role = "primary"')))
        self.config = config.load(path)
        self.accepted = 0
        #: When each connection was accepted (time.monotonic()).
        self.accepted_at: list[float] = []

    def primary(self, engine: Recorder, retry: float = RETRY) -> PeerEndpoint:
        peer = PeerEndpoint(self.config, self.config.domains[0], engine, self.reactor, retry_interval=retry)
        self.addCleanup(peer.stop)
        return peer

    async def listen(self, factory: Factory) -> IListeningPort:
        """Listen on the primary's peer port, counting the connections accepted."""
        build: Callable[[object], Protocol | None] = factory.buildProtocol

        def counted(addr: object) -> Protocol | None:
            self.accepted += 1
            self.accepted_at.append(time.monotonic())
            return build(addr)

        factory.buildProtocol = counted  # type: ignore[method-assign]
        endpoint = endpoints.TCP4ServerEndpoint(self.reactor, self.port, interface="127.0.0.1")
        port = await endpoint.listen(factory)
        self.addCleanup(port.stopListening)
        return port

    def secondary(self, observer: Recorder) -> PeerLinkFactory:
        return PeerLinkFactory(local=Hello(Role.SECONDARY, DOMAIN, "dom0-b"), peer_node=None,
                               observer=observer, clock=self.reactor)

    async def until(self, condition: Callable[[], bool], seconds: float = 10.0) -> None:
        for _ in range(int(seconds / 0.01)):
            if condition():
                return
            await sleep(0.01)
        self.fail("condition not met in time")

    @async_test
    async def test_dials_until_answered_then_not_while_the_link_lasts(self) -> None:
        """Refused connections are dialled again; while the engine has the link, no second dial (no
        double link); once it is lost, a dial again, after the retry delay."""
        engine, remote = Recorder(), Recorder()
        self.primary(engine).start()
        await sleep(RETRY * 4)  # a few refused connections
        self.assertEqual(engine.ready, [])
        await self.listen(self.secondary(remote))
        await self.until(lambda: len(engine.ready) == 1 and len(remote.ready) == 1)
        await sleep(RETRY * 6)
        self.assertEqual((self.accepted, len(engine.ready)), (1, 1))
        remote.ready[0].close()
        await self.until(lambda: len(engine.lost) == 1)
        await self.until(lambda: len(engine.ready) == 2)
        self.assertEqual(self.accepted, 2)
        engine.ready[1].close()
        await self.until(lambda: len(engine.lost) == 2 and len(remote.lost) == 2)

    @async_test
    async def test_links_refused_by_its_engine_are_dialled_later_each_time(self) -> None:
        """An engine that refuses each link (it waits for no secondary) hears again from the peer, the
        wait doubling each time: a peer that took the domain over meanwhile is found, rarely asked."""
        retry = 0.2
        engine, remote = Recorder(refuse=True), Recorder()
        self.primary(engine, retry).start()
        await self.listen(self.secondary(remote))
        await self.until(lambda: self.accepted == 4)
        gaps = [later - earlier for earlier, later in itertools.pairwise(self.accepted_at)]
        self.assertGreaterEqual(gaps[0], retry * 0.9, gaps)
        for shorter, longer in itertools.pairwise(gaps):
            self.assertGreater(longer, shorter * 1.4, gaps)
        self.assertEqual(len(engine.ready), 4)

    @async_test
    async def test_stop_never_cuts_the_engines_link(self) -> None:
        """stop() after the engine took the link leaves it open."""
        engine, remote = Recorder(), Recorder()
        peer = self.primary(engine)
        peer.start()
        await self.listen(self.secondary(remote))
        await self.until(lambda: len(engine.ready) == 1)
        await peer.stop()
        await sleep(RETRY * 6)
        self.assertEqual((engine.lost, remote.lost), ([], []))
        engine.ready[0].close()
        await self.until(lambda: len(remote.lost) == 1)

    @async_test
    async def test_stop_during_the_handshake_closes_the_link_unseen(self) -> None:
        """stop() while the hello is awaited closes that connection; the engine never had it."""
        engine = Recorder()
        closed: Deferred[None] = Deferred()

        class Watched(Mute):
            def connectionLost(self, reason: object = None) -> None:
                closed.callback(None)

        peer = self.primary(engine)
        peer.start()
        await self.listen(Factory.forProtocol(Watched))
        await self.until(lambda: self.accepted == 1)
        await peer.stop()
        await closed
        await sleep(RETRY * 4)
        self.assertEqual((self.accepted, engine.ready), (1, []))
