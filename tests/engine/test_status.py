"""The status file tells the truth when it cannot be written: a full ``state_dir`` on a real tmpfs.

The unit tests drive StatusFile with a task.Clock standing in for the reactor
(only its timers: the writes go to a real tmpfs that this test mounts, as
root, and fills).  The daemon tests fill the state_dir of one side of a real
pair (two ``twistd colod``, real QEMUs, the guest writer: colod.testing.lab).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from zope.interface import implementer

from colod.engine.status import StatusFile
from colod.protocol import Record
from colod.protocol.handshake import Hello, Role
from colod.protocol.peer import IPeerLinkObserver, PeerLink, PeerLinkFactory
from colod.testing.lab import Lab, Node, Poll
from tests.cluster import ClusterTestCase, node_tls, wait
from tests.rig import ScratchTestCase, async_test

#: The tmpfs: a few pages; a status file takes one.
DISK_SIZE = "256k"
#: Seconds the full side's engine may take to meet the full disk (its next checkpoint, or a top-up race).
FULL_TIMEOUT = 15.0


class SmallDisk:
    """A tmpfs of DISK_SIZE mounted at ``path``, which can be filled up and freed; unmounted at cleanup."""

    def __init__(self, test: ScratchTestCase, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0755", "colod-test", str(path)],
                       check=True, timeout=10)
        test.addCleanup(subprocess.run, ["umount", str(path)], check=True, timeout=10)
        self.filler = path / "filler"

    def fill(self) -> None:
        """Take every free page: write to the filler until the file system says it is full."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while True:
                os.write(fd, bytes(4096))
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink()


@implementer(IPeerLinkObserver)
class Recorder:
    """This test's primary engine: it only learns when its link is ready and when it is lost."""

    def __init__(self) -> None:
        self.ready: Deferred[Hello] = Deferred()
        self.lost: Deferred[BaseException] = Deferred()
        self.port = 0

    def linkReady(self, link: PeerLink, peer: Hello) -> None:
        self.port = link.transport.getHost().port
        self.ready.callback(peer)

    def recordReceived(self, link: PeerLink, record: Record) -> None:
        pass

    def peerSilent(self, link: PeerLink, seconds: float) -> None:
        pass

    def linkLost(self, link: PeerLink, reason: Failure) -> None:
        self.lost.callback(reason.value)


def errors_logged(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in events if e["log_level"] >= LogLevel.error]


class StatusFileTests(ScratchTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.clock = Clock()
        self.disk = SmallDisk(self, self.workdir / "state")
        self.status = StatusFile(self.workdir / "state" / "lab", self.clock)

    def read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.status.path.read_text())
        except FileNotFoundError:
            return None

    def test_a_full_disk_never_leaves_the_old_status(self) -> None:
        """On a full disk the new status takes the old one's place: not atomically, but truthfully."""
        self.status.write({"protected": True})
        self.disk.fill()
        with capturedLogs() as events:
            self.status.write({"protected": False})  # raised OSError before
        self.assertEqual(self.read()["protected"], False)
        self.assertEqual(self.read()["status_write_failures"], 1)
        self.assertEqual(errors_logged(events), [
            f"cannot write {self.status.path}: No space left on device; the old one is removed, as it "
            "would no longer be true; retrying every 1 s"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # The outage goes on: the next failure is counted, not logged again.
        with capturedLogs() as events:
            self.status.write({"protected": False, "state": "unprotected"})
        self.assertEqual((self.read()["state"], self.read()["status_write_failures"]), ("unprotected", 2))
        self.assertEqual(errors_logged(events), [])

    def test_retried_until_space_comes_back(self) -> None:
        """With no room at all, the newest status is retried on the clock and written once there is room."""
        self.disk.fill()
        with capturedLogs() as events:
            self.status.write({"state": "waiting_for_primary"})
            self.status.write({"state": "receiving_first_checkpoint"})
            self.clock.advance(1.0)
        self.assertIsNone(self.read())
        self.assertEqual(self.status.failures, 3)
        self.assertEqual(len(errors_logged(events)), 1)
        self.assertIn("No space left on device; there is no old one; retrying every 1 s",
                      errors_logged(events)[0])
        self.disk.free()
        with capturedLogs() as events:
            self.clock.advance(1.0)
        written = self.read()
        self.assertEqual((written["state"], written["status_write_failures"]),
                         ("receiving_first_checkpoint", 3))
        self.assertEqual([formatEvent(e) for e in events],
                         [f"{self.status.path} written again, 2.0 s after the first of 3 failed writes"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_an_unusable_directory_is_retried(self) -> None:
        """Not only a full disk: a state_dir that is a file is logged and retried, never raised."""
        blocker = self.workdir / "state" / "lab"
        blocker.write_text("not a directory")
        with capturedLogs() as events:
            self.status.write({"protected": False})
        self.assertIn("status.json: File exists; the old one cannot be removed either: Not a directory",
                      errors_logged(events)[0])
        blocker.unlink()
        self.clock.advance(1.0)
        self.assertEqual(self.read()["protected"], False)


class FullDiskTests(ClusterTestCase):
    """A side's ``state_dir`` fills up under a protected pair, then is freed.

    Both sides keep the checkpoint's device state in ``state_dir`` (the
    primary's QEMU saves it there, the secondary keeps the newest), so a full
    one ends replication at that side's next checkpoint, with the reason
    named.  Before, the status write that followed raised inside the engine,
    which then stopped half-way, and ``status.json`` said ``protected: true``
    for good.  Now the engine finishes its work (the peer told, the guest
    running on, a clean stop) and the status never says protected again.
    """

    async def fill_state_dir(self, role: str) -> tuple[Lab, Node, Node, SmallDisk]:
        """A pair protected with ``role``'s state_dir on a small tmpfs, then that tmpfs kept full
        until its status could not be written."""
        disk = SmallDisk(self, self.workdir / role / "state")
        lab = await self.start_cluster()
        full, other = (lab.primary, lab.secondary) if role == "primary" else (lab.secondary, lab.primary)
        await wait(lab.until_checkpoints(lab.primary.status()["checkpoints"] + 5, 10.0))
        failed = f"cannot write {full.status_path}: No space left on device"

        def top_up() -> bool | None:
            # Kept full: a page freed by a file replaced meanwhile must not let the next write through.
            disk.fill()
            return (failed in full.logs()) or None

        await wait(Poll(top_up, FULL_TIMEOUT, "the status write failing", full.context))
        return lab, full, other, disk

    async def assertTruthful(self, full: Node, disk: SmallDisk, cause: str) -> dict[str, Any]:
        """While full, the status is absent or not protected; once freed, it is back within the retry."""
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            status = full.status()
            self.assertFalse(status and status["protected"], status)
            await wait(Poll(lambda: True, 1.0, "a pause"))
        disk.free()
        status = await wait(Poll(full.status, 2.0, "the status written after space came back", full.context))
        self.assertEqual(status["protected"], False)
        self.assertIn(cause, status["error"])
        self.assertGreaterEqual(status["status_write_failures"], 1)
        self.assertNotIn("Traceback", full.logs())
        self.assertNotIn("engine error", full.logs())
        return status

    @async_test
    async def test_primary_state_dir_full(self) -> None:
        lab, primary, secondary, disk = await self.fill_state_dir("primary")
        cause = "QMP xen-save-devices-state failed: GenericError: An IO error has occurred"
        status = await self.assertTruthful(primary, disk, cause)
        self.assertEqual((status["state"], status["role"]), ("unprotected", "primary"))
        told = await wait(lab.until(secondary, lambda s: not s["protected"] and s["error"], 5.0, "told"))
        self.assertIn(f"the peer ended replication: local failure: replication failed here: {cause}",
                      told["error"])
        await self.assertGuestRuns()
        self.assertEqual(primary.stop_daemon(), 0)
        self.assertEqual(primary.status()["state"], "stopped")

    @async_test
    async def test_secondary_state_dir_full(self) -> None:
        lab, secondary, primary, disk = await self.fill_state_dir("secondary")
        status = await self.assertTruthful(secondary, disk, "No space left on device")
        self.assertEqual((status["state"], status["role"], status["failed_over"]),
                         ("ended", "secondary", False))
        dropped = await wait(lab.until(primary, lambda s: not s["protected"] and s["error"], 5.0, "dropped"))
        self.assertIn("the peer ended replication: local failure: replication failed here:", dropped["error"])
        self.assertIn("No space left on device", dropped["error"])
        await self.assertGuestRuns()
        self.assertEqual(secondary.stop_daemon(), 0)


class LinkedStatusTests(ScratchTestCase):
    """A real secondary daemon (with its QEMUs) and this test as its primary, over real TCP.

    The test's primary link runs on a task.Clock, which stands in for the
    reactor's timers only: it sends no heartbeats, so the secondary finds it
    silent after heartbeat_timeout and gives the link up itself.
    """

    timeout = 120

    @async_test
    async def test_status_and_log_follow_the_link(self) -> None:
        lab = Lab(self.workdir, heartbeat_timeout=4.0)
        self.addCleanup(lab.close)
        lab.prepare()
        secondary = lab.secondary
        secondary.start_qemu(lab.qemu_args(secondary))
        secondary.start_device_model(lab.qemu_args(secondary, "--device-model"))
        secondary.start_daemon()
        await wait(lab.until(secondary, lambda s: s["state"] == "waiting_for_primary", 20.0, "waiting"))
        # The status is written as the engine starts; the port listens a moment later.
        await wait(Poll(lambda: "listening for the primary on" in secondary.logs() or None, 20.0, "listening",
                        secondary.context))
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", lab.secondary_port)
        tls = node_tls(lab, lab.primary)  # the link is TLS: this test is the primary, with its certificate

        # Refused, by name and with the address it came from (the primary's certificate, another name said).
        stranger = await endpoint.connect(
            PeerLinkFactory(Hello(Role.PRIMARY, lab.domain, "mallory"), "host-b", Recorder(), Clock(),
                            tls=tls))
        refused = (f"domain lab: no peer link with 127.0.0.1:{stranger.transport.getHost().port}: "
                   "peer is node 'mallory', expected 'host-a'")
        await wait(Poll(lambda: refused in secondary.logs() or None, 5.0, "the refusal logged",
                        secondary.context))

        # Linked: the status says so, not waiting_for_primary, while the first checkpoint is pending.
        primary = Recorder()
        await endpoint.connect(PeerLinkFactory(Hello(Role.PRIMARY, lab.domain, "host-a"), "host-b", primary,
                                               Clock(), tls=tls))
        await primary.ready
        linked = await wait(lab.until(secondary, lambda s: s["state"] != "waiting_for_primary", 3.0,
                                      "linked"))
        self.assertEqual((linked["state"], linked["protected"]), ("receiving_first_checkpoint", False))

        # Silent: the secondary gives the link up, says why, and the status is back to waiting.
        await primary.lost
        waiting = await wait(lab.until(secondary, lambda s: s["state"] == "waiting_for_primary", 3.0,
                                       "waiting again"))
        self.assertEqual(waiting["protected"], False)
        # The close of a link given up comes later than the status (TLS closes in both directions).
        closed = f"domain lab: the link with 127.0.0.1:{primary.port}, given up earlier, is closed"
        await wait(Poll(lambda: closed in secondary.logs() or None, 5.0, "the close logged",
                        secondary.context))
        log = secondary.logs()
        self.assertIn("the primary left before a checkpoint was complete (nothing heard from the peer", log)
        self.assertNotIn("before it was ready", log)
