# -*- test-case-name: tests.test_histogram -*-
"""Counts of observations under fixed upper bounds, kept as Prometheus keeps a histogram.

The engine keeps its checkpoints' pauses, bytes and pages in these, from the
daemon's start: ``colodctl status`` shows them and the metrics endpoint
exports them, so the two always agree, and no observation is lost to a
window (colod.engine.status keeps only the recent pauses for percentiles).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence


class Histogram:
    """Observations counted by the first bound each is at most (``le``), and their sum."""

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("a histogram's bounds must increase")
        self.bounds = tuple(bounds)
        #: Observations per bucket (the last: above every bound), not cumulative.
        self._counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def cumulative(self) -> list[tuple[float, int]]:
        """Each bound with the observations at most it, ending with ``inf`` and the count."""
        found, total = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self._counts, strict=True):
            total += count
            found.append((bound, total))
        return found


def powers(first: float, factor: float, count: int) -> tuple[float, ...]:
    """``count`` bounds from ``first``, each ``factor`` times the one before."""
    return tuple(first * factor ** i for i in range(count))
