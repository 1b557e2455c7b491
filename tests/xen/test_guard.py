"""The guard between colod and Xen's receiver (colod.xen.guard): no failover unless colod says so.

The receiver is tests/xen/stand_in_receiver.py (Xen's needs a hypervisor):
it "fails over" exactly as xl does, when its input ends, and then writes
what it read to a file; killed first, it writes nothing.  Its ``xl`` only
records the ``destroy`` the guard asks of it.  The guard, the Receiver and
the processes killed are the real ones.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from twisted.internet import reactor

from colod.xen import guard
from colod.xen.receiver import Receiver
from tests.rig import ScratchTestCase, async_test, sleep
from tests.xen.stand_in_receiver import INCOMING, guarded_stand_in

REPO = Path(__file__).resolve().parent.parent.parent
CONFIG = b'name = "hvm1"\n'


@pytest.mark.parametrize(("sent", "told", "relayed"), [
    (guard.frame(b"abc") + guard.frame(b"de") + guard.FAIL_OVER, True, b"abcde"),
    (guard.frame(b"abc") + guard.frame(b"de"), False, b"abcde"),  # the input ended without the word
    (guard.frame(b"abc") + guard.frame(b"defg")[:-1], False, b"abc"),  # cut inside a frame
    (guard.frame(b"abc") + guard.FAIL_OVER[:2], False, b"abc"),  # cut inside a header
    (guard.FAIL_OVER + guard.frame(b"late"), True, b""),  # nothing after the word is passed on
])
def test_relay(sent: bytes, told: bool, relayed: bytes) -> None:
    sink = io.BytesIO()
    assert guard.relay(io.BytesIO(sent), sink) is told
    assert sink.getvalue() == relayed


def test_an_empty_frame_cannot_be_sent_as_data() -> None:
    with pytest.raises(ValueError, match="fail over"):
        guard.frame(b"")


def wait_until(check: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.05)


class GuardTests(ScratchTestCase):
    def calls(self) -> list[str]:
        calls = self.workdir / "xl-calls"
        return calls.read_text().splitlines() if calls.exists() else []

    def test_a_killed_colod_never_lets_the_receiver_fail_over(self) -> None:
        """SIGKILL of the process holding the receiver: its pipes close as after any crash, and
        the receiver is killed and its copy destroyed instead of failing over."""
        kept = self.workdir / "received"
        holder = subprocess.Popen([sys.executable, "-m", "tests.xen.receiver_holder", str(kept),
                                   str(self.workdir)], stdout=subprocess.PIPE, text=True,
                                  env={**os.environ, "PYTHONPATH": str(REPO)})
        self.addCleanup(lambda: (holder.poll() is None and holder.kill(), holder.wait()))
        assert holder.stdout is not None
        self.assertEqual(holder.stdout.readline(), "sent\n")
        holder.send_signal(signal.SIGKILL)
        wait_until(lambda: self.calls(), 20.0)
        self.assertEqual(self.calls(), [f"destroy {INCOMING}"])
        self.assertFalse(kept.exists(), "the receiver reached the end of its input: it failed over")

    @async_test
    async def test_stopping_the_receiver_kills_it_instead_of_failing_over(self) -> None:
        kept = self.workdir / "received"
        receiver = Receiver.start(reactor, guarded_stand_in(kept, self.workdir), CONFIG, 10.0)
        await receiver.ready
        receiver.send(b"some stream")
        receiver.stop()
        deadline = time.monotonic() + 20.0
        while receiver.running and time.monotonic() < deadline:
            await sleep(0.05)
        self.assertEqual(receiver.exit_code, guard.EXIT_STOPPED)
        self.assertEqual(self.calls(), [f"destroy {INCOMING}"])
        self.assertFalse(kept.exists(), "the receiver reached the end of its input: it failed over")

    @async_test
    async def test_the_word_to_fail_over_ends_the_receivers_input(self) -> None:
        kept = self.workdir / "received"
        receiver = Receiver.start(reactor, guarded_stand_in(kept, self.workdir), CONFIG, 10.0)
        await receiver.ready
        receiver.send(b"some stream")
        await receiver.fail_over(10.0)
        self.assertEqual(receiver.exit_code, 0)
        self.assertTrue(kept.read_bytes().endswith(CONFIG + b"some stream"))
        self.assertEqual(self.calls(), [], "nothing destroyed after a failover")
