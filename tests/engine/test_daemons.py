"""Two ``twistd colod`` daemons over TCP with two real QEMUs and the guest writer (colod.testing.lab)."""

from __future__ import annotations

from collections.abc import Callable

from colod.testing.lab import Node
from tests.cluster import ClusterTestCase, wait
from tests.rig import async_test, sleep

#: Checkpoints the long run makes, and how long they may take on a loaded 2-CPU machine.
MANY = 500
MANY_TIMEOUT = 150.0


class DaemonTests(ClusterTestCase):
    @async_test
    async def test_many_checkpoints_leave_both_nodes_equal(self) -> None:
        """After hundreds of checkpoints and a quiet last one, the nodes' disks and memories are equal."""
        lab = await self.start_cluster()
        await wait(lab.until_checkpoints(MANY, MANY_TIMEOUT))
        self.assertEqual(lab.stop_writer(), 0)
        await wait(lab.until_checkpoints(lab.primary.status()["checkpoints"] + 2, 10.0))
        self.assertEqual(lab.differences(), [])
        for node in lab.nodes:
            self.assertVerified(lab.verify(node), floor=1)
        secondary = lab.secondary.status()
        self.assertEqual((secondary["role"], secondary["failed_over"], secondary["error"]),
                         ("secondary", False, None))

    async def lose_secondary(self, kill: Callable[[Node], None]) -> None:
        """``kill`` the secondary: the primary drops it, and its guest runs on unprotected."""
        lab = await self.start_cluster()
        await wait(lab.until_checkpoints(lab.primary.status()["checkpoints"] + 5, 10.0))
        self.assertLessEqual({"colod0-rep", "colod0-nbd"}, lab.primary.block_nodes())
        kill(lab.secondary)
        status = await wait(lab.until(lab.primary, lambda s: not s["protected"] and s["error"],
                                      lab.heartbeat_timeout + 10.0, "the secondary dropped"))
        self.assertEqual((status["role"], status["failed_over"]), ("primary", False))
        self.assertIn(status["error"], lab.primary.logs())
        # Replication is cleaned up: the NBD child and the replication node are gone from the quorum.
        self.assertEqual(lab.primary.block_nodes() & {"colod0-rep", "colod0-nbd"}, set())
        await self.assertGuestRuns()

    @async_test
    async def test_secondary_daemon_killed(self) -> None:
        await self.lose_secondary(Node.kill_daemon)

    @async_test
    async def test_secondary_qemu_killed(self) -> None:
        await self.lose_secondary(Node.kill_qemu)

    @async_test
    async def test_primary_stopped_is_no_failover(self) -> None:
        """colod stopped on the primary (SIGTERM) tells the secondary: no takeover, the guest runs on."""
        lab = await self.start_cluster()
        await wait(lab.until_checkpoints(lab.primary.status()["checkpoints"] + 5, 10.0))
        self.assertEqual(lab.primary.stop_daemon(), 0)
        status = await wait(lab.until(lab.secondary, lambda s: s["error"], lab.heartbeat_timeout + 5.0,
                                      "the secondary told"))
        self.assertIn("the peer ended replication: shutdown", status["error"])
        await sleep(lab.heartbeat_timeout + 0.5)
        secondary = lab.secondary.status()
        self.assertEqual((secondary["role"], secondary["failed_over"], secondary["protected"]),
                         ("secondary", False, False))
        self.assertEqual(lab.primary.block_nodes() & {"colod0-rep", "colod0-nbd"}, set())
        await self.assertGuestRuns()

    @async_test
    async def test_secondary_stopped_leaves_the_primary_running(self) -> None:
        lab = await self.start_cluster()
        await wait(lab.until_checkpoints(lab.primary.status()["checkpoints"] + 5, 10.0))
        self.assertEqual(lab.secondary.stop_daemon(), 0)
        status = await wait(lab.until(lab.primary, lambda s: not s["protected"] and s["error"],
                                      lab.heartbeat_timeout + 5.0, "the secondary dropped"))
        self.assertIn("the peer ended replication: shutdown", status["error"])
        self.assertEqual(lab.primary.block_nodes() & {"colod0-rep", "colod0-nbd"}, set())
        await self.assertGuestRuns()
