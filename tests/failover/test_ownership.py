"""Ownership of a domain in a real etcd: one owner per epoch, takeover only after the owner's lease, which the
owner's keeper gives up first.

Nodes "a" and "b" are two Ownerships, each with its own client and lease, as two hosts would have.
"""

from __future__ import annotations

import time

from twisted.internet import reactor

from colod.failover.etcd import EtcdUnavailable
from colod.failover.ownership import ClaimResult, NotLeased, Owner, Ownership, Standing
from colod.testing.lab import Poll
from colod.testing.relay import Relay
from tests.cluster import wait
from tests.failover.rig import EtcdTestCase, now
from tests.rig import async_test, sleep

DOMAIN = "guest"
#: Seconds between a rival's claims while it waits for the owner's lease to expire.
CLAIM_INTERVAL = 0.05


class Node:
    """One node of a test: its keeper (which notes when it called on_expiring) and its Ownership."""

    def __init__(self, test: EtcdTestCase, name: str, urls: str | list[str], ttl: int) -> None:
        self.name = name
        self.expiring: list[float] = []
        self.lost: list[str] = []
        client = test.client(*([urls] if isinstance(urls, str) else urls))
        self.keeper = test.keeper(client, ttl, self.expiring, self.lost)
        self.ownership = Ownership(client, self.keeper, prefix="/test/")

    async def start(self) -> Node:
        await self.keeper.start()
        return self

    async def claim(self, known_epoch: int) -> ClaimResult:
        return await self.ownership.claim(DOMAIN, self.name, known_epoch)


class ClaimTests(EtcdTestCase):
    async def nodes(self, ttl: int = 10) -> tuple[Node, Node]:
        server = self.start_etcd()
        return await Node(self, "a", server.url, ttl).start(), await Node(self, "b", server.url, ttl).start()

    @async_test
    async def test_claim_wins_once(self) -> None:
        """The first claim of epoch 1 wins; a second node's claim with the same known epoch loses and
        learns who owns the domain, in which epoch."""
        a, b = await self.nodes()
        self.assertEqual(await a.claim(0), ClaimResult(won=True, owner=Owner("a", 1), epoch=1))
        self.assertEqual(await b.claim(0), ClaimResult(won=False, owner=Owner("a", 1), epoch=1))
        self.assertEqual(await b.claim(1), ClaimResult(won=False, owner=Owner("a", 1), epoch=1))
        self.assertEqual(await b.ownership.read(DOMAIN), Standing(Owner("a", 1), 1))

    @async_test
    async def test_stale_epoch_loses(self) -> None:
        """With no owner, a claim that knows an older epoch than etcd's loses; one that knows etcd's wins."""
        a, b = await self.nodes()
        await a.claim(0)
        self.assertTrue(await a.ownership.release(DOMAIN, "a"))
        self.assertEqual(await b.claim(0), ClaimResult(won=False, owner=None, epoch=1))
        self.assertEqual(await b.claim(1), ClaimResult(won=True, owner=Owner("b", 2), epoch=2))
        self.assertEqual(await a.claim(1), ClaimResult(won=False, owner=Owner("b", 2), epoch=2))

    @async_test
    async def test_owner_claims_the_next_epoch(self) -> None:
        """The owner may claim the next epoch itself; a claim sent again (its answer lost) still reads won."""
        a, b = await self.nodes()
        await a.claim(0)
        self.assertEqual(await a.claim(1), ClaimResult(won=True, owner=Owner("a", 2), epoch=2))
        self.assertEqual(await a.claim(1), ClaimResult(won=True, owner=Owner("a", 2), epoch=2))
        self.assertEqual(await a.claim(0), ClaimResult(won=False, owner=Owner("a", 2), epoch=2))

    @async_test
    async def test_release_only_by_the_owner(self) -> None:
        """release() deletes the owner key only for the node it names; the epoch stays."""
        a, b = await self.nodes()
        await a.claim(0)
        self.assertFalse(await b.ownership.release(DOMAIN, "b"))
        self.assertEqual(await a.ownership.read(DOMAIN), Standing(Owner("a", 1), 1))
        self.assertTrue(await a.ownership.release(DOMAIN, "a"))
        self.assertFalse(await a.ownership.release(DOMAIN, "a"))
        self.assertEqual(await a.ownership.read(DOMAIN), Standing(None, 1))

    @async_test
    async def test_no_claim_without_a_lease(self) -> None:
        """A node whose lease was not granted, or was lost, cannot claim."""
        server = self.start_etcd()
        a = Node(self, "a", server.url, 10)
        with self.assertRaises(NotLeased):
            await a.claim(0)
        await a.start()
        await a.keeper.stop()
        with self.assertRaises(NotLeased):
            await a.claim(0)


class TakeoverTests(EtcdTestCase):
    async def rival_wins(self, rival: Node, known_epoch: int, timeout: float) -> float:
        """Claim as ``rival`` until a claim wins; the time (now()) that claim was sent."""
        deadline = time.monotonic() + timeout
        while True:
            sent = now()
            if (await rival.claim(known_epoch)).won:
                return sent
            self.assertLess(time.monotonic(), deadline, "the rival's claim never won")
            await sleep(CLAIM_INTERVAL)

    @async_test
    async def test_takeover_after_the_owner_lease_expires(self) -> None:
        """When the owner stops renewing (it died), the rival wins epoch 2 once the owner's lease (2 s) has
        expired, not before the owner's deadline."""
        server = self.start_etcd()
        a, b = await Node(self, "a", server.url, 2).start(), await Node(self, "b", server.url, 10).start()
        await a.claim(0)
        assert a.keeper.deadline is not None
        await a.keeper.stop(revoke=False)
        won_at = await self.rival_wins(b, 1, 10.0)
        self.assertGreater(won_at, a.keeper.deadline)
        self.assertEqual(await b.ownership.read(DOMAIN), Standing(Owner("b", 2), 2))

    @async_test
    async def test_ownership_survives_an_etcd_restart(self) -> None:
        """etcd restarted: the owner's keeper renews the same lease, its owner key is still there, and a
        rival's claim still loses; the owner never had to fence."""
        server = self.start_etcd()
        a, b = await Node(self, "a", server.url, 10).start(), await Node(self, "b", server.url, 10).start()
        await a.claim(0)
        server.restart()
        renewals = a.keeper.renewals
        await wait(Poll(lambda: a.keeper.renewals > renewals or None, 10.0, "a renewal after the restart"))
        self.assertEqual(await b.claim(1), ClaimResult(won=False, owner=Owner("a", 1), epoch=1))
        self.assertEqual(await b.ownership.read(DOMAIN), Standing(Owner("a", 1), 1))
        self.assertEqual((a.expiring, a.lost), ([], []))

    @async_test
    async def test_frozen_etcd_owner_fences_before_the_rival_wins(self) -> None:
        """etcd frozen (SIGSTOP) past the owner's TTL: the owner's keeper calls on_expiring before its lease
        can expire (TTL after its last renewal was sent); after etcd thaws the rival's claim wins, and
        strictly after on_expiring; the owner then learns its lease is lost."""
        server = self.start_etcd()
        a, b = await Node(self, "a", server.url, 2).start(), await Node(self, "b", server.url, 10).start()
        await a.claim(0)
        server.pause()
        await wait(Poll(lambda: a.expiring or None, 5.0, "the owner's on_expiring"))
        assert a.keeper.renewed_at is not None and a.keeper.lease is not None
        self.assertLess(a.expiring[0], a.keeper.renewed_at + a.keeper.lease.ttl)
        await sleep(2.0)  # past the lease's TTL
        server.resume()
        won_at = await self.rival_wins(b, 1, 10.0)
        self.assertLess(a.expiring[0], won_at)
        await wait(Poll(lambda: a.lost or None, 5.0, "the owner's lease reported lost"))
        self.assertEqual(len(a.expiring), 1)

    @async_test
    async def test_owner_cut_from_etcd_fences_before_the_rival_wins(self) -> None:
        """The owner cut from etcd (a frozen relay) while the rival still reaches it: the owner's keeper calls
        on_expiring before its lease can expire, and so strictly before the rival's first winning claim was
        sent; once the cut heals the owner learns its lease is lost, and the rival owns epoch 2."""
        server = self.start_etcd()
        relay = Relay(reactor, server.client_port)
        self.addCleanup(relay.close)
        a, b = await Node(self, "a", relay.url, 2).start(), await Node(self, "b", server.url, 10).start()
        await a.claim(0)
        relay.freeze()
        won_at = await self.rival_wins(b, 1, 10.0)
        assert a.keeper.renewed_at is not None and a.keeper.lease is not None
        self.assertEqual(len(a.expiring), 1)
        self.assertLess(a.expiring[0], a.keeper.renewed_at + a.keeper.lease.ttl)
        self.assertLess(a.expiring[0], won_at)
        relay.thaw()
        await wait(Poll(lambda: a.lost or None, 5.0, "the owner's lease reported lost"))
        self.assertEqual(await a.ownership.read(DOMAIN), Standing(Owner("b", 2), 2))
        with self.assertRaises(NotLeased):
            await a.claim(2)


class ClusterTests(EtcdTestCase):
    @async_test
    async def test_ownership_survives_the_loss_of_the_leader(self) -> None:
        """A 3-member cluster loses its leader, the member the owner's client tried first: the owner's keeper
        renews through another member, it stays the owner, and a rival's claims meanwhile all lose."""
        members = self.start_cluster()
        (leader,) = [member for member in members if member.is_leader()]
        urls = [leader.url] + [member.url for member in members if member is not leader]
        a, b = await Node(self, "a", urls, 5).start(), await Node(self, "b", urls[::-1], 5).start()
        await a.claim(0)
        leader.kill()
        renewals = a.keeper.renewals
        ended = now() + 5.0
        while now() < ended:
            try:
                self.assertFalse((await b.claim(1)).won)
            except EtcdUnavailable:
                pass  # no leader yet: the rival cannot claim either
            await sleep(CLAIM_INTERVAL)
        self.assertGreater(a.keeper.renewals, renewals)
        self.assertEqual(await a.ownership.read(DOMAIN), Standing(Owner("a", 1), 1))
        self.assertEqual(a.lost, [])
