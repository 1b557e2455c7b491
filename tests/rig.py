"""The QEMU test rig: real qemu-system-x86_64 processes for trial and pytest tests.

Each QEMU a test starts is stopped and reaped by that test's cleanup, even when
the test fails; conftest.py checks at the end of the run that none is left.
"""

from __future__ import annotations

import functools
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial import unittest

from colod.testing.qemu_process import QemuProcess

# The twistd of the Python running the tests (the project's virtualenv).
TWISTD = str(Path(sys.executable).with_name("twistd"))


class ScratchTestCase(unittest.TestCase):
    """A trial TestCase with its own scratch directory, removed afterwards."""

    def setUp(self) -> None:
        # Under /tmp, not the runner's cwd: unix socket paths are limited to
        # 107 bytes, and the work tree stays clean whichever runner is used.
        self.workdir = Path(tempfile.mkdtemp(prefix="colod-", dir="/tmp"))
        self.addCleanup(shutil.rmtree, self.workdir, True)


class QemuTestCase(ScratchTestCase):
    """A ScratchTestCase whose QEMUs are always reaped, even when the test fails."""

    def start_qemu(self, name: str, args: Sequence[str] = (), **kwargs: str) -> QemuProcess:
        """Start a QEMU in this test's directory; it is reaped when the test ends."""
        qemu = QemuProcess(self.workdir, name, args, **kwargs)
        self.addCleanup(qemu.stop)
        return qemu.start()



def async_test(method: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., Deferred[None]]:
    """Let a trial test be an ``async def`` that awaits Deferreds."""

    @functools.wraps(method)
    def run(self: unittest.TestCase) -> Deferred[None]:
        return Deferred.fromCoroutine(method(self))

    return run


def sleep(seconds: float) -> Deferred[None]:
    """A Deferred that fires after ``seconds`` on the running reactor."""
    from twisted.internet import reactor

    return deferLater(reactor, seconds, lambda: None)


def wait_for_text(path: Path, text: str, timeout: float) -> str:
    """Wait until the file at ``path`` contains ``text``; return its content, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} did not appear in {path} within {timeout:g} s:\n{content}")
        time.sleep(0.05)
