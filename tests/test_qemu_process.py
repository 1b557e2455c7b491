"""The QEMU rig: processes start, report failures, and never outlive their starter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from colod.testing.qemu_process import QemuProcess, QemuStartError, reap_all
from tests.rig import ScratchTestCase


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead but not yet reaped by its parent.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


class QemuProcessTests(ScratchTestCase):
    def test_start_and_stop(self) -> None:
        """start() returns once the QMP socket exists; stop() reaps QEMU."""
        qemu = QemuProcess(self.workdir, "vm").start()
        self.assertTrue(os.path.exists(qemu.qmp_socket))
        pid = qemu.pid
        self.assertTrue(alive(pid))
        qemu.stop()
        self.assertFalse(alive(pid))

    def test_start_failure_carries_qemu_output(self) -> None:
        """A QEMU that refuses its arguments fails start() with what QEMU said."""
        qemu = QemuProcess(self.workdir, "bad", ["-drive", "file=/nonexistent/disk.raw,if=none"])
        with self.assertRaises(QemuStartError) as caught:
            qemu.start()
        self.assertRegex(str(caught.exception),
                         r"^bad: QEMU exited with status 1: .*Could not open '/nonexistent/disk.raw'")
        self.assertEqual(reap_all(), [])

    def test_reap_all_kills_leftovers(self) -> None:
        """reap_all() kills and names every QEMU still running."""
        qemu = QemuProcess(self.workdir, "leftover").start()
        pid = qemu.pid
        self.assertEqual(reap_all(), ["leftover"])
        self.assertFalse(alive(pid))

    def test_qemu_dies_with_its_starter(self) -> None:
        """A QEMU whose starting process is killed outright dies too (no stray QEMU)."""
        starter = subprocess.Popen(
            [sys.executable, "-c",
             "import sys, time; from colod.testing.qemu_process import QemuProcess;"
             "q = QemuProcess(sys.argv[1], 'orphan').start(); print(q.pid, flush=True); time.sleep(60)",
             str(self.workdir)],
            stdout=subprocess.PIPE, text=True,
        )
        assert starter.stdout is not None
        pid = int(starter.stdout.readline())
        self.assertTrue(alive(pid))
        starter.send_signal(signal.SIGKILL)
        starter.wait(10)
        deadline = time.monotonic() + 5
        while alive(pid):
            self.assertLess(time.monotonic(), deadline, "QEMU outlived the process that started it")
            time.sleep(0.05)
