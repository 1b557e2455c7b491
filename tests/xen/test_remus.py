"""RemusSender: the save helper's callbacks answered as libxl's Remus does, checkpoints sent whole.

The helper is the stand-in of tests/xen/test_save_helper.py (the real one
needs a hypervisor) playing a Remus save: it writes a libxc stream shaped as
Xen's on its stream fd and asks for the callbacks in libxc's order.  The
domain is tests/xen/test_domain.py's stand-in.  What RemusSender sends must
decode as one Remus stream with every checkpoint whole.  The Xen lab runs
the same code against the real helper and xl migrate-receive.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import reactor

from colod.protocol import (
    Checkpoint,
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
from colod.xen.remus import RemusSender
from tests.protocol.streams import decode, remus_main
from tests.rig import async_test
from tests.xen.test_domain import FakeQMP, FakeXen
from tests.xen.test_save_helper import BOUNDED, DriverTestCase

LIBXL_ONLY = (StreamHeader, LibxcContext, EmulatorContext, CheckpointEnd)


def hexed(records: list[Record]) -> str:
    return b"".join(b"".join(write_record(r)) for r in records).hex()


def scenario(rounds: int) -> tuple[list[list[Any]], list[Record]]:
    """A stand-in helper's Remus save of ``rounds`` checkpoints (the first copy the first), told
    to stop at the last checkpoint callback; and the records it writes."""
    records = [r for r in remus_main(rounds - 1) if not isinstance(r, (*LIBXL_ONLY, LibxcEnd))]
    steps: list[list[Any]] = [["send", "switch_qemu_logdirty", 7, 1], ["expect", 0]]
    ends = [i for i, record in enumerate(records) if isinstance(record, Checkpoint)]
    for n, (start, end) in enumerate(zip([-1, *ends], ends, strict=False), start=1):
        written = hexed(records[start + 1 : end + 1])
        steps += [["send", "suspend"], ["expect", 1], ["write_hex", "io_fd", written], ["send", "postcopy"],
                  ["expect", 1], ["send", "checkpoint"], ["expect", 1 if n < rounds else 0]]
    return [*steps, ["send", "complete", 0, 0], ["expect", 0]], records


class RemusSenderTests(DriverTestCase):
    @async_test
    async def test_every_checkpoint_goes_out_whole(self) -> None:
        steps, helper_records = scenario(4)
        state = self.workdir / "dm-state"
        state.write_bytes(b"QEVM device state")
        xen = FakeXen()
        domain = XenDomain(7, xen, xen, FakeQMP(xen.calls), reactor, state, 5.0)
        sent: list[bytes] = []
        sender = RemusSender(domain, sent.append, reactor, interval=0.01, checkpoints=4)
        os.environ["STAND_IN_SCENARIO"] = json.dumps(steps)
        self.addCleanup(os.environ.pop, "STAND_IN_SCENARIO", None)
        await sender.run(reactor, binary=str(self.binary), timeouts=BOUNDED)
        self.assertEqual(sender.sent, 4)
        stream = decode(b"".join(sent), checkpointed=Checkpointed.REMUS)
        expected: list[Record] = [StreamHeader(), LibxcContext()]
        for record in helper_records:
            expected.append(record)
            if isinstance(record, Checkpoint):
                expected += [EmulatorContext(blob=b"QEVM device state"), CheckpointEnd()]
        self.assertEqual(stream, expected)
        self.assertEqual([c[0] for c in xen.calls].count("domain_resume"), 4)
