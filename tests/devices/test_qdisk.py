"""Disk replication between two real QEMUs, driven through DeviceGroup."""

from __future__ import annotations

import signal

import attrs
from twisted.internet import defer

from colod.devices import DeviceFailures, DeviceHealth, ReplicationError
from tests.devices.pair import TIMEOUT, Image, MiB, ReplicationTestCase, port_open, qcow2_data, within
from tests.rig import async_test, sleep

K64 = 64 * 1024


class CheckpointTests(ReplicationTestCase):
    @async_test
    async def test_checkpoint_replicates_and_empties_overlays(self) -> None:
        """A primary write reaches the secondary; a checkpoint empties both overlays."""
        primary, secondary = await self.protected_pair()
        await primary.write("colo-disk0", 0xAB, 0, K64)
        await secondary.write("colo-disk0", 0x5E, 2 * MiB, K64)  # the secondary guest's own write
        # Before the checkpoint: the primary's old data sits in hidden, the secondary's write in active.
        self.assertEqual(await secondary.allocated("colod0-hidden"), [(0, K64)])
        self.assertEqual(await secondary.allocated("colod0-active"), [(2 * MiB, K64)])

        await self.checkpoint(primary, secondary)

        self.assertEqual(await secondary.allocated("colod0-hidden"), [])
        self.assertEqual(await secondary.allocated("colod0-active"), [])
        self.assertEqual([h.healthy for h in await primary.group.health()], [True])
        self.assertEqual(await secondary.group.health(), [DeviceHealth("xvda", True)])
        await primary.group.teardown()
        await secondary.group.teardown()
        primary.qemu.stop()
        secondary.qemu.stop()
        # The secondary's own write was dropped by the checkpoint: both disks hold the primary's data.
        expected = Image(0).write(0xAB, 0, K64)
        self.assertImage(self.image("primary", 0), expected)
        self.assertImage(self.image("secondary", 0), expected)
        self.assertEqual(qcow2_data(self.overlay("active", 0)), [])
        self.assertEqual(qcow2_data(self.overlay("hidden", 0)), [])

    @async_test
    async def test_three_disks(self) -> None:
        """Three disks of one domain replicate independently, each to its own export."""
        primary, secondary = await self.protected_pair(disks=3)
        await primary.write("colo-disk0", 0xA0, 0, K64)
        await primary.write("colo-disk2", 0xA2, 3 * MiB, 2 * K64)
        await self.checkpoint(primary, secondary)
        await primary.write("colo-disk2", 0xB2, 5 * MiB, K64)  # after the checkpoint
        exports = await secondary.qmp.execute("query-block-exports")
        self.assertEqual(sorted(e["id"] for e in exports), ["guest-xvda", "guest-xvdb", "guest-xvdc"])
        await primary.group.teardown()
        await secondary.group.teardown()
        primary.qemu.stop()
        secondary.qemu.stop()
        expected = [Image(0).write(0xA0, 0, K64), Image(1),
                    Image(2).write(0xA2, 3 * MiB, 2 * K64).write(0xB2, 5 * MiB, K64)]
        for i, image in enumerate(expected):
            self.assertImage(self.image("primary", i), image)
            self.assertImage(self.image("secondary", i), image)

    @async_test
    async def test_teardown_leaves_nothing(self) -> None:
        """After teardown no export, node or NBD server of colod is left, and teardown can repeat."""
        self.make_images(2)
        secondary = await self.start_side("secondary", self.write_config("secondary", range(2)))
        primary = await self.start_side("primary", self.write_config("primary", range(2)))
        before = (await primary.node_names(), await secondary.node_names())
        await secondary.group.setup()
        await primary.group.setup()
        self.assertTrue(port_open(self.port))
        self.assertIn(("colod1-rep", "replication"), await primary.node_names())
        await primary.write("colo-disk1", 0xC1, MiB, K64)
        await self.checkpoint(primary, secondary)

        for _ in range(2):
            await primary.group.teardown()
            await secondary.group.teardown()
            self.assertEqual(await secondary.qmp.execute("query-block-exports"), [])
            self.assertEqual((await primary.node_names(), await secondary.node_names()), before)
            self.assertEqual(await primary.graph_children("colo-disk1"), {"children.0": "colod1-disk"})
            self.assertFalse(port_open(self.port))
        # The guest's disk still works on the primary.
        await primary.write("colo-disk1", 0xC2, 2 * MiB, K64)


    @async_test
    async def test_nbd_server_add_without_block_export_add(self) -> None:
        """A QEMU without block-export-add gets its exports from nbd-server-add."""
        self.make_images(1)
        secondary = await self.start_side("secondary", self.write_config("secondary", [0]))
        primary = await self.start_side("primary", self.write_config("primary", [0]))
        assert secondary.qmp.info is not None
        secondary.qmp.info = attrs.evolve(
            secondary.qmp.info, commands=secondary.qmp.info.commands - {"block-export-add"})
        await secondary.group.setup()
        await primary.group.setup()
        await primary.write("colo-disk0", 0xAB, 0, K64)
        await self.checkpoint(primary, secondary)
        await primary.group.teardown()
        await secondary.group.teardown()
        self.assertEqual(await secondary.qmp.execute("query-block-exports"), [])
        self.assertFalse(port_open(self.port))
        primary.qemu.stop()
        secondary.qemu.stop()
        self.assertImage(self.image("secondary", 0), Image(0).write(0xAB, 0, K64))


class FailoverTests(ReplicationTestCase):
    @async_test
    async def test_secondary_takes_over(self) -> None:
        """After failover each disk holds the checkpointed data plus the secondary's own writes."""
        primary, secondary = await self.protected_pair(disks=2)
        await primary.write("colo-disk0", 0xAB, 0, K64)
        await primary.write("colo-disk1", 0xA1, 0, K64)
        await self.checkpoint(primary, secondary)
        await primary.write("colo-disk0", 0xCD, 1 * MiB, K64)  # never checkpointed: lost
        await secondary.write("colo-disk0", 0x5E, 2 * MiB, K64)  # the secondary guest's: kept
        await secondary.write("colo-disk1", 0x6E, 4 * MiB, K64)
        primary.qemu.kill()

        await secondary.group.failover()

        self.assertEqual(await secondary.graph_children("colod0-rep"), {"file": "guest-xvda"})
        self.assertEqual(await secondary.graph_children("colod1-rep"), {"file": "guest-xvdb"})
        self.assertFalse(port_open(self.port))
        await secondary.write("colo-disk0", 0x77, 3 * MiB, K64)  # the new primary carries on
        await secondary.group.teardown()
        secondary.qemu.stop()
        self.assertImage(self.image("secondary", 0), Image(0).write(0xAB, 0, K64)
                         .write(0x5E, 2 * MiB, K64).write(0x77, 3 * MiB, K64))
        self.assertImage(self.image("secondary", 1), Image(1).write(0xA1, 0, K64).write(0x6E, 4 * MiB, K64))

    @async_test
    async def test_secondary_dies(self) -> None:
        """A dead secondary: QEMU's error is reported, the child is dropped, writes go on."""
        primary, secondary = await self.protected_pair()
        await primary.write("colo-disk0", 0xAB, 0, K64)
        await self.checkpoint(primary, secondary)
        secondary.qemu.kill()
        await primary.write("colo-disk0", 0xEE, 5 * MiB, K64)

        failure = await self.failUnlessFailure(primary.group.postsuspend(), DeviceFailures)
        error = failure.failures["xvda"]
        self.assertIsInstance(error, ReplicationError)
        self.assertEqual(error.description, "I/O error occurred")
        self.assertEqual(await primary.group.health(), [DeviceHealth("xvda", False, "I/O error occurred")])

        await primary.group.drop_secondary()

        self.assertEqual(await primary.graph_children("colo-disk0"), {"children.0": "colod0-disk"})
        self.assertNotIn("colod0-nbd", {n for n, _ in await primary.node_names()})
        await primary.write("colo-disk0", 0xEF, 6 * MiB, K64)
        await primary.group.postsuspend()  # nothing left to fail
        primary.qemu.stop()
        self.assertImage(self.image("primary", 0), Image(0).write(0xAB, 0, K64)
                         .write(0xEE, 5 * MiB, K64).write(0xEF, 6 * MiB, K64))

    @async_test
    async def test_hung_secondary_is_yanked(self) -> None:
        """A stopped secondary stalls the primary's write; drop_secondary releases it out of band."""
        primary, secondary = await self.protected_pair()
        secondary.qemu.send_signal(signal.SIGSTOP)
        stuck = primary.write("colo-disk0", 0xEE, 0, K64)
        stuck_done = defer.Deferred.fromCoroutine(stuck)
        await sleep(0.5)
        self.assertFalse(stuck_done.called, "the write should hang on the stopped secondary")

        await primary.group.drop_secondary()

        await within(TIMEOUT, stuck_done)
        await primary.write("colo-disk0", 0xEF, MiB, K64)
        primary.qemu.stop()
        self.assertImage(self.image("primary", 0), Image(0).write(0xEE, 0, K64).write(0xEF, MiB, K64))
