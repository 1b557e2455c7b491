"""The QEMU test rig: real qemu-system-x86_64 processes for trial and pytest tests.

Each QEMU a test starts is stopped and reaped by that test's cleanup, even when
the test fails; conftest.py checks at the end of the run that none is left.
"""

from __future__ import annotations

import functools
import shutil
import sys
import tempfile
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial import unittest

from colod.qemu_process import QemuProcess

# The twistd of the Python running the tests (the project's virtualenv).
TWISTD = str(Path(sys.executable).with_name("twistd"))


class QemuTestCase(unittest.TestCase):
    """A trial TestCase with a scratch directory and QEMUs that are always reaped."""

    def setUp(self) -> None:
        # Unix socket paths are limited to 107 bytes: keep the directory short.
        self.workdir = Path(tempfile.mkdtemp(prefix="colod-", dir="/tmp"))
        self.addCleanup(shutil.rmtree, self.workdir, True)

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
