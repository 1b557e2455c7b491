"""The guard as a real process, fencing a real one: a ``sleep`` stands for the QEMU it SIGSTOPs.

A stopped process is in state T in /proc/PID/stat: that is what each test
looks at, with a deadline.  qemu_pid is checked against a real QEMU's QMP
socket, and against a socket no QEMU serves.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from twisted.internet import reactor

from colod.failover.guard import FENCED
from colod.failover.guarding import GuardError, GuardProcess, qemu_pid
from tests.rig import QemuTestCase, ScratchTestCase, async_test

#: Seconds a test waits for the guard to act, or to exit.
WAIT = 10.0


def state(pid: int) -> str:
    """The process's state letter (R, S, T...) from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


class GuardTests(ScratchTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.victim = subprocess.Popen(["sleep", "600"])
        self.addCleanup(self.victim.wait)
        self.addCleanup(self.victim.kill)
        self.guard = subprocess.Popen(
            [sys.executable, "-m", "colod.failover.guard", "--name", "guest1", "--pid", str(self.victim.pid)],
            stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(self.guard.wait, WAIT)
        self.addCleanup(self.guard.kill)

    def say(self, line: str) -> None:
        assert self.guard.stdin is not None
        self.guard.stdin.write(line.encode() + b"\n")
        self.guard.stdin.flush()

    def until_stopped(self) -> float:
        """When the victim was seen stopped (monotonic); fails if it is not within WAIT."""
        deadline = time.monotonic() + WAIT
        while state(self.victim.pid) != "T":
            self.assertLess(time.monotonic(), deadline, "the guard did not stop the process")
            time.sleep(0.01)
        return time.monotonic()

    def exits(self, status: int) -> str:
        """The guard's exit status is ``status``; what it said on stderr."""
        assert self.guard.stderr is not None
        said = self.guard.stderr.read().decode()
        self.assertEqual(self.guard.wait(WAIT), status, said)
        return said

    def test_fences_at_the_deadline(self) -> None:
        deadline = time.monotonic() + 0.5
        self.say(f"until {deadline}")
        stopped = self.until_stopped()
        self.assertGreaterEqual(stopped, deadline)
        self.assertLess(stopped, deadline + 1.0)
        said = self.exits(FENCED)
        self.assertIn(f"colod guard: domain guest1: FENCED: the lease's safe deadline passed with no renewal "
                      f"from colod (frozen?): sent SIGSTOP to QEMU process {self.victim.pid}", said)

    def test_renewals_keep_it_running(self) -> None:
        until = time.monotonic() + 2.0
        while time.monotonic() < until:
            self.say(f"until {time.monotonic() + 0.3}")
            time.sleep(0.1)
            self.assertNotEqual(state(self.victim.pid), "T")
        self.say("end")
        self.assertIn("colod stopped cleanly; not fencing", self.exits(0))
        self.assertNotEqual(state(self.victim.pid), "T")

    def test_fences_when_colod_is_gone(self) -> None:
        self.say(f"until {time.monotonic() + 600}")
        assert self.guard.stdin is not None
        self.guard.stdin.close()  # all colod's fds close when it dies
        self.until_stopped()
        self.assertIn("FENCED: colod is gone (its end of the pipe closed)", self.exits(FENCED))

    def test_not_fenced_after_end(self) -> None:
        self.say(f"until {time.monotonic() + 0.3}")
        self.say("end")
        self.exits(0)
        time.sleep(0.5)
        self.assertNotEqual(state(self.victim.pid), "T")

    def test_a_line_it_does_not_know_fences(self) -> None:
        self.say("until soon")
        self.until_stopped()
        self.assertIn("FENCED: colod said b'until soon', which is no guard line", self.exits(FENCED))


class QemuPidTests(QemuTestCase):
    def test_the_qemu_behind_its_qmp_socket(self) -> None:
        qemu = self.start_qemu("guest")
        self.assertEqual(qemu_pid(qemu.qmp_socket), qemu.pid)

    def test_a_socket_no_qemu_serves(self) -> None:
        path = str(self.workdir / "not-qemu.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            listener.bind(path)
            listener.listen()
            with self.assertRaisesRegex(GuardError, f"{path} is served by process \\d+, .*python.*, which is "
                                                    "no QEMU"):
                qemu_pid(path)

    def test_no_socket(self) -> None:
        with self.assertRaisesRegex(GuardError, "cannot find the QEMU listening on .*/absent.qmp: "):
            qemu_pid(str(self.workdir / "absent.qmp"))


class GuardProcessTests(ScratchTestCase):
    """colod's side of the guard (GuardProcess) over a real guard process: what it hears when the guard
    ends without being asked."""

    def start(self) -> tuple[GuardProcess, list[tuple[str, bool]], subprocess.Popen[bytes]]:
        victim = subprocess.Popen(["sleep", "600"])
        self.addCleanup(victim.wait)
        self.addCleanup(victim.kill)
        heard: list[tuple[str, bool]] = []
        guard = GuardProcess("guest1", lambda why, fenced: heard.append((why, fenced)))
        argv = [sys.executable, "-m", "colod.failover.guard", "--name", "guest1", "--pid", str(victim.pid)]
        reactor.spawnProcess(guard, argv[0], argv, env=dict(os.environ), childFDs={0: "w", 1: 2, 2: 2})
        self.addCleanup(lambda: guard.ended)
        self.addCleanup(self.kill, guard)
        return guard, heard, victim

    def kill(self, guard: GuardProcess) -> None:
        if not guard.ended.called:
            assert guard.transport is not None
            guard.transport.signalProcess("KILL")

    @async_test
    async def test_a_guard_that_fenced_says_it_stopped_the_guest(self) -> None:
        guard, heard, victim = self.start()
        guard.renew(time.monotonic() + 0.3)
        await guard.ended
        self.assertEqual(heard, [("its guard stopped the guest", True)])
        self.assertEqual(state(victim.pid), "T")

    @async_test
    async def test_a_guard_that_died_did_not_stop_the_guest(self) -> None:
        guard, heard, victim = self.start()
        guard.renew(time.monotonic() + 60)
        self.kill(guard)
        await guard.ended
        [(why, fenced)] = heard
        self.assertFalse(fenced)
        self.assertRegex(why, "^its guard process ended \\(.*signal 9")
        self.assertNotEqual(state(victim.pid), "T")
