"""The secondary takes over when the primary dies, wherever in the checkpoint cycle it dies.

The link proxy (tests.cluster) picks the moment: the primary's QEMU or its
daemon is killed as a given record passes, before or after it is forwarded,
or with only part of it forwarded.  From that moment the proxy forwards
nothing more on the main channel, as if the primary's host were gone, so the
records that reached the secondary are exactly those the proxy wrote, and
each test first checks that the point cut the checkpoint where it says.

Then the secondary must have taken over within heartbeat_timeout + 1 s, its
guest running from the device state it was sent, no NBD export left for a
primary to write through, and its disk and memory image exactly the state of
the last checkpoint whose CHECKPOINT_END reached it whole: the writer's
operation count the proxy read from that checkpoint's page 0.  A checkpoint
cut anywhere before its end is never applied, not even in part; one whose end
arrived is applied whole.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import attrs

from colod.protocol import Checkpoint, CheckpointEnd, CheckpointId, EmulatorContext, PageData
from colod.protocol.wire import RECORD_HEADER
from colod.testing.lab import Node, Poll
from tests.cluster import ClusterTestCase, Direction, Match, checkpoint_state, record_of, wait
from tests.rig import async_test

#: Seconds the secondary may take to fail over beyond the heartbeat timeout.
TAKEOVER_SLACK = 1.0
#: Seconds the kill point may take to come round.
POINT_TIMEOUT = 10.0

NEW = "CHECKPOINT_STATE(NEW)"
#: A whole checkpoint after NEW, as the ledger names its records (PAGE_DATA runs counted once).
WHOLE = (NEW, "PAGE_DATA", "CHECKPOINT", "EMULATOR_CONTEXT", "CHECKPOINT_END")


@attrs.frozen
class Point:
    """A moment of the checkpoint cycle: as a record that ``match``es passes the proxy on ``direction``."""

    direction: Direction
    match: Match
    #: The records of the checkpoint under way that reach the secondary (PAGE_DATA runs named once).
    reaches: tuple[str, ...]
    #: Kill before the record is forwarded, and hold its direction, so that it never arrives.
    before: bool = False
    #: With ``before``: forward this many bytes of the record first, so that it arrives cut short.
    part: int = 0
    #: Hold the back channel from the moment a main-channel record matching this is about to pass.
    hold_back_at: Match | None = None


POINTS = {
    "between_checkpoints": Point(Direction.BACK, checkpoint_state(CheckpointId.SVM_RESUMED), WHOLE),
    "after_new": Point(Direction.MAIN, checkpoint_state(CheckpointId.NEW), (NEW,)),
    # The secondary has the record header and some pages of the checkpoint's PAGE_DATA.
    "in_page_data": Point(Direction.MAIN, record_of(PageData), (NEW, "PAGE_DATA (part)"), before=True,
                          part=RECORD_HEADER.size + 1000),
    "before_checkpoint": Point(Direction.MAIN, record_of(Checkpoint), WHOLE[:2], before=True),
    "before_emulator_context": Point(Direction.MAIN, record_of(EmulatorContext), WHOLE[:3], before=True),
    "before_checkpoint_end": Point(Direction.MAIN, record_of(CheckpointEnd), WHOLE[:4], before=True),
    # The secondary has the whole checkpoint and answered, but the primary never hears SVM_READY.
    "svm_ready_held": Point(Direction.BACK, checkpoint_state(CheckpointId.SVM_READY), WHOLE, before=True,
                            hold_back_at=record_of(CheckpointEnd)),
    "before_svm_resumed": Point(Direction.BACK, checkpoint_state(CheckpointId.SVM_RESUMED), WHOLE,
                                before=True),
}


def silence(node: Node) -> None:
    """SIGSTOP the daemon: the link stays up, and nothing comes over it."""
    node.signal_daemon(signal.SIGSTOP)


def collapsed(names: list[str]) -> tuple[str, ...]:
    """``names`` with each run of whole PAGE_DATA records named once."""
    out: list[str] = []
    for name in names:
        if not (name == "PAGE_DATA" and out and out[-1] == name):
            out.append(name)
    return tuple(out)


class FailoverTests(ClusterTestCase):
    async def fail_at(self, point: Point, kill: Callable[[Node], None]) -> None:
        """Kill the primary at ``point``: the secondary takes over in time, from its last whole checkpoint."""
        lab = await self.start_cluster(proxy=True)
        await wait(lab.until_checkpoints(3, 10.0))
        killed_at: list[float] = []
        ledger = self.proxy.ledger

        def kill_now() -> None:
            self.proxy.hold(Direction.MAIN)  # the primary's host is gone: nothing more reaches the secondary
            if point.before:
                self.proxy.hold(point.direction)
            kill(lab.primary)
            killed_at.append(time.monotonic())

        def arm() -> None:
            self.proxy.when(point.direction, point.match, kill_now, before=point.before, part=point.part)

        def hold_back_then_arm() -> None:
            self.proxy.hold(Direction.BACK)
            arm()

        if point.hold_back_at is None:
            arm()
        else:
            self.proxy.when(Direction.MAIN, point.hold_back_at, hold_back_then_arm, before=True)
        start = await wait(Poll(lambda: killed_at[0] if killed_at else None, POINT_TIMEOUT,
                                "the moment to kill the primary"))
        at_kill = (ledger.committed, list(ledger.current))
        self.assertEqual(collapsed(ledger.current), point.reaches,
                         "the kill point did not cut the checkpoint where it says")
        status = await wait(lab.until(lab.secondary, lambda s: s["failed_over"],
                                      lab.heartbeat_timeout + TAKEOVER_SLACK, "takeover", started=start))
        self.assertEqual((ledger.committed, ledger.current), at_kill,
                         "records reached the secondary after the kill")
        self.assertEqual((status["role"], status["protected"]), ("primary", False))
        self.assertEqual(lab.secondary.qemu_status(), "running")
        self.assertTrue(lab.secondary.device_state_loaded())
        self.assertEqual(lab.secondary.block_exports(), [])
        verdict = lab.verify(lab.secondary)
        self.assertTrue(verdict.ok, verdict.summary)
        self.assertEqual(verdict.ops, ledger.committed_ops,
                         f"the secondary holds {verdict.ops} writer operations; the last checkpoint that "
                         f"reached it whole ({ledger.committed} in all) held {ledger.committed_ops}")

    @async_test
    async def test_qemu_killed_between_checkpoints(self) -> None:
        await self.fail_at(POINTS["between_checkpoints"], Node.kill_qemu)

    @async_test
    async def test_daemon_killed_between_checkpoints(self) -> None:
        await self.fail_at(POINTS["between_checkpoints"], Node.kill_daemon)

    @async_test
    async def test_qemu_killed_after_new(self) -> None:
        await self.fail_at(POINTS["after_new"], Node.kill_qemu)

    @async_test
    async def test_daemon_killed_after_new(self) -> None:
        await self.fail_at(POINTS["after_new"], Node.kill_daemon)

    @async_test
    async def test_qemu_killed_in_page_data(self) -> None:
        await self.fail_at(POINTS["in_page_data"], Node.kill_qemu)

    @async_test
    async def test_daemon_killed_in_page_data(self) -> None:
        await self.fail_at(POINTS["in_page_data"], Node.kill_daemon)

    @async_test
    async def test_qemu_killed_before_checkpoint(self) -> None:
        await self.fail_at(POINTS["before_checkpoint"], Node.kill_qemu)

    @async_test
    async def test_daemon_killed_before_checkpoint(self) -> None:
        await self.fail_at(POINTS["before_checkpoint"], Node.kill_daemon)

    @async_test
    async def test_qemu_killed_before_emulator_context(self) -> None:
        await self.fail_at(POINTS["before_emulator_context"], Node.kill_qemu)

    @async_test
    async def test_daemon_killed_before_emulator_context(self) -> None:
        await self.fail_at(POINTS["before_emulator_context"], Node.kill_daemon)

    @async_test
    async def test_qemu_killed_before_checkpoint_end(self) -> None:
        await self.fail_at(POINTS["before_checkpoint_end"], Node.kill_qemu)

    @async_test
    async def test_daemon_killed_before_checkpoint_end(self) -> None:
        await self.fail_at(POINTS["before_checkpoint_end"], Node.kill_daemon)

    @async_test
    async def test_qemu_killed_with_svm_ready_held(self) -> None:
        await self.fail_at(POINTS["svm_ready_held"], Node.kill_qemu)

    @async_test
    async def test_daemon_killed_with_svm_ready_held(self) -> None:
        await self.fail_at(POINTS["svm_ready_held"], Node.kill_daemon)

    @async_test
    async def test_qemu_killed_before_svm_resumed(self) -> None:
        await self.fail_at(POINTS["before_svm_resumed"], Node.kill_qemu)

    @async_test
    async def test_daemon_killed_before_svm_resumed(self) -> None:
        await self.fail_at(POINTS["before_svm_resumed"], Node.kill_daemon)

    @async_test
    async def test_daemon_silent(self) -> None:
        """A stopped primary daemon keeps the link open but sends nothing: dead after the timeout."""
        await self.fail_at(POINTS["between_checkpoints"], silence)
