"""The partition and freeze matrix (issue 14): each fault, and each combination of the three network cuts,
held on a real pair under the etcd policy, then healed.

Every row is run on the lab's two real daemons and QEMUs with a real
etcd-server, the link through the proxy and each node's way to etcd through
a relay (tests.partition).  Both guests are looked at every 50 ms from the
first fault until the end: at no look may both run.  After the heal exactly
one runs, the one etcd names, and the other says why (it stands by, awaits
the operator, or stopped its guest for good); a takeover holds no checkpoint
older than the last the secondary said it applied, nor newer than the last
sent to it.  The last row is the rig's own
check: the heartbeat-only policy under a cut link runs both guests, and the
watch must say so.  The table of outcomes is printed at the end of the run.
"""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred

from tests.cluster import wait
from tests.partition import MATRIX, STANDING_BY, STOPPED_FOR_GOOD, Fault, Outcome, Pair, Watch, settle
from tests.rig import ScratchTestCase, async_test, sleep

#: The leases' TTL, seconds: short, so that a row lasts about half a minute.
TTL = 3
#: Seconds a fault is held: past the lease's TTL, the heartbeat timeout and the secondary's first decision.
HOLD = 3 * TTL

L, PE, SE = Fault.LINK, Fault.PRIMARY_ETCD, Fault.SECONDARY_ETCD


@attrs.frozen
class Row:
    faults: tuple[Fault, ...]
    #: Whose guest must run after the heal: "primary" (it kept it) or "secondary" (it took over).
    runs: str
    policy: str = "etcd"
    ttl: int = TTL
    hold: float = HOLD

    @property
    def name(self) -> str:
        return " + ".join(fault.value for fault in self.faults) + ("" if self.policy == "etcd" else
                                                                  f" ({self.policy})")


class PartitionMatrixTests(ScratchTestCase):
    timeout = 240
    pair: Pair

    async def run_row(self, row: Row) -> Outcome:
        self.pair = pair = Pair(self.workdir, row.policy, row.ttl)
        self.addCleanup(lambda: Deferred.fromCoroutine(pair.close()))
        await pair.start()
        floor = await wait(pair.lab.ops_floor())
        watch = Watch(pair.lab)
        watch.start()
        self.addCleanup(lambda: Deferred.fromCoroutine(watch.stop()))
        for fault in row.faults:
            await pair.apply(fault)
        await sleep(row.hold)
        for fault in row.faults:
            await pair.heal(fault)
        outcome = await settle(pair, watch, floor)
        await watch.stop()
        MATRIX.append((row.name, row.runs if row.policy == "etcd" else "violation", outcome))
        return outcome

    async def check(self, row: Row) -> None:
        """The row's outcome: no violation, the expected node runs, the other says why."""
        outcome = await self.run_row(row)
        self.assertEqual(outcome.violations, (), outcome.row() + self.pair.lab.primary.context()
                         + self.pair.lab.secondary.context())
        self.assertEqual(outcome.runs, row.runs, outcome.row())
        if row.runs == "secondary":
            self.assertTrue(outcome.took_over, outcome.row())
            self.assertIn(outcome.primary, STOPPED_FOR_GOOD, outcome.row())
            self.assertTrue(outcome.fenced, outcome.row())
            self.assertEqual(outcome.owner, "host-b/2", outcome.row())
        else:
            self.assertFalse(outcome.took_over, outcome.row())
            self.assertIn(outcome.secondary, STANDING_BY | {"awaiting_operator"}, outcome.row())
            self.assertEqual(outcome.owner, "host-a/1", outcome.row())

    @async_test
    async def test_link(self) -> None:
        await self.check(Row((L,), "primary"))

    @async_test
    async def test_primary_etcd(self) -> None:
        await self.check(Row((PE,), "secondary"))

    @async_test
    async def test_secondary_etcd(self) -> None:
        await self.check(Row((SE,), "primary"))

    @async_test
    async def test_link_and_primary_etcd(self) -> None:
        await self.check(Row((L, PE), "secondary"))

    @async_test
    async def test_link_and_secondary_etcd(self) -> None:
        await self.check(Row((L, SE), "primary"))

    @async_test
    async def test_both_etcd(self) -> None:
        await self.check(Row((PE, SE), "secondary"))

    @async_test
    async def test_link_and_both_etcd(self) -> None:
        await self.check(Row((L, PE, SE), "secondary"))

    @async_test
    async def test_freeze_primary(self) -> None:
        await self.check(Row((Fault.FREEZE_PRIMARY,), "secondary"))

    @async_test
    async def test_freeze_secondary(self) -> None:
        await self.check(Row((Fault.FREEZE_SECONDARY,), "primary"))

    @async_test
    async def test_etcd_restart(self) -> None:
        """etcd stopped and started again at once, while protected: with leases longer than the restart,
        ownership survives it (no second owner, the primary keeps its guest and its key)."""
        await self.check(Row((Fault.ETCD_DOWN,), "primary", ttl=10, hold=0))

    @async_test
    async def test_the_watch_sees_two_guests(self) -> None:
        """The rig's own check: under heartbeat-only a cut link runs both guests, and the watch says so."""
        outcome = await self.run_row(Row((L,), "secondary", policy="heartbeat-only"))
        self.assertTrue(outcome.violations, outcome.row())
        self.assertRegex(outcome.violations[0], r"^both guests ran at \d+ of \d+ looks")
