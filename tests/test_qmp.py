"""QMPConnection against real QEMU processes."""

from __future__ import annotations

import gc
import logging
import signal
import time
import tracemalloc
from typing import Any

from twisted.internet import defer

from colod.qmp import (
    REQUIRED_COMMANDS,
    QMPCapabilityError,
    QMPCommandError,
    QMPConnectFailed,
    QMPConnection,
    QMPDisconnected,
    QMPTimeout,
)
from colod.reactor import asyncio_loop
from colod.testing.qemu_process import QemuProcess
from tests.rig import QemuTestCase, async_test, sleep


class _Noise(logging.Handler):
    """Collects what asyncio and qemu.qmp would have put in colod's log."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.records.append(record.getMessage())


class QMPConnectionTests(QemuTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.qemu = self.start_qemu("vm")
        # "Task exception was never retrieved" goes to the loop's exception
        # handler and to the 'asyncio' logger: catch both.
        self.loop = asyncio_loop()
        self.unhandled: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda loop, context: self.unhandled.append(context))
        self.addCleanup(self.loop.set_exception_handler, None)
        self.noise = _Noise()
        for name in ("asyncio", "qemu.qmp"):
            logging.getLogger(name).addHandler(self.noise)
            self.addCleanup(logging.getLogger(name).removeHandler, self.noise)

    def assertNoNoise(self) -> None:
        gc.collect()  # an unretrieved task exception is reported when the task is collected
        self.assertEqual(self.unhandled, [])
        self.assertEqual(self.noise.records, [])

    async def connected(self, qemu: QemuProcess | None = None, **kwargs: Any) -> QMPConnection:
        qemu = qemu or self.qemu
        conn = QMPConnection(qemu.qmp_socket, name=qemu.name, **kwargs)
        self.addCleanup(conn.disconnect)
        await conn.connect()
        return conn

    @async_test
    async def test_command_succeeds(self) -> None:
        """A command's return value comes back through the Deferred; the probe saw the version."""
        conn = await self.connected()
        status = await conn.execute("query-status")
        self.assertEqual((status["status"], status["running"]), ("prelaunch", False))
        assert conn.info is not None
        self.assertTrue(conn.info.version.startswith("7.2."), conn.info.version)
        self.assertTrue(REQUIRED_COMMANDS <= conn.info.commands)

    @async_test
    async def test_error_reply(self) -> None:
        """QEMU's error reply becomes QMPCommandError with QEMU's class and description."""
        conn = await self.connected()
        with self.assertRaises(QMPCommandError) as caught:
            await conn.execute("blockdev-del", {"node-name": "nope"})
        e = caught.exception
        self.assertEqual(e.command, "blockdev-del")
        self.assertEqual(e.error_class, "GenericError")
        self.assertEqual(e.description, "Failed to find node with node-name='nope'")
        self.assertEqual(
            str(e), "QMP blockdev-del failed: GenericError: Failed to find node with node-name='nope'"
        )
        # The connection is still usable afterwards.
        await conn.execute("query-status")

    @async_test
    async def test_timeout_names_command(self) -> None:
        """A stopped QEMU makes the call miss its deadline; the error names the command."""
        conn = await self.connected()
        self.qemu.send_signal(signal.SIGSTOP)
        self.addCleanup(self.qemu.send_signal, signal.SIGCONT)
        started = time.monotonic()
        with self.assertRaises(QMPTimeout) as caught:
            await conn.execute("query-status", timeout=0.5)
        elapsed = time.monotonic() - started
        self.assertEqual(str(caught.exception), "QMP query-status got no reply within 0.5 s")
        self.assertEqual(caught.exception.command, "query-status")
        self.assertTrue(0.5 <= elapsed < 2.0, elapsed)
        # Once QEMU runs again, the same connection answers.
        self.qemu.send_signal(signal.SIGCONT)
        status = await conn.execute("query-status", timeout=5)
        self.assertEqual(status["status"], "prelaunch")
        self.assertNoNoise()

    @async_test
    async def test_qemu_killed_mid_command(self) -> None:
        """QEMU dying with a command in flight fails it with QMPDisconnected, and nothing leaks."""
        conn = await self.connected()
        lost = conn.whenLost()
        self.qemu.send_signal(signal.SIGSTOP)
        in_flight = conn.execute("query-status", timeout=10)
        await sleep(0.1)
        self.qemu.kill()
        with self.assertRaises(QMPDisconnected) as caught:
            await in_flight
        self.assertIn("QMP query-status interrupted: lost the connection to QEMU", str(caught.exception))
        reason = await lost
        self.assertIn(f"connection to QEMU at {self.qemu.qmp_socket} lost", str(reason))
        # Later calls fail at once with the reason, instead of hanging.
        with self.assertRaises(QMPDisconnected) as caught:
            await conn.execute("query-status")
        self.assertIn("not connected", str(caught.exception))
        await conn.disconnect()
        self.assertNoNoise()

    @async_test
    async def test_probe_refuses_qemu_without_replication(self) -> None:
        """qemu-storage-daemon is a real QEMU without the Xen COLO commands: refused, by name."""
        qsd = QemuProcess.storage_daemon(self.workdir, "qsd")
        self.addCleanup(qsd.stop)
        qsd.start()
        conn = QMPConnection(qsd.qmp_socket, name="qsd")
        with self.assertRaises(QMPCapabilityError) as caught:
            await conn.connect()
        e = caught.exception
        self.assertEqual(
            e.missing, ("query-xen-replication-status", "xen-colo-do-checkpoint", "xen-set-replication")
        )
        self.assertRegex(
            str(e),
            r"^QEMU 7\.2\.\d+ \(.*\) at \S+/qsd\.qmp lacks the QMP commands colod needs: "
            r"query-xen-replication-status, xen-colo-do-checkpoint, xen-set-replication ",
        )
        # A refused QEMU is not kept connected.
        with self.assertRaises(QMPDisconnected) as gone:
            await conn.execute("query-version")
        self.assertTrue(str(gone.exception).startswith(
            f"QMP query-version not sent: not connected to QEMU at {qsd.qmp_socket} "), str(gone.exception))
        self.assertNoNoise()

    @async_test
    async def test_connect_waits_for_socket(self) -> None:
        """connect() retries until QEMU's socket appears, within the deadline."""
        later = QemuProcess(self.workdir, "later")
        self.addCleanup(later.stop)
        conn = QMPConnection(later.qmp_socket, name="later", connect_timeout=10)
        self.addCleanup(conn.disconnect)
        connecting = conn.connect()
        await sleep(0.5)
        self.assertFalse(connecting.called)
        later.start()
        info = await connecting
        self.assertTrue(info.version.startswith("7.2."))

    @async_test
    async def test_connect_deadline(self) -> None:
        """No QEMU at the socket: connect() gives up at its deadline and names the socket."""
        path = str(self.workdir / "absent.qmp")
        conn = QMPConnection(path, connect_timeout=0.6)
        started = time.monotonic()
        with self.assertRaises(QMPConnectFailed) as caught:
            await conn.connect()
        self.assertTrue(0.6 <= time.monotonic() - started < 2.0)
        self.assertEqual(
            str(caught.exception),
            f"cannot reach QEMU's QMP socket {path} within 0.6 s: "
            "[Errno 2] No such file or directory",
        )

    @async_test
    async def test_event_delivered(self) -> None:
        """A subscriber gets the events it asked for, and only those."""
        conn = await self.connected()
        stops: list[dict[str, Any]] = []
        everything: list[str] = []
        conn.subscribe(stops.append, names=["STOP"])
        unsubscribe = conn.subscribe(lambda e: everything.append(e["event"]))
        await conn.execute("cont")
        await conn.execute("stop")
        await sleep(0.05)
        self.assertEqual([e["event"] for e in stops], ["STOP"])
        self.assertIn("timestamp", stops[0])
        self.assertEqual(everything, ["RESUME", "STOP"])
        unsubscribe()
        await conn.execute("cont")
        await sleep(0.05)
        self.assertEqual(everything, ["RESUME", "STOP"])

    @async_test
    async def test_many_events_keep_no_history(self) -> None:
        """10,000 events reach the subscriber and none is retained afterwards."""
        conn = await self.connected(command_timeout=60)
        counts = {"RESUME": 0, "STOP": 0}

        def count(event: dict[str, Any]) -> None:
            counts[event["event"]] += 1

        conn.subscribe(count, names=counts)
        # Warm up before measuring, so first-use allocations do not count.
        await defer.gatherResults([conn.execute("cont"), conn.execute("stop")])
        counts.update(RESUME=0, STOP=0)
        gc.collect()
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(10):
            await defer.gatherResults(
                [conn.execute(c) for _ in range(500) for c in ("cont", "stop")]
            )
        await sleep(0.1)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
        self.assertEqual(counts, {"RESUME": 5000, "STOP": 5000})
        self.assertEqual(conn._client.events.history, ())
        # Keeping the events would take about 3 MB; allow a little slack.
        self.assertLess(grown, 200_000)
