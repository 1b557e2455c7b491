"""The QMP fault proxy (tests/qmp_proxy.py) between QMPConnection and a real QEMU."""

from __future__ import annotations

import os

from twisted.trial import unittest

from colod.qmp import QMPCommandError, QMPConnection, QMPTimeout
from tests.qmp_proxy import MessageCutter, QMPProxy
from tests.rig import QemuTestCase, async_test, sleep


class MessageCutterTests(unittest.TestCase):
    def test_cuts_objects_and_the_bytes_between(self) -> None:
        """Objects written back to back, split anywhere, braces in strings: cut where they end."""
        stream = b'{"execute":"a","id":1}{"execute":"b","arguments":{"x":"}{\\"]"}} {"exec-oob":"c"}'
        for split in range(len(stream) + 1):
            cutter = MessageCutter()
            pieces = cutter.feed(stream[:split]) + cutter.feed(stream[split:])
            self.assertEqual(b"".join(pieces), stream)
            self.assertEqual([p for p in pieces if p.startswith(b"{")], [
                b'{"execute":"a","id":1}', b'{"execute":"b","arguments":{"x":"}{\\"]"}}',
                b'{"exec-oob":"c"}'])


class QMPProxyTests(QemuTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.qemu = self.start_qemu("vm")
        self.proxy = QMPProxy(self.qemu.qmp_socket)
        self.proxy.listen(str(self.workdir / "proxy.qmp"))
        self.addCleanup(self.proxy.close)

    async def connected(self, **kwargs: float) -> QMPConnection:
        assert self.proxy.path is not None
        conn = QMPConnection(self.proxy.path, name="vm", **kwargs)
        self.addCleanup(conn.disconnect)
        await conn.connect()
        return conn

    @async_test
    async def test_everything_else_is_the_real_qemu(self) -> None:
        """The probe, replies, QEMU's own errors and events pass unchanged while a rule waits."""
        self.proxy.fail("xen-colo-do-checkpoint", "not this one")
        conn = await self.connected()
        assert conn.info is not None
        self.assertTrue(conn.info.version.startswith("7.2."), conn.info.version)
        events: list[str] = []
        conn.subscribe(lambda e: events.append(e["event"]))
        self.assertEqual((await conn.execute("query-status"))["status"], "prelaunch")
        await conn.execute("cont")
        self.assertEqual((await conn.execute("query-status"))["status"], "running")
        with self.assertRaises(QMPCommandError) as caught:
            await conn.execute("blockdev-del", {"node-name": "nope"})
        self.assertEqual(str(caught.exception),
                         "QMP blockdev-del failed: GenericError: Failed to find node with node-name='nope'")
        await sleep(0.05)
        self.assertEqual(events, ["RESUME"])
        self.assertEqual(self.proxy.rules[0].hits, 0)

    @async_test
    async def test_failed_command_gets_the_rules_error_and_never_reaches_qemu(self) -> None:
        conn = await self.connected()
        rule = self.proxy.fail("cont", "the test refuses cont", class_="DeviceNotActive", times=1)
        with self.assertRaises(QMPCommandError) as caught:
            await conn.execute("cont")
        e = caught.exception
        self.assertEqual((e.command, e.error_class, e.description),
                         ("cont", "DeviceNotActive", "the test refuses cont"))
        self.assertEqual(str(e), "QMP cont failed: DeviceNotActive: the test refuses cont")
        self.assertEqual((await conn.execute("query-status"))["status"], "prelaunch")
        self.assertEqual(rule.hits, 1)
        # Its one time used, the rule lets the next cont through.
        await conn.execute("cont")
        self.assertEqual((await conn.execute("query-status"))["status"], "running")
        self.assertEqual(rule.hits, 1)

    @async_test
    async def test_out_of_band_command_fails_too(self) -> None:
        """``yank`` goes out of band (exec-oob); it is matched and answered all the same."""
        conn = await self.connected()
        await conn.execute("yank", {"instances": []}, oob=True)
        self.proxy.fail("yank", "yank refused")
        with self.assertRaises(QMPCommandError) as caught:
            await conn.execute("yank", {"instances": []}, oob=True)
        self.assertEqual(str(caught.exception), "QMP yank failed: GenericError: yank refused")

    @async_test
    async def test_stalled_command_misses_its_deadline(self) -> None:
        conn = await self.connected()
        rule = self.proxy.stall("stop")
        with self.assertRaises(QMPTimeout) as caught:
            await conn.execute("stop", timeout=0.5)
        self.assertEqual(str(caught.exception), "QMP stop got no reply within 0.5 s")
        self.assertEqual(rule.hits, 1)
        self.assertEqual((await conn.execute("query-status"))["status"], "prelaunch")

    @async_test
    async def test_file_descriptors_reach_qemu(self) -> None:
        """getfd works through the proxy: the fd passed with SCM_RIGHTS is passed on."""
        conn = await self.connected()
        with self.assertRaises(QMPCommandError) as caught:
            await conn.execute("getfd", {"fdname": "none"})
        self.assertEqual(caught.exception.description, "No file descriptor supplied via SCM_RIGHTS")
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        self.addCleanup(os.close, write)
        await conn.send_fd(read, "passed")
        await conn.execute("closefd", {"fdname": "passed"})
