"""The failover policies' decisions: the fence command run as a real process, with its deadline."""

from __future__ import annotations

import os
import time
from pathlib import Path

from twisted.internet import reactor

from colod.failover.policy import FenceCommand, HeartbeatOnly, Manual, OperatorRequest, Verdict
from tests.rig import ScratchTestCase, async_test


def sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script, "fence"]


class FenceCommandTests(ScratchTestCase):
    async def decide(self, argv: list[str], timeout: float = 10.0) -> Verdict:
        fence = FenceCommand(reactor, argv, timeout, domain="guest1", peer="dom0-a")
        return await fence.decide()

    @async_test
    async def test_exit_zero_is_yes(self) -> None:
        verdict = await self.decide(["/bin/true"])
        self.assertTrue(verdict.allowed, verdict.why)
        self.assertRegex(verdict.why,
                         r"^the fence command /bin/true exited 0 in \d+\.\d s: the peer is fenced$")

    @async_test
    async def test_placeholders_are_filled(self) -> None:
        out = self.workdir / "args"
        verdict = await self.decide([*sh(f'echo "$1 $2 {{x}}" > {out}'), "{domain}", "at-{peer}"])
        self.assertTrue(verdict.allowed, verdict.why)
        self.assertEqual(out.read_text(), "guest1 at-dom0-a {x}\n")

    @async_test
    async def test_failure_is_no_with_its_last_words(self) -> None:
        verdict = await self.decide(sh("echo trying >&2; echo 'BMC 192.0.2.9 unreachable' >&2; exit 3"))
        self.assertFalse(verdict.allowed)
        self.assertTrue(verdict.why.endswith("exited 3 (it said: BMC 192.0.2.9 unreachable)"), verdict.why)

    @async_test
    async def test_killed_by_a_signal_is_no(self) -> None:
        verdict = await self.decide(sh("kill -TERM $$"))
        self.assertFalse(verdict.allowed)
        self.assertIn("ended by signal 15", verdict.why)

    @async_test
    async def test_late_is_killed_and_no(self) -> None:
        pid_file = self.workdir / "pid"
        began = time.monotonic()
        verdict = await self.decide(sh(f"echo $$ > {pid_file}; echo powering off; exec sleep 60"),
                                    timeout=0.5)
        self.assertLess(time.monotonic() - began, 5.0)
        self.assertFalse(verdict.allowed)
        self.assertIn("did not finish within 0.5 s and was killed (it said: powering off)", verdict.why)
        self.assertFalse(Path(f"/proc/{pid_file.read_text().strip()}").exists())

    @async_test
    async def test_a_program_that_cannot_run_is_no(self) -> None:
        missing = str(self.workdir / "gone")
        verdict = await self.decide([missing])
        self.assertFalse(verdict.allowed)
        self.assertIn(f"the fence command {missing}", verdict.why)


class FixedPolicyTests(ScratchTestCase):
    def test_heartbeat_only_says_yes(self) -> None:
        self.assertTrue(self.successResultOf(HeartbeatOnly().decide()).allowed)

    def test_manual_says_no(self) -> None:
        verdict = self.successResultOf(Manual().decide())
        self.assertEqual(verdict, Verdict(False, "failover policy manual: the operator decides"))


class OperatorRequestTests(ScratchTestCase):
    def test_written_then_taken_once(self) -> None:
        (self.workdir / "guest1").mkdir()
        request = OperatorRequest(self.workdir, "guest1")
        self.assertIsNone(request.take())
        request.write("colod failover by root, pid 7")
        self.assertEqual(os.listdir(self.workdir / "guest1"), ["failover-request"])
        self.assertEqual(request.take(), "colod failover by root, pid 7")
        self.assertIsNone(request.take())


