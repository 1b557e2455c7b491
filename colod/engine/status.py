# -*- test-case-name: tests.engine.test_engines -*-
"""What a domain's engine tells the administrator: a status file, and pause statistics.

The status file (``<state_dir>/<domain>/status.json``) is replaced whole at
every change, so a reader never sees half of one.  It is written after a
checkpoint has ended, never inside the guest's pause.
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

#: How many recent pauses the percentiles are taken over.
RECENT = 1000


@attrs.frozen
class Pause:
    """One checkpoint's pause of the primary's guest, and where its time went."""

    seconds: float
    in_qemu: float
    copying: float

    @property
    def colod_share(self) -> float:
        """Time that was neither this node's QEMU answering QMP nor copying pages here.

        On the primary that is colod's own work *and* the wait for the
        secondary (its QMP calls and page applying included):
        bench/checkpoint.py, which sees both nodes, separates them.
        """
        return max(0.0, self.seconds - self.in_qemu - self.copying)


class PauseStats:
    """The recent pauses, for status and benchmarks."""

    def __init__(self) -> None:
        self.recent: deque[Pause] = deque(maxlen=RECENT)

    def add(self, pause: Pause) -> None:
        self.recent.append(pause)

    def percentile(self, p: int) -> float | None:
        """The p-th percentile of recent pauses, in seconds (None before the first)."""
        values = sorted(x.seconds for x in self.recent)
        if not values:
            return None
        if len(values) == 1:
            return values[0]
        return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


class StatusFile:
    """``status.json`` of one domain, replaced atomically."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / "status.json"

    def write(self, status: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".status-", dir=self.directory)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({**status, "updated": time.time()}, f, indent=1)
            os.replace(name, self.path)
        except BaseException:
            os.unlink(name)
            raise
