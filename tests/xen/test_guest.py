"""The Xen guest engines, driven as colod's checkpoint engines drive a guest.

The primary's helper is the stand-in of tests/xen/test_save_helper.py (the
real one needs a hypervisor) playing a Remus save: it writes a libxc stream
shaped as Xen's on its stream fd and asks its questions in libxc's order; the
domain is tests/xen/test_domain.py's stand-in.  The secondary's receiver is
tests/xen/stand_in_receiver.py.  The Xen lab runs the same classes against
the real helper, the real receiver and a real guest (tests/xenlab).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from twisted.internet import reactor

from colod.protocol import (
    Checkpoint,
    CheckpointDirtyPfnList,
    Checkpointed,
    CheckpointEnd,
    EmulatorContext,
    LibxcContext,
    LibxcEnd,
    Record,
    StreamHeader,
)
from colod.protocol.writers import write_record
from colod.xen.domain import XenDomain
from colod.xen.guest import XenGuestError, XenPrimaryGuest, XenSecondaryGuest
from colod.xen.save_helper import HelperTimeouts
from tests.protocol.streams import decode, remus_main
from tests.rig import ScratchTestCase, async_test
from tests.xen.stand_in_receiver import guarded_stand_in
from tests.xen.test_domain import FakeQMP, FakeXen
from tests.xen.test_save_helper import DriverTestCase

LIBXL_ONLY = (StreamHeader, LibxcContext, EmulatorContext, CheckpointEnd)
STATE = b"QEVM device state"
REPO = Path(__file__).resolve().parent.parent.parent
CONFIG = b'name = "hvm1"\n'


def hexed(records: list[Record]) -> str:
    return b"".join(b"".join(write_record(r)) for r in records).hex()


def helper_rounds(rounds: int) -> list[list[Record]]:
    """A Remus save's libxc records, per checkpoint (each ends with its CHECKPOINT record)."""
    records = [r for r in remus_main(rounds - 1) if not isinstance(r, (*LIBXL_ONLY, LibxcEnd))]
    out: list[list[Record]] = [[]]
    for record in records:
        out[-1].append(record)
        if isinstance(record, Checkpoint):
            out.append([])
    return out[:-1]


def scenario(rounds: list[list[Record]], live: int = 0) -> list[list[Any]]:
    """The stand-in helper's steps: libxc's order of questions, told to stop at the last checkpoint;
    the first ``live`` records are written before the first suspend (the live copy)."""
    steps: list[list[Any]] = [["send", "switch_qemu_logdirty", 7, 1], ["expect", 0]]
    if live:
        steps.append(["write_hex", "io_fd", hexed(rounds[0][:live])])
        rounds = [rounds[0][live:], *rounds[1:]]
    for n, records in enumerate(rounds, start=1):
        steps += [["send", "suspend"], ["expect", 1], ["write_hex", "io_fd", hexed(records)],
                  ["send", "postcopy"], ["expect", 1], ["send", "checkpoint"],
                  ["expect", 1 if n < len(rounds) else 0]]
    return [*steps, ["send", "complete", 0, 0], ["expect", 0]]


class XenPrimaryGuestTests(DriverTestCase):
    def guest(self, rounds: list[list[Record]], live: int = 0) -> tuple[XenPrimaryGuest, FakeXen]:
        os.environ["STAND_IN_SCENARIO"] = json.dumps(scenario(rounds, live))
        self.addCleanup(os.environ.pop, "STAND_IN_SCENARIO", None)
        state = self.workdir / "dm-state"
        state.write_bytes(STATE)
        xen = FakeXen()
        domain = XenDomain(7, xen, xen, FakeQMP(xen.calls), reactor, state, 5.0)
        return XenPrimaryGuest(domain, reactor, timeout=10.0, binary=str(self.binary),
                               helper_timeouts=HelperTimeouts(silence=10.0, callback=10.0)), xen

    async def checkpoints(self, guest: XenPrimaryGuest, count: int) -> list[list[Record]]:
        """What the engine gets from ``count`` checkpoints: the live copy's records, then each round's."""
        live: list[Record] = []
        await guest.copy_live(live.append)
        got = [live]
        for n in range(count):
            await guest.suspend()
            got.append(list(await (guest.first_records() if n == 0 else
                                   guest.checkpoint_records(CheckpointDirtyPfnList()))))
            self.assertEqual(await guest.emulator_records(), [EmulatorContext(blob=STATE)])
            await guest.resume()
        await guest.close()
        return got

    @async_test
    async def test_checkpoints_paced_by_the_engine(self) -> None:
        rounds = helper_rounds(3)
        guest, xen = self.guest(rounds)
        got = await self.checkpoints(guest, 3)
        self.assertEqual(got, [[], *(r[:-1] for r in rounds)])  # without the helper's CHECKPOINT record
        self.assertEqual([c[0] for c in xen.calls].count("domain_resume"), 3)

    @async_test
    async def test_the_live_copy_goes_out_before_the_first_suspend(self) -> None:
        rounds = helper_rounds(2)
        guest, xen = self.guest(rounds, live=3)
        live: list[Record] = []
        await guest.copy_live(live.append)
        self.assertEqual(live, rounds[0][:3])
        suspending = [c for c in xen.calls if c[0] in ("domain_shutdown", "xs.write") or c[1:2] == ("stop",)]
        self.assertEqual(suspending, [], "the guest was suspended during its live copy")
        await guest.suspend()
        self.assertEqual(list(await guest.first_records()), rounds[0][3:-1])
        await guest.resume()
        await guest.suspend()
        self.assertEqual(list(await guest.checkpoint_records(CheckpointDirtyPfnList())), rounds[1][:-1])
        await guest.resume()
        await guest.close()

    @async_test
    async def test_detached_mid_checkpoint_the_helper_ends_before_the_guest_resumes(self) -> None:
        """The secondary is lost while the guest is suspended: the helper is told to stop at its
        postcopy question, ends its dirty tracking and exits (as libxc does), and only then does
        the guest resume; a new secondary's first checkpoint starts a new helper from the top."""
        rounds = helper_rounds(1)
        stopped = [["send", "switch_qemu_logdirty", 7, 1], ["expect", 0], ["send", "suspend"], ["expect", 1],
                   ["write_hex", "io_fd", hexed(rounds[0])], ["send", "postcopy"], ["expect", 0],
                   ["send", "switch_qemu_logdirty", 7, 0], ["expect", 0], ["send", "complete", -1, 0],
                   ["expect", 0]]
        guest, xen = self.guest(rounds)
        os.environ["STAND_IN_SCENARIO"] = json.dumps(stopped)
        for _ in range(2):
            await guest.copy_live(lambda record: None)
            await guest.suspend()
            self.assertEqual(list(await guest.first_records()), rounds[0][:-1])
            await guest.detach()
            # The helper's last act was to end dirty tracking, and nothing has resumed the guest yet.
            self.assertEqual(xen.calls[-1], ("qmp", "xen-set-global-dirty-log", {"enable": False}))
            await guest.resume()
            self.assertEqual(xen.calls[-3:], [("qmp", "cont", None), ("domain_resume", 7, 1),
                                              ("xs.resume_domain", 7)])

    @async_test
    async def test_a_first_suspend_without_the_live_copy_is_refused(self) -> None:
        guest, _ = self.guest(helper_rounds(1))
        with self.assertRaises(XenGuestError) as caught:
            await guest.suspend()
        self.assertEqual(str(caught.exception), "the save helper is not running: a first checkpoint begins "
                                                "with copy_live")

    def test_the_secondary_copy_does_not_run(self) -> None:
        xen = FakeXen()
        guest = XenPrimaryGuest(XenDomain(7, xen, xen, FakeQMP(xen.calls), reactor, Path("/x"), 1.0),
                                reactor, timeout=1.0)
        with self.assertRaises(XenGuestError) as caught:
            guest.checkpoint_records(CheckpointDirtyPfnList([5]))
        self.assertEqual(str(caught.exception), "the secondary reports 1 dirty pages, but its copy of a Xen "
                                                "guest does not run between checkpoints")


class XenSecondaryGuestTests(ScratchTestCase):
    def guest(self, **environment: str) -> tuple[XenSecondaryGuest, Path]:
        kept = self.workdir / "received"
        os.environ.update({"PYTHONPATH": str(REPO), **environment})
        self.addCleanup(lambda: [os.environ.pop(name, None) for name in environment])
        guest = XenSecondaryGuest(reactor, guarded_stand_in(kept, self.workdir), CONFIG, timeout=10.0)
        self.addCleanup(guest.close)
        return guest, kept

    @async_test
    async def test_complete_checkpoints_reach_the_receiver_then_it_fails_over(self) -> None:
        guest, kept = self.guest()
        stream = remus_main(2)
        ends = [i for i, r in enumerate(stream) if isinstance(r, CheckpointEnd)]
        for start, end in zip([-1, *ends], ends, strict=False):
            await guest.apply_checkpoint(stream[start + 1 : end])  # the engine keeps CHECKPOINT_END itself
        await guest.take_over()
        received = kept.read_bytes()
        (flags, config_length, stream_length) = struct.unpack_from("=III", received)
        self.assertEqual(received[12 : 12 + config_length], CONFIG)
        self.assertEqual(decode(received[12 + config_length:], checkpointed=Checkpointed.REMUS), stream)

    @async_test
    async def test_a_failed_takeover_is_named(self) -> None:
        guest, _ = self.guest(STAND_IN_EXIT="1")
        await guest.apply_checkpoint(remus_main(0)[:-1])
        with self.assertRaises(XenGuestError) as caught:
            await guest.take_over()
        self.assertEqual(str(caught.exception), "taking over failed: the receiver did not fail over (exit "
                                                "status 1); it said: migration target: Domain creation "
                                                "failed (code -3).")

    def test_no_takeover_without_a_checkpoint(self) -> None:
        guest, _ = self.guest()
        with self.assertRaises(XenGuestError) as caught:
            guest.take_over()
        self.assertEqual(str(caught.exception), "no checkpoint was ever applied: nothing to take over")
