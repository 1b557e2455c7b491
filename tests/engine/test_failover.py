"""The secondary takes over when the primary dies, wherever in the checkpoint cycle it dies.

The link proxy (tests.cluster) picks the moment: the primary's QEMU or its
daemon is killed as a given record passes.  Each time the secondary must have
failed over within heartbeat_timeout + 1 s, with its disk and memory image
exactly a checkpoint's state, and not an older one than the primary had
completed.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import attrs

from colod.lab import Node, Poll
from colod.protocol import CheckpointEnd, CheckpointId, PageData
from tests.cluster import ClusterTestCase, Direction, Match, checkpoint_state, record_of, wait
from tests.rig import async_test

#: Seconds the secondary may take to fail over beyond the heartbeat timeout.
TAKEOVER_SLACK = 1.0
#: Seconds the kill point may take to come round.
POINT_TIMEOUT = 10.0


@attrs.frozen
class Point:
    """A moment of the checkpoint cycle: as a record that ``match``es passes the proxy on ``direction``."""

    direction: Direction
    match: Match
    #: Kill before the record is forwarded, and hold its direction, so that it never arrives.
    before: bool = False
    #: Hold the back channel from the moment a main-channel record matching this is about to pass.
    hold_back_at: Match | None = None


BETWEEN_CHECKPOINTS = Point(Direction.BACK, checkpoint_state(CheckpointId.SVM_RESUMED))
AFTER_NEW = Point(Direction.MAIN, checkpoint_state(CheckpointId.NEW))
IN_PAGE_DATA = Point(Direction.MAIN, record_of(PageData))
# The secondary has the whole checkpoint and answered, but the primary never hears SVM_READY.
SVM_READY_HELD = Point(Direction.BACK, checkpoint_state(CheckpointId.SVM_READY), before=True,
                       hold_back_at=record_of(CheckpointEnd))
BEFORE_SVM_RESUMED = Point(Direction.BACK, checkpoint_state(CheckpointId.SVM_RESUMED), before=True)


def silence(node: Node) -> None:
    """SIGSTOP the daemon: the link stays up, and nothing comes over it."""
    node.signal_daemon(signal.SIGSTOP)


class FailoverTests(ClusterTestCase):
    async def fail_at(self, point: Point, kill: Callable[[Node], None]) -> None:
        """``kill`` the primary at ``point``; the secondary takes over in time, from a checkpoint."""
        lab = await self.start_cluster(proxy=True)
        floor = await wait(lab.ops_floor())
        killed_at: list[float] = []

        def kill_now() -> None:
            if point.before:
                self.proxy.hold(point.direction)
            kill(lab.primary)
            killed_at.append(time.monotonic())

        def arm() -> None:
            self.proxy.when(point.direction, point.match, kill_now, before=point.before)

        def hold_back_then_arm() -> None:
            self.proxy.hold(Direction.BACK)
            arm()

        if point.hold_back_at is None:
            arm()
        else:
            self.proxy.when(Direction.MAIN, point.hold_back_at, hold_back_then_arm, before=True)
        start = await wait(Poll(lambda: killed_at[0] if killed_at else None, POINT_TIMEOUT,
                                "the moment to kill the primary"))
        status = await wait(lab.until(lab.secondary, lambda s: s["failed_over"],
                                      lab.heartbeat_timeout + TAKEOVER_SLACK, "takeover", started=start))
        self.assertEqual((status["role"], status["protected"]), ("primary", False))
        self.assertEqual(lab.secondary.qemu_status(), "running")
        self.assertTrue(lab.secondary.device_state_loaded())
        self.assertVerified(lab.verify(lab.secondary), floor)

    @async_test
    async def test_qemu_killed_between_checkpoints(self) -> None:
        await self.fail_at(BETWEEN_CHECKPOINTS, Node.kill_qemu)

    @async_test
    async def test_daemon_killed_between_checkpoints(self) -> None:
        await self.fail_at(BETWEEN_CHECKPOINTS, Node.kill_daemon)

    @async_test
    async def test_qemu_killed_after_new(self) -> None:
        await self.fail_at(AFTER_NEW, Node.kill_qemu)

    @async_test
    async def test_daemon_killed_after_new(self) -> None:
        await self.fail_at(AFTER_NEW, Node.kill_daemon)

    @async_test
    async def test_qemu_killed_in_page_data(self) -> None:
        await self.fail_at(IN_PAGE_DATA, Node.kill_qemu)

    @async_test
    async def test_daemon_killed_in_page_data(self) -> None:
        await self.fail_at(IN_PAGE_DATA, Node.kill_daemon)

    @async_test
    async def test_qemu_killed_with_svm_ready_held(self) -> None:
        await self.fail_at(SVM_READY_HELD, Node.kill_qemu)

    @async_test
    async def test_daemon_killed_with_svm_ready_held(self) -> None:
        await self.fail_at(SVM_READY_HELD, Node.kill_daemon)

    @async_test
    async def test_qemu_killed_before_svm_resumed(self) -> None:
        await self.fail_at(BEFORE_SVM_RESUMED, Node.kill_qemu)

    @async_test
    async def test_daemon_killed_before_svm_resumed(self) -> None:
        await self.fail_at(BEFORE_SVM_RESUMED, Node.kill_daemon)

    @async_test
    async def test_daemon_silent(self) -> None:
        """A stopped primary daemon keeps the link open but sends nothing: dead after the timeout."""
        await self.fail_at(BETWEEN_CHECKPOINTS, silence)
