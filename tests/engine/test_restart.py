"""A secondary colod killed and started again protects the guest again, with the QEMUs it left behind.

Its killed run left the NBD server, the exports and running replication in
the secondary's QEMU; the restarted daemon clears and takes them over
(colod.devices.qdisk_secondary) when a primary links again.  The primary,
which dropped its lost secondary for good, is restarted too, as an
administrator starts a new pair; its guest (the writer) is quiet across the
gap, since colod does not copy disks.  Afterwards checkpoints go on, both
nodes' disks and memories are equal byte for byte, and a takeover still
lands on the last checkpoint.
"""

from __future__ import annotations

from colod.testing.lab import Poll, listening
from tests.cluster import ClusterTestCase, wait
from tests.rig import async_test

#: Checkpoints each pair must make.
CHECKPOINTS = 10
#: Seconds a restarted daemon gets to start listening or to protect the guest.
START_TIMEOUT = 30.0
CLEARED = "cleared what an earlier colod left in QEMU"


class RestartTests(ClusterTestCase):
    @async_test
    async def test_secondary_killed_and_restarted_protects_again(self) -> None:
        lab = await self.start_cluster()
        await wait(lab.until_checkpoints(CHECKPOINTS, 20.0))
        self.assertEqual(lab.stop_writer(), 0)
        await wait(lab.until_checkpoints(lab.primary.status()["checkpoints"] + 2, 10.0))

        lab.secondary.kill_daemon()
        await wait(lab.until(lab.primary, lambda s: not s["protected"] and s["error"],
                             lab.heartbeat_timeout + 10.0, "the killed secondary dropped"))
        self.assertEqual(set(lab.secondary.block_exports()), {f"{lab.domain}-xvda"})  # its leftovers
        lab.secondary.start_daemon()
        await wait(Poll(lambda: listening(lab.secondary_port) or None, START_TIMEOUT,
                        "the restarted secondary listening", lab.secondary.context))
        self.assertEqual(lab.primary.stop_daemon(), 0)
        lab.primary.start_daemon()

        await wait(lab.until(lab.primary, lambda s: s["protected"] and s["checkpoints"] >= CHECKPOINTS,
                             START_TIMEOUT, "checkpoints of the new pair"))
        secondary = lab.secondary.status()
        self.assertEqual((secondary["role"], secondary["error"]), ("secondary", None))
        self.assertGreaterEqual(secondary["checkpoints"], CHECKPOINTS - 1)
        self.assertIn(CLEARED, lab.secondary.logs())
        self.assertEqual(lab.secondary.block_exports(), [f"{lab.domain}-xvda"])

        ops = lab.ops()
        lab.start_writer()
        await wait(lab.until_ops(ops + 50, 20.0))
        self.assertEqual(lab.stop_writer(), 0)
        await wait(lab.until_checkpoints(lab.primary.status()["checkpoints"] + 2, 10.0))
        self.assertEqual(lab.differences(), [])
        ops = lab.ops()
        for node in lab.nodes:
            self.assertVerified(lab.verify(node), floor=ops)

        lab.lose_primary_host()
        status = await wait(lab.until(lab.secondary, lambda s: s["failed_over"], lab.heartbeat_timeout + 5.0,
                                      "takeover"))
        self.assertEqual((status["role"], status["protected"]), ("primary", False))
        verdict = lab.verify(lab.secondary)
        self.assertVerified(verdict, floor=ops)
        self.assertEqual(verdict.ops, ops)
