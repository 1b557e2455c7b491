"""A restarted secondary colod finds what its earlier run left in QEMU: it clears its own, refuses the rest.

An earlier run is a DeviceGroup set up on the secondary's real QEMU and then
forgotten without its teardown, as a killed colod leaves it; the restarted
colod is a new QMP connection and a new DeviceGroup on the same QEMU.
"""

from __future__ import annotations

from colod.config import load
from colod.devices import DeviceFailures, DeviceGroup
from colod.devices.qdisk_secondary import LeftoverError
from colod.qmp import QMPConnection
from tests.devices.pair import TIMEOUT, Image, MiB, ReplicationTestCase, Side, port_open, within
from tests.rig import async_test

K64 = 64 * 1024
NBD_RUNNING = {"addr": {"type": "inet", "data": {"host": "127.0.0.1", "port": "1"}}}


class LeftoverTests(ReplicationTestCase):
    async def restarted(self, side: Side) -> Side:
        """``side``'s QEMU as a restarted colod finds it: a new QMP connection and a new device group."""
        await side.qmp.disconnect()  # the earlier colod is gone (QEMU serves one QMP client at a time)
        qmp = QMPConnection(side.qemu.qmp_socket, name=f"{side.role}-again")
        self.addCleanup(lambda: within(TIMEOUT, qmp.disconnect()))
        await qmp.connect()
        config = load(self.workdir / f"{side.role}.toml", side.role)
        from twisted.internet import reactor

        return Side(side.role, config, side.qemu, qmp, DeviceGroup(config.domains[0], side.role, qmp, reactor,
                                                                   timeout=TIMEOUT))

    async def refused(self, side: Side, text: str) -> None:
        """A restarted colod's setup is refused with ``text``, and QEMU is left exactly as it was."""
        before = await self.state(side)
        failure = await self.failUnlessFailure(side.group.setup(), DeviceFailures)
        self.assertIsInstance(failure.failures["xvda"], LeftoverError)
        self.assertIn(text, str(failure))
        self.assertIsNone(failure.teardown)
        self.assertEqual(await self.state(side), before)

    async def state(self, side: Side) -> tuple[object, ...]:
        """What colod could change: the exports, the block graph, whether an NBD server runs."""
        exports = await side.qmp.execute("query-block-exports")
        graph = await side.qmp.execute("x-debug-query-block-graph")
        return exports, graph, port_open(self.port)

    @async_test
    async def test_own_leftovers_are_cleared_and_replication_goes_on(self) -> None:
        """Exports, the NBD server and running replication of a killed colod: the new one protects again."""
        primary, secondary = await self.protected_pair()
        await primary.write("colo-disk0", 0xA1, 0, K64)
        await self.checkpoint(primary, secondary)
        await primary.group.drop_secondary()  # the primary lost its secondary; the secondary's colod is gone
        again = await self.restarted(secondary)
        await again.group.setup()
        self.assertEqual([e["id"] for e in await again.qmp.execute("query-block-exports")], ["guest-xvda"])
        self.assertTrue(port_open(self.port))
        await primary.group.setup()
        await primary.write("colo-disk0", 0xA2, 2 * MiB, K64)
        await self.checkpoint(primary, again)
        await primary.write("colo-disk0", 0xA3, 4 * MiB, K64)
        self.assertEqual(await again.allocated("colod0-hidden"), [(4 * MiB, K64)])  # the backup job runs on
        await self.checkpoint(primary, again)
        await primary.group.teardown()
        await again.group.teardown()
        self.assertEqual(await again.qmp.execute("query-block-exports"), [])
        self.assertFalse(port_open(self.port))
        primary.qemu.stop()
        secondary.qemu.stop()
        expected = Image(0).write(0xA1, 0, K64).write(0xA2, 2 * MiB, K64).write(0xA3, 4 * MiB, K64)
        self.assertImage(self.image("primary", 0), expected)
        self.assertImage(self.image("secondary", 0), expected)

    @async_test
    async def test_a_server_without_exports_is_cleared(self) -> None:
        """A colod killed between starting the NBD server and exporting: the server is stopped, made again."""
        self.make_images(1)
        secondary = await self.start_side("secondary", self.write_config("secondary", [0]))
        await secondary.qmp.execute("nbd-server-start", NBD_RUNNING)
        again = await self.restarted(secondary)
        await again.group.setup()
        self.assertTrue(port_open(self.port))
        await again.group.teardown()

    @async_test
    async def test_an_export_colod_did_not_make_is_refused(self) -> None:
        self.make_images(1)
        secondary = await self.start_side("secondary", self.write_config("secondary", [0]))
        await secondary.qmp.execute("nbd-server-start", NBD_RUNNING)
        await secondary.qmp.execute("block-export-add", {
            "type": "nbd", "id": "stranger", "node-name": "colod0-file", "name": "stranger"})
        await self.refused(await self.restarted(secondary),
                           "QEMU has NBD exports colod did not make for domain guest: stranger")

    @async_test
    async def test_replication_that_stopped_is_refused(self) -> None:
        """Replication torn down by an earlier run cannot start again: refused, naming the disk."""
        primary, secondary = await self.protected_pair()
        await primary.group.teardown()
        await secondary.group.teardown()
        await self.refused(await self.restarted(secondary),
                           "replication of xvda was started in this QEMU before and has stopped")

    @async_test
    async def test_replication_that_failed_over_is_refused(self) -> None:
        primary, secondary = await self.protected_pair()
        await primary.group.drop_secondary()
        await secondary.group.failover()
        await self.refused(await self.restarted(secondary),
                           "replication of xvda was started in this QEMU before")
