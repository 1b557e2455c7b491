"""The etcd policy's seats and verdicts against a real etcd-server: the primary's claim at start, the
secondary's claims when its primary is lost, and why each says no."""

from __future__ import annotations

import time

from twisted.internet import reactor

from colod.config import FailoverConfig, PolicyName
from colod.failover.etcd_policy import EtcdOperatorRequest, EtcdPolicy, EtcdSeat
from colod.failover.monotonic import MonotonicClock
from colod.failover.policy import FenceCommand, Manual, Rechecking
from colod.reactor import asyncio_loop
from tests.failover.rig import CALL_TIMEOUT, EtcdTestCase, dead_url
from tests.rig import async_test, sleep

#: The lease's TTL in these tests (seconds).
TTL = 2


class EtcdPolicyTests(EtcdTestCase):
    def seat(self, node: str, *endpoints: str, renewed: list[float] | None = None) -> EtcdSeat:
        failover = FailoverConfig(PolicyName.ETCD, etcd_endpoints=endpoints, etcd_lease_ttl=TTL,
                                  etcd_timeout=CALL_TIMEOUT)
        seat = EtcdSeat(failover, "guest1", node, reactor, MonotonicClock(asyncio_loop()),
                        on_renewed=(renewed if renewed is not None else []).append)
        self.addCleanup(seat.stop)
        return seat

    def policy(self, seat: EtcdSeat, generation: int) -> EtcdPolicy:
        return EtcdPolicy(seat, lambda: generation, reactor, CALL_TIMEOUT)

    @async_test
    async def test_a_live_owner_keeps_the_domain(self) -> None:
        """The primary owns a new domain in epoch 1; the secondary's claims lose to it until its deadline."""
        etcd = self.start_etcd()
        renewed: list[float] = []
        primary = self.seat("host-a", etcd.url, renewed=renewed)
        won = await primary.own(0)
        self.assertEqual((won.won, won.epoch), (True, 1))
        self.assertTrue(renewed)
        secondary = self.seat("host-b", etcd.url)
        await secondary.lease()
        policy = self.policy(secondary, 1)
        began = time.monotonic()
        verdict = await policy.decide()
        self.assertFalse(verdict.allowed)
        self.assertEqual(verdict.why, "host-a still holds guest1 in etcd (epoch 1): its lease is alive, "
                                      "so may be its guest")
        self.assertGreaterEqual(time.monotonic() - began, policy.deadline)

    @async_test
    async def test_a_recheck_is_one_claim_asked_again_every_ttl(self) -> None:
        """While the operator decides, the policy is asked again (Rechecking) once a TTL: one claim, lost
        while the owner's lease lives, won once it is gone; the manual and fence policies' no stands."""
        etcd = self.start_etcd()
        primary = self.seat("host-a", etcd.url)
        self.assertTrue((await primary.own(0)).won)
        secondary = self.seat("host-b", etcd.url)
        await secondary.lease()
        policy = self.policy(secondary, 1)
        self.assertIsInstance(policy, Rechecking)
        self.assertEqual(policy.recheck_interval, TTL)
        began = time.monotonic()
        verdict = await policy.recheck()
        self.assertLess(time.monotonic() - began, CALL_TIMEOUT * 2, "a recheck is one claim, not a decision")
        self.assertEqual((verdict.allowed, verdict.why),
                         (False, "host-a still holds guest1 in etcd (epoch 1): its lease is alive, "
                                 "so may be its guest"))
        await primary.stop()
        verdict = await policy.recheck()
        self.assertEqual((verdict.allowed, verdict.why), (True, "this node owns guest1 in etcd now, epoch 2"))
        for standing in (Manual(), FenceCommand(reactor, ["/bin/false"], 1.0, domain="guest1", peer="a")):
            self.assertNotIsInstance(standing, Rechecking)

    @async_test
    async def test_the_secondary_wins_once_the_owner_is_gone(self) -> None:
        etcd = self.start_etcd()
        primary = self.seat("host-a", etcd.url)
        self.assertTrue((await primary.own(0)).won)
        secondary = self.seat("host-b", etcd.url)
        await secondary.lease()
        await primary.stop()  # revoked: as if expired
        verdict = await self.policy(secondary, 1).decide()
        self.assertEqual((verdict.allowed, verdict.why), (True, "this node owns guest1 in etcd now, epoch 2"))

    @async_test
    async def test_a_newer_epoch_says_no(self) -> None:
        etcd = self.start_etcd()
        primary = self.seat("host-a", etcd.url)
        self.assertTrue((await primary.own(0)).won)
        await primary.stop()
        secondary = self.seat("host-b", etcd.url)
        await secondary.lease()
        policy = self.policy(secondary, 0)
        policy.deadline = 0  # one claim
        verdict = await policy.decide()
        self.assertFalse(verdict.allowed)
        self.assertEqual(verdict.why, "etcd's epoch 1 for guest1 is newer than this node's generation 0: "
                                      "another node took it over")

    @async_test
    async def test_a_primary_meets_an_owner(self) -> None:
        """A primary whose generation is etcd's epoch loses its claim at start to a live owner."""
        etcd = self.start_etcd()
        other = self.seat("host-b", etcd.url)
        self.assertTrue((await other.own(0)).won)
        result = await self.seat("host-a", etcd.url).own(1)
        self.assertFalse(result.won)
        self.assertEqual((result.owner.node if result.owner else None, result.epoch), ("host-b", 1))

    @async_test
    async def test_no_lease_says_no(self) -> None:
        policy = self.policy(self.seat("host-b", dead_url()), 1)
        policy.deadline = 0
        verdict = await policy.decide()
        self.assertFalse(verdict.allowed)
        self.assertRegex(verdict.why, "^this node's etcd lease is not safe to act on \\(no etcd lease yet to "
                                      "claim guest1 with\\)$")

    async def looks(self, request: EtcdOperatorRequest, seconds: float = 5.0) -> str | None:
        """What the engine's looks at ``request`` find within ``seconds`` (one every 0.05 s): the first."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            found = request.take()
            if found is not None:
                return found
            await sleep(0.05)
        return None

    @async_test
    async def test_an_operator_request_needs_a_won_claim(self) -> None:
        etcd = self.start_etcd()
        primary = self.seat("host-a", etcd.url)
        self.assertTrue((await primary.own(0)).won)
        secondary = self.seat("host-b", etcd.url)
        await secondary.lease()
        request = EtcdOperatorRequest(str(self.workdir), "guest1", self.policy(secondary, 1))
        request.path.parent.mkdir(parents=True)
        request.write("an operator from before")
        # The engine's first look removes a request from before its start: unclaimed.
        self.assertEqual(request.take(), "an operator from before")

        request.write("an operator")
        self.assertIsNone(await self.looks(request, 2.0))
        self.assertFalse(request.path.exists())  # refused (the primary holds its lease): dropped

        await primary.stop()
        request.write("an operator")
        self.assertEqual(await self.looks(request), "an operator; this node owns guest1 in etcd now, epoch 2")
