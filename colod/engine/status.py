# -*- test-case-name: tests.engine.test_engines -*-
"""What a domain's engine tells the administrator: a status file, and pause statistics.

The status file (``<state_dir>/<domain>/status.json``) is replaced whole at
every change, so a reader never sees half of one.  It is written after a
checkpoint has ended, never inside the guest's pause.  When it cannot be
written it is removed rather than left saying what is no longer true, and
written again as soon as it can be (StatusFile).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from colod.histogram import Histogram, powers

#: How many recent pauses the percentiles are taken over.
RECENT = 1000
#: The histograms' bounds: pauses from 1 ms to 10 s, bytes from 4 KiB to 4 GiB, pages from 1 to 1 M.
PAUSE_BOUNDS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BYTES_BOUNDS = powers(4096, 4, 11)
PAGES_BOUNDS = powers(1, 4, 11)
#: Seconds between attempts to write a status that could not be written.
RETRY_INTERVAL = 1.0


@attrs.frozen
class Pause:
    """One checkpoint's pause of the primary's guest, and where its time went."""

    seconds: float
    in_qemu: float
    copying: float
    #: Guest pages, and bytes on the peer link, that the checkpoint sent while the guest was paused.
    pages: int = 0
    bytes: int = 0

    @property
    def colod_share(self) -> float:
        """Time that was neither this node's QEMU answering QMP nor copying pages here.

        On the primary that is colod's own work *and* the wait for the
        secondary (its QMP calls and page applying included):
        bench/checkpoint.py, which sees both nodes, separates them.
        """
        return max(0.0, self.seconds - self.in_qemu - self.copying)


class PauseStats:
    """The recent pauses, for status and benchmarks; and every pause since the start, in histograms."""

    def __init__(self) -> None:
        self.recent: deque[Pause] = deque(maxlen=RECENT)
        self.seconds = Histogram(PAUSE_BOUNDS)
        self.bytes = Histogram(BYTES_BOUNDS)
        self.pages = Histogram(PAGES_BOUNDS)

    def add(self, pause: Pause) -> None:
        self.recent.append(pause)
        self.seconds.observe(pause.seconds)
        self.bytes.observe(pause.bytes)
        self.pages.observe(pause.pages)

    def percentile(self, p: int) -> float | None:
        """The p-th percentile of recent pauses, in seconds (None before the first)."""
        values = sorted(x.seconds for x in self.recent)
        if not values:
            return None
        if len(values) == 1:
            return values[0]
        return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


class StatusFile:
    """``status.json`` of one domain, replaced atomically; a write that fails never raises.

    The engine publishes from inside its machine's transitions, where an
    exception would leave it half-way through one.  A write that fails (a
    full or unusable ``state_dir``) is logged, once per outage, and the old
    file is removed: an absent status says "unknown", an old one would go on
    saying ``protected: true``.  Then the new one is written in place of the
    old one if the space that frees is enough (on a full disk it is), or else
    retried every ``retry_interval`` seconds, and by the next write, so that
    it is there at most that long after space comes back.  Every status
    written counts the failed attempts so far in ``status_write_failures``.
    """

    log = Logger()

    def __init__(self, directory: str | os.PathLike[str], clock: IReactorTime,
                 retry_interval: float = RETRY_INTERVAL) -> None:
        """``clock`` times the retries: the engine's, so that a test's task.Clock drives both."""
        self.directory = Path(directory)
        self.path = self.directory / "status.json"
        #: Failed attempts to write a status since colod started.
        self.failures = 0
        #: The newest status given, whether written or not (the control socket's), with the clock's
        #: time its state began and the time its checkpoint count last went up (None before).
        self.last: dict[str, Any] = {}
        self.since = clock.seconds()
        self.last_checkpoint: float | None = None
        self._clock = clock
        self._retry_interval = retry_interval
        self._unwritten: dict[str, Any] | None = None
        self._retry: IDelayedCall | None = None
        #: When the current outage began: the first failure since the last atomic replace.
        self._failing_since: float | None = None

    def write(self, status: dict[str, Any]) -> None:
        """Replace the file with ``status``, or keep it to retry; logs, never raises."""
        now = self._clock.seconds()
        if status.get("state") != self.last.get("state"):
            self.since = now
        if status.get("checkpoints", 0) > self.last.get("checkpoints", 0):
            self.last_checkpoint = now
        self.last = status
        self._unwritten = status
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._attempt()

    def _attempt(self) -> None:
        self._retry = None
        try:
            self._replace()
        except Exception as error:  # noqa: BLE001 - whatever it is, the engine must go on
            self._failed(error)
            return
        if self._failing_since is not None:
            self.log.info("{path} written again, {seconds:.1f} s after the first of {n} failed writes",
                          path=self.path, seconds=self._clock.seconds() - self._failing_since,
                          n=self.failures)
            self._failing_since = None

    def _failed(self, error: Exception) -> None:
        """Remove the old file and write in its place, or retry later; log the first failure of an outage."""
        self.failures += 1
        first = self._failing_since is None
        if first:
            self._failing_since = self._clock.seconds()
            if not isinstance(error, OSError):
                self.log.failure("writing {path}", Failure(error), path=self.path)
        try:
            self.path.unlink()
            removed, old = True, "the old one is removed, as it would no longer be true"
        except FileNotFoundError:
            removed, old = False, "there is no old one"
        except OSError as unlink_error:
            removed, old = False, f"the old one cannot be removed either: {unlink_error.strerror}"
        if first:
            why = error.strerror if isinstance(error, OSError) and error.strerror else repr(error)
            self.log.error("cannot write {path}: {why}; {old}; retrying every {interval:g} s",
                           path=self.path, why=why, old=old, interval=self._retry_interval)
        if removed:
            try:
                self._replace()
                return
            except Exception:  # noqa: BLE001 - counted, and retried below
                self.failures += 1
        self._retry = self._clock.callLater(self._retry_interval, self._attempt)

    def _replace(self) -> None:
        """Write the newest status to a new file and put it in place of the old one."""
        assert self._unwritten is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".status-", dir=self.directory)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({**self._unwritten, "status_write_failures": self.failures, "updated": time.time()},
                          f, indent=1)
            os.replace(name, self.path)
        except BaseException:
            os.unlink(name)
            raise
        self._unwritten = None
