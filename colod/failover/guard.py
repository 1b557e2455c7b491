# -*- test-case-name: tests.failover.test_guard -*-
"""The guard: a process of its own that fences a primary's guest if colod dies or freezes.

colod pauses its guest itself when its etcd lease may lapse (the primary's
``fenced``), but a colod that was killed, or frozen (SIGSTOP, a stall), pauses
nothing, and the secondary takes the domain over once the lease has expired:
the guest would run on both hosts.  So the primary's colod starts one guard per
domain and feeds it, on its stdin, the lease's safe deadline on
CLOCK_MONOTONIC (the same clock in every process) after each renewal::

    until 1234.5
    end

When the deadline passes with no newer one, when stdin reaches EOF or fails
(colod died; every fd of a dead process closes) or when the parent dies
(PR_SET_PDEATHSIG), the guard fences the guest, says so on stderr and exits
with FENCED: ``xl pause NAME`` for a Xen domain, SIGSTOP of the QEMU process
for a plain QEMU guest.  ``end`` (a clean stop of colod, whose guest runs on
as without colod) makes it exit 0 without fencing.  It imports only the
standard library, so that it starts fast and depends on nothing colod may
break.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from types import FrameType

#: The guard's exit status once it fenced the guest.
FENCED = 3
#: Seconds ``xl pause`` may take.
XL_TIMEOUT = 10.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent(signum: int) -> None:
    """Have Linux send ``signum`` when the parent (colod's thread that started this) dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")


def stop_process(pid: int) -> Callable[[], str]:
    """A fence: SIGSTOP ``pid`` (a QEMU: its vCPUs and devices stop where they are)."""
    def fence() -> str:
        os.kill(pid, signal.SIGSTOP)
        return f"sent SIGSTOP to QEMU process {pid}"
    return fence


def pause_domain(xl: str, domain: str) -> Callable[[], str]:
    """A fence: ``xl pause DOMAIN``."""
    def fence() -> str:
        done = subprocess.run([xl, "pause", domain], capture_output=True, text=True, timeout=XL_TIMEOUT,
                              check=False)
        if done.returncode:
            raise OSError(f"{xl} pause {domain} exited {done.returncode}: {done.stderr.strip()}")
        return f"{xl} pause {domain} exited 0"
    return fence


class Guard:
    """Reads colod's lines from ``fd``; fences once the deadline passes, stdin ends or the parent dies."""

    def __init__(self, fd: int, fence: Callable[[], str], what: str) -> None:
        self._fd = fd
        self._fence = fence
        self._what = what
        self.deadline: float | None = None
        self._pending = b""

    def run(self) -> int:
        """The exit status: 0 after ``end``, FENCED once fenced."""
        while True:
            wait = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
            ready, _, _ = select.select([self._fd], [], [], wait)
            if not ready:
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    return self.fence("the lease's safe deadline passed with no renewal from colod (frozen?)")
                continue
            try:
                data = os.read(self._fd, 4096)
            except OSError as e:
                return self.fence(f"reading from colod failed: {e}")
            if not data:
                return self.fence("colod is gone (its end of the pipe closed)")
            self._pending += data
            while b"\n" in self._pending:
                line, self._pending = self._pending.split(b"\n", 1)
                words = line.decode(errors="replace").split()
                if words == ["end"]:
                    print(f"colod guard: {self._what}: colod stopped cleanly; not fencing", file=sys.stderr)
                    return 0
                try:
                    if len(words) != 2 or words[0] != "until":
                        raise ValueError(line[:80])
                    self.deadline = float(words[1])
                except ValueError:
                    return self.fence(f"colod said {line[:80]!r}, which is no guard line")

    def parent_died(self, signum: int, frame: FrameType | None) -> None:
        sys.exit(self.fence("colod is gone (its parent-death signal came)"))

    def fence(self, why: str) -> int:
        try:
            how = self._fence()
        except (OSError, subprocess.SubprocessError) as e:
            print(f"colod guard: {self._what}: FENCING FAILED ({why}): {e}", file=sys.stderr, flush=True)
            return 1
        print(f"colod guard: {self._what}: FENCED: {why}: {how}", file=sys.stderr, flush=True)
        return FENCED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m colod.failover.guard",
                                     description="Fence a primary's guest if colod dies or freezes.")
    parser.add_argument("--name", required=True, help="the domain's name in colod, for what it says")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--pid", type=int, help="the QEMU process to SIGSTOP")
    target.add_argument("--xen-domain", help="the Xen domain to xl pause")
    parser.add_argument("--xl", default="/usr/sbin/xl", help="xl's path (with --xen-domain)")
    options = parser.parse_args(argv)
    fence = (stop_process(options.pid) if options.pid is not None
             else pause_domain(options.xl, options.xen_domain))
    guard = Guard(0, fence, f"domain {options.name}")
    signal.signal(signal.SIGHUP, guard.parent_died)
    _die_with_parent(signal.SIGHUP)
    if os.getppid() == 1:  # the parent died before the signal was asked for
        return guard.fence("colod was gone before its guard started")
    return guard.run()


if __name__ == "__main__":
    sys.exit(main())
