"""The LeaseKeeper: its safe deadline on a fake clock, and its lease kept alive in a real etcd.

The timing tests run on a task.Clock with FakeEtcd standing in for EtcdClient:
the test decides when and how each renewal is answered, which a real etcd
cannot be made to do to the millisecond.  The client itself is tested against
a real etcd in test_etcd; the keeper with a real etcd here and in test_ownership.
"""

from __future__ import annotations

import asyncio
from typing import cast

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from colod.failover.etcd import EtcdClient, EtcdUnavailable, Lease
from colod.failover.lease import LeaseKeeper
from colod.failover.monotonic import MonotonicClock
from colod.reactor import asyncio_loop
from colod.testing.lab import Poll
from tests.cluster import wait
from tests.failover.rig import EtcdTestCase, now
from tests.rig import async_test, sleep

LEASE_ID = 0x1234


class FakeEtcd:
    """Stands in for EtcdClient's lease calls: grants at once, holds each renewal for the test to answer."""

    def __init__(self) -> None:
        self.renewals: list[Deferred[int]] = []
        self.revoked: list[int] = []

    def grant(self, ttl: int) -> Deferred[Lease]:
        return succeed(Lease(LEASE_ID, ttl))

    def keepalive(self, lease_id: int) -> Deferred[int]:
        self.renewals.append(Deferred())
        return self.renewals[-1]

    def revoke(self, lease_id: int) -> Deferred[None]:
        self.revoked.append(lease_id)
        return succeed(None)


class DeadlineTests(SynchronousTestCase):
    """TTL 9 s and a margin of 1 s: renewals every 3 s, the deadline 8 s after a renewal was sent."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.etcd = FakeEtcd()
        self.events: list[tuple[str, float]] = []
        self.keeper = LeaseKeeper(
            cast(EtcdClient, self.etcd), 9, clock=self.clock, margin=1.0,
            on_expiring=lambda: self.events.append(("expiring", self.clock.seconds())),
            on_lost=lambda why: self.events.append(("lost", self.clock.seconds())))
        self.successResultOf(self.keeper.start())

    def test_deadline_counts_from_the_sending(self) -> None:
        """The deadline is the renewal's sending time plus TTL less the margin, however late the answer."""
        self.assertEqual(self.keeper.deadline, 8.0)
        self.clock.advance(3)
        self.assertEqual(len(self.etcd.renewals), 1)
        self.clock.advance(2)
        self.etcd.renewals[0].callback(9)
        self.assertEqual(self.keeper.deadline, 3 + 9 - 1)
        self.assertTrue(self.keeper.safe())

    def test_expiring_at_the_deadline_when_renewals_fail(self) -> None:
        """Failing renewals go on every 3 s; on_expiring comes once, at the deadline, not before."""
        for _ in range(12):
            self.clock.advance(1)
            if self.etcd.renewals and not self.etcd.renewals[-1].called:
                self.etcd.renewals[-1].errback(EtcdUnavailable("test"))
        self.assertEqual(len(self.etcd.renewals), 4)
        self.assertEqual(self.events, [("expiring", 8.0)])
        self.assertFalse(self.keeper.safe())

    def test_hung_renewal_is_cut_off(self) -> None:
        """A renewal with no answer is given up at the next one's time, which is then sent."""
        self.clock.advance(3)
        self.clock.advance(3)
        self.assertEqual(len(self.etcd.renewals), 2)
        self.assertTrue(self.etcd.renewals[0].called)  # cancelled: it timed out
        self.assertTrue(self.etcd.renewals[0].called)  # cancelled

    def test_a_late_renewal_makes_it_safe_again(self) -> None:
        """After on_expiring, a renewal that etcd answers moves the deadline on; a new lapse tells again."""
        self.clock.pump([1] * 9)  # renewals sent at 3, 6, 9 (the first two cut off); expiring at 8
        self.assertEqual(self.events, [("expiring", 8.0)])
        self.etcd.renewals[-1].callback(9)  # the one sent at 9
        self.assertEqual(self.keeper.deadline, 17.0)
        self.assertTrue(self.keeper.safe())
        self.clock.pump([1] * 9)
        self.assertEqual(self.events, [("expiring", 8.0), ("expiring", 17.0)])

    def test_lost_after_expiring(self) -> None:
        """A renewal answered with TTL 0 (etcd has no such lease) calls on_expiring, then on_lost, and ends
        the renewals."""
        self.clock.advance(3)
        self.etcd.renewals[0].callback(0)
        self.assertEqual(self.events, [("expiring", 3.0), ("lost", 3.0)])
        self.clock.advance(30)
        self.assertEqual(len(self.etcd.renewals), 1)
        self.assertFalse(self.keeper.safe())

    def test_stop_revokes_and_renews_no_more(self) -> None:
        """stop() revokes the lease, cancels the renewal under way and sends no other."""
        self.clock.advance(3)
        self.successResultOf(self.keeper.stop())
        self.assertEqual(self.etcd.revoked, [LEASE_ID])
        self.assertTrue(self.etcd.renewals[0].called)  # cancelled
        self.clock.advance(30)
        self.assertEqual((len(self.etcd.renewals), self.events), (1, []))


class RealLeaseTests(EtcdTestCase):
    @async_test
    async def test_kept_alive_past_its_ttl(self) -> None:
        """A kept lease outlives its TTL (2 s) many times over, renewed about every TTL/3."""
        client = self.client(self.start_etcd().url)
        expiring: list[float] = []
        keeper = self.keeper(client, 2, expiring, [])
        lease = await keeper.start()
        await sleep(5.0)
        self.assertGreater(await client.time_to_live(lease.id), 0)
        self.assertGreaterEqual(keeper.renewals, 5)
        self.assertEqual(expiring, [])
        self.assertTrue(keeper.safe())

    @async_test
    async def test_revoked_elsewhere_is_lost(self) -> None:
        """A lease revoked behind the keeper's back is reported lost at its next renewal."""
        client = self.client(self.start_etcd().url)
        expiring: list[float] = []
        lost: list[str] = []
        keeper = self.keeper(client, 3, expiring, lost)
        lease = await keeper.start()
        await client.revoke(lease.id)
        why = await wait(Poll(lambda: lost[0] if lost else None, 3.0, "the lease reported lost"))
        self.assertIn(f"{lease.id:x}", why)
        self.assertEqual(len(expiring), 1)
        self.assertFalse(keeper.safe())


async def loop_sleep(seconds: float) -> None:
    """Sleep on the asyncio loop's (monotonic) timers: the reactor's may be stepped by a test."""
    await Deferred.fromFuture(asyncio.ensure_future(asyncio.sleep(seconds), loop=asyncio_loop()))


class MonotonicClockTests(EtcdTestCase):
    @async_test
    async def test_timers(self) -> None:
        """Timers fire in their order, on the loop's clock; a cancelled one never does, and says so after."""
        clock = MonotonicClock(asyncio_loop())
        fired: list[str] = []
        started = clock.seconds()
        later = clock.callLater(0.2, fired.append, "later")
        clock.callLater(0.1, fired.append, "sooner")
        cancelled = clock.callLater(0.05, fired.append, "cancelled")
        cancelled.cancel()
        self.assertEqual(len(clock.getDelayedCalls()), 2)
        await loop_sleep(0.3)
        self.assertEqual(fired, ["sooner", "later"])
        self.assertLess(abs(later.getTime() - (started + 0.2)), 0.05)
        self.assertFalse(later.active())
        self.assertRaises(AlreadyCalled, later.cancel)
        self.assertRaises(AlreadyCancelled, cancelled.cancel)
        self.assertEqual(clock.getDelayedCalls(), [])

    @async_test
    async def test_keeper_fences_on_time_though_the_wall_clock_steps_back(self) -> None:
        """etcd frozen, and the wall clock stepped back an hour (the reactor's timers with it): a keeper
        on MonotonicClock still calls on_expiring before its lease's TTL from its last renewal sent."""
        server = self.start_etcd()
        expiring: list[float] = []
        keeper = self.keeper(self.client(server.url), 2, expiring, [])
        await keeper.start()
        server.pause()
        self.addCleanup(server.resume)
        wall = reactor.seconds
        self.patch(reactor, "seconds", lambda: wall() - 3600)
        deadline = now() + 5.0
        while not expiring and now() < deadline:
            await loop_sleep(0.05)
        assert keeper.renewed_at is not None
        self.assertEqual(len(expiring), 1, "no on_expiring within 5 s")
        self.assertLess(expiring[0], keeper.renewed_at + 2)
