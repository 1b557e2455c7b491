"""Histograms as Prometheus counts them: cumulative buckets by upper bound (``le``), and a sum."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from colod.histogram import Histogram, powers


def test_bounds_are_inclusive_and_cumulative() -> None:
    histogram = Histogram((1.0, 2.0, 5.0))
    for value in (0.5, 1.0, 1.5, 2.0, 7.0):
        histogram.observe(value)
    assert histogram.cumulative() == [(1.0, 2), (2.0, 4), (5.0, 4), (float("inf"), 5)]
    assert (histogram.count, histogram.sum) == (5, 12.0)


def test_bounds_must_increase() -> None:
    with pytest.raises(ValueError, match="increase"):
        Histogram((2.0, 1.0))
    with pytest.raises(ValueError, match="increase"):
        Histogram((1.0, 1.0))


def test_powers() -> None:
    assert powers(4096, 4, 3) == (4096, 16384, 65536)


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False)))
def test_every_observation_is_counted_once(values: list[float]) -> None:
    histogram = Histogram(powers(0.01, 10, 5))
    for value in values:
        histogram.observe(value)
    counts = [count for _, count in histogram.cumulative()]
    assert counts == sorted(counts)
    assert counts[-1] == histogram.count == len(values)
    for bound, count in histogram.cumulative():
        assert count == sum(1 for value in values if value <= bound)
