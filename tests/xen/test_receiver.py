"""colod's side of ``xl migrate-receive -r -e`` (colod.xen.receiver).

The header is checked byte for byte against xl's layout (xl_utils.h's
save_file_header, xl_saverestore.c's optional data).  The conversation runs
against tests/xen/stand_in_receiver.py, which stands in for the real
receiver (it needs a hypervisor; the Xen lab runs the real one), behind
colod's real guard.
"""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

from twisted.internet import reactor

from colod.protocol import Checkpointed
from colod.xen import guard
from colod.xen.receiver import BANNER, Receiver, ReceiverError, receive_command, xl_header
from tests.protocol.streams import encode, remus_main
from tests.rig import ScratchTestCase, async_test
from tests.xen.stand_in_receiver import guarded_stand_in

CONFIG = b'name = "hvm1"\ntype = "hvm"\nmemory = 128\n'
REPO = Path(__file__).resolve().parent.parent.parent


def test_xl_header_layout() -> None:
    header = xl_header(CONFIG)
    assert header[:32] == b"Xen saved domain, xl format\n \x00 \r"
    assert struct.unpack_from("=IIII", header, 32) == (0x01020304, 2, 0, 4 + len(CONFIG))
    assert struct.unpack_from("=I", header, 48) == (len(CONFIG),)
    assert header[52:] == CONFIG


def test_the_receivers_command_line() -> None:
    assert receive_command("hvm1", "/usr/sbin/xl") == [
        sys.executable, guard.__file__, "--incoming", "hvm1--incoming", "--xl", "/usr/sbin/xl", "--",
        "/usr/sbin/xl", "migrate-receive", "-r", "-e"]
    assert len(BANNER) == 54


class ReceiverTests(ScratchTestCase):
    def start(self, banner_timeout: float = 5.0, **environment: str) -> tuple[Receiver, Path]:
        kept = self.workdir / "received"
        os.environ.update({"PYTHONPATH": str(REPO), **environment})
        self.addCleanup(lambda: [os.environ.pop(name, None) for name in environment])
        receiver = Receiver.start(reactor, guarded_stand_in(kept, self.workdir), CONFIG, banner_timeout)
        self.addCleanup(receiver.stop)  # and wait for it to exit
        return receiver, kept

    @async_test
    async def test_checkpoints_then_failover(self) -> None:
        receiver, kept = self.start()
        await receiver.ready
        stream = encode(remus_main(3), checkpointed=Checkpointed.REMUS)
        receiver.send(stream[:1000])
        receiver.send(stream[1000:])
        await receiver.fail_over(timeout=10.0)
        flags, config_length, stream_length = struct.unpack_from("=III", kept.read_bytes())
        self.assertEqual((flags, config_length, stream_length), (2, len(CONFIG), len(stream)))
        self.assertEqual(kept.read_bytes()[12:], CONFIG + stream)
        self.assertEqual(receiver.exit_code, 0)

    @async_test
    async def test_writable_waits_while_the_receivers_input_is_full(self) -> None:
        """colod sends a whole guest's memory: it waits for the pipe instead of holding it all."""
        receiver, kept = self.start()
        await receiver.ready
        self.assertTrue(receiver.writable().called, "an empty pipe has room")
        chunk = bytes(range(256)) * 4096  # 1 MiB, more than a pipe and Twisted's buffer hold
        for _ in range(4):
            receiver.send(chunk)
            room = receiver.writable()
            self.assertFalse(room.called, "1 MiB cannot all be in the pipe at once")
            await room
        await receiver.fail_over(timeout=10.0)
        self.assertEqual(kept.read_bytes()[12 + len(CONFIG):], chunk * 4)

    @async_test
    async def test_a_failover_that_fails_says_what_the_receiver_said(self) -> None:
        receiver, _ = self.start(STAND_IN_EXIT="1")
        await receiver.ready
        with self.assertRaises(ReceiverError) as caught:
            await receiver.fail_over(timeout=10.0)
        self.assertEqual(str(caught.exception), "the receiver did not fail over (exit status 1); it said: "
                                                "migration target: Domain creation failed (code -3).")

    @async_test
    async def test_a_wrong_banner_is_refused(self) -> None:
        receiver, _ = self.start(STAND_IN_BANNER="something else entirely, not xl's banner at all.....\n")
        with self.assertRaises(ReceiverError) as caught:
            await receiver.ready
        self.assertTrue(str(caught.exception).startswith('the receiver wrote b"something else'),
                        caught.exception)

    @async_test
    async def test_no_banner_in_time(self) -> None:
        receiver, _ = self.start(0.5, STAND_IN_SLEEP="30")
        with self.assertRaises(ReceiverError) as caught:
            await receiver.ready
        self.assertEqual(str(caught.exception), "no banner from the receiver within 0.5 s")

    @async_test
    async def test_a_missing_xl_is_named(self) -> None:
        missing = self.workdir / "no-xl"
        receiver = Receiver.start(reactor, receive_command("hvm1", str(missing)), CONFIG, 10.0)
        with self.assertRaises(ReceiverError) as caught:
            await receiver.ready
        self.assertEqual(str(caught.exception), "the receiver exited before it was ready (exit status 127); "
                                                f"it said: colod receiver guard: cannot start {missing}: "
                                                "No such file or directory")

    def test_a_missing_guard_interpreter_is_named(self) -> None:
        with self.assertRaises(ReceiverError) as caught:
            Receiver.start(reactor, [str(self.workdir / "no-python"), "guard.py"], CONFIG, 1.0)
        self.assertIn("no-python", str(caught.exception))
