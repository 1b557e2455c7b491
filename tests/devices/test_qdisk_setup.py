"""A QMP failure at any step of setup leaves QEMU as it was: what was done is undone."""

from __future__ import annotations

import socket

from colod.devices import DeviceFailures, ReplicationError, ReplicationUnusable
from colod.devices.nbd_tls import client_arguments
from colod.qmp import QMPCommandError
from tests.devices.pair import MiB, ReplicationTestCase, Side, port_open
from tests.rig import async_test


class SetupFailureTests(ReplicationTestCase):
    async def failed_setup(self, side: Side) -> DeviceFailures:
        """Run a setup that must fail; check that QEMU holds nothing of colod afterwards."""
        before = await side.node_names()
        failure = await self.failUnlessFailure(side.group.setup(), DeviceFailures)
        self.assertIsNone(failure.teardown)
        self.assertEqual(await side.node_names(), before)
        if side.role == "secondary":
            self.assertEqual(await side.qmp.execute("query-block-exports"), [])
        for disk in side.domain.disks:
            if (disk.quorum_node, "quorum") in before:
                self.assertEqual(len(await side.graph_children(disk.quorum_node)), 1)
        # Teardown after the failed setup has nothing left to do, and says so by succeeding.
        await side.group.teardown()
        return failure

    def assertQemuSaid(self, error: BaseException, command: str, text: str) -> None:
        self.assertIsInstance(error, QMPCommandError)
        assert isinstance(error, QMPCommandError)
        self.assertEqual(error.command, command)
        self.assertIn(text, error.description)

    @async_test
    async def test_nbd_server_start(self) -> None:
        self.make_images(1)
        secondary = await self.start_side("secondary", self.write_config("secondary", [0]))
        with socket.socket() as taken:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            taken.bind(("127.0.0.1", self.port))
            taken.listen()
            failure = await self.failed_setup(secondary)
        self.assertQemuSaid(failure.failures["xvda"], "nbd-server-start", "Address already in use")
        self.assertFalse(port_open(self.port))

    @async_test
    async def test_export(self) -> None:
        """The second disk cannot be exported: the first one's export and the server go."""
        self.make_images(2)
        secondary = await self.start_side("secondary", self.write_config("secondary", range(2)),
                                          qemu_config=self.write_config("secondary", [0], name="-qemu"))
        failure = await self.failed_setup(secondary)
        self.assertEqual(list(failure.failures), ["xvdb"])
        self.assertQemuSaid(failure.failures["xvdb"], "block-export-add", "guest-xvdb")
        self.assertFalse(port_open(self.port))

    @async_test
    async def test_secondary_replication_start(self) -> None:
        """Overlays of the wrong size: QEMU refuses to start replication, exports and server go."""
        self.make_images(1, overlay_size=16 * MiB)
        secondary = await self.start_side("secondary", self.write_config("secondary", [0]))
        failure = await self.failed_setup(secondary)
        error = failure.failures["xvda"]
        self.assertIsInstance(error, ReplicationError)
        self.assertEqual(error.description,
                         "Active disk, hidden disk, secondary disk's length are not the same")
        self.assertFalse(port_open(self.port))

    @async_test
    async def test_primary_blockdev_add(self) -> None:
        """The secondary exports only the first disk: the second child fails, the first is removed."""
        self.make_images(2)
        secondary = await self.start_side("secondary", self.write_config("secondary", [0]))
        await secondary.group.setup()
        primary = await self.start_side("primary", self.write_config("primary", range(2)))
        failure = await self.failed_setup(primary)
        self.assertEqual(list(failure.failures), ["xvdb"])
        self.assertQemuSaid(failure.failures["xvdb"], "blockdev-add", "Requested export not available")

    @async_test
    async def test_primary_attach(self) -> None:
        """The second disk's quorum does not exist: both children are detached and deleted."""
        self.make_images(2)
        secondary = await self.start_side("secondary", self.write_config("secondary", range(2)))
        await secondary.group.setup()
        primary = await self.start_side(
            "primary", self.write_config("primary", range(2), quorum_nodes={1: "elsewhere"}),
            qemu_config=self.write_config("primary", range(2), name="-qemu"))
        failure = await self.failed_setup(primary)
        self.assertEqual(list(failure.failures), ["xvdb"])
        self.assertQemuSaid(failure.failures["xvdb"], "x-blockdev-change", "elsewhere")

    @async_test
    async def test_primary_replication_start(self) -> None:
        """Another replication node is already running: the start fails and ours are removed."""
        self.make_images(1)
        secondary = await self.start_side("secondary", self.write_config("secondary", [0]))
        await secondary.group.setup()
        primary = await self.start_side("primary", self.write_config("primary", [0]))
        await primary.qmp.execute("blockdev-add", {
            "driver": "replication", "node-name": "foreign", "mode": "primary",
            "file": {"driver": "nbd", "export": "guest-xvda",
                     "server": {"type": "inet", "host": "127.0.0.1", "port": str(self.port)},
                     **client_arguments(primary.domain)}})
        await primary.qmp.execute("xen-set-replication", {"enable": True, "primary": True})
        failure = await self.failed_setup(primary)
        error = failure.failures["xvda"]
        self.assertIsInstance(error, ReplicationError)
        self.assertEqual(error.description, "Block replication is running or done")

    @async_test
    async def test_no_top_bs_is_never_retried(self) -> None:
        """After "No top_bs", colod never sends xen-set-replication again: QEMU would abort."""
        self.make_images(1)
        # Something above the quorum: it is no longer a root node, so QEMU refuses it as top-id.
        above = '{"driver":"raw","node-name":"above","file":"colo-disk0"}'
        secondary = await self.start_side("secondary", self.write_config("secondary", [0]),
                                          extra_args=("-blockdev", above))
        failure = await self.failed_setup(secondary)
        self.assertEqual(failure.failures["xvda"].description, "No top_bs or it is invalid")
        failure = await self.failed_setup(secondary)
        self.assertIsInstance(failure.failures["xvda"], ReplicationUnusable)
        self.assertEqual(str(failure.failures["xvda"]),
                         "QEMU refused to start replication earlier (No top_bs or it is invalid) and would "
                         "abort if asked again: restart the device model")
        self.assertEqual((await secondary.qmp.execute("query-status"))["status"], "prelaunch")
        self.assertTrue(secondary.qemu.running())
