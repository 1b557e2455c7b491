"""
The fuzz campaign's short run for CI, and proof that it can fail: a crash,
a hang, an error pointing outside the input and a memory blow-up planted
where the campaign looks are each reported as finds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from colod.protocol import StreamError
from colod.protocol.readers import LIBXC_READERS
from colod.protocol.wire import LibxcType

from . import fuzz

#: Inputs in the CI run: a few seconds, every target a few thousand times.
CI_COUNT = 20_000
#: The control protocol's JSON lines have fewer ways to be wrong than a binary stream (its checks and
#: json's own messages: about twenty); every other target must show 25.
MIN_REASONS = {"control-request": 20, "control-response": 20}
SEED = 13


@pytest.fixture(scope="module")
def targets() -> list[fuzz.Target]:
    return fuzz.build_targets(SEED, drawn=20)


def _named(targets: list[fuzz.Target], *names: str) -> list[fuzz.Target]:
    return [target for target in targets if target.name in names]


def test_short_campaign_finds_nothing(targets: list[fuzz.Target]) -> None:
    """
    Every target gets its share and reaches deep (at least 25 distinct
    refusals; one that stops at the magic has a handful), and nothing but
    named errors comes out.
    """
    tallies = fuzz.run(targets, CI_COUNT, SEED)
    finds = [find for tally in tallies.values() for find in tally.finds]
    assert finds == []
    assert {name: tally.inputs for name, tally in tallies.items()} == {
        target.name: CI_COUNT // len(targets) for target in targets
    }
    for name, tally in tallies.items():
        assert 0 < tally.refused < tally.inputs, name
        assert len(tally.reasons) >= MIN_REASONS.get(name, 25), (name, sorted(tally.reasons))


def test_a_crash_planted_in_a_reader_is_found(
    targets: list[fuzz.Target], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An IndexError in HVM_PARAMS's reader (a record the seeds carry and mutate) is found, and named."""
    monkeypatch.setitem(LIBXC_READERS, LibxcType.HVM_PARAMS, lambda body, at: body[len(body)])
    tallies = fuzz.run(_named(targets, "stream-main-colo", "link-secondary"), 400, SEED)
    for tally in tallies.values():
        assert tally.finds
        assert {find.error.split(":")[0] for find in tally.finds} == {"IndexError"}
        assert all(find.where.startswith("test_fuzz.py:") for find in tally.finds)


def _attempt(feed: Callable[[fuzz.Input], None], timeout: float = 5.0) -> fuzz.Tally:
    """One measured 100-byte input to a target that feeds it to C{feed}."""
    target = fuzz.Target("planted", (fuzz.Seed((b"x",)),), lambda frame: [], feed, (StreamError,), ())
    tally = fuzz.Tally()
    with fuzz.alarms():
        fuzz.attempt(target, fuzz.Input(bytes(100), (), eof=True, measure=True), tally, 0, timeout)
    return tally


def test_a_hang_is_a_find() -> None:
    def spin(case: fuzz.Input) -> None:
        while True:
            time.sleep(0.001)

    (find,) = _attempt(spin, timeout=0.05).finds
    assert find.error == "Hang: the input ran past the time limit"


def test_a_named_error_outside_the_input_is_a_find() -> None:
    def lost(case: fuzz.Input) -> None:
        raise StreamError(len(case.data) + 1, "somewhere else")

    (find,) = _attempt(lost).finds
    assert find.error == "StreamError outside the 100-byte input: offset 101: somewhere else"


def test_a_named_error_inside_the_input_is_a_refusal() -> None:
    def refuse(case: fuzz.Input) -> None:
        raise StreamError(len(case.data), "bad byte 7")

    tally = _attempt(refuse)
    assert (tally.finds, tally.refused, tally.reasons) == ([], 1, {"StreamError: offset N: bad byte N"})


def test_memory_out_of_proportion_is_a_find() -> None:
    def hoard(case: fuzz.Input) -> None:
        kept = [bytes(case.data) + bytes([i % 256]) for i in range(fuzz.SLACK // 50)]
        del kept

    (find,) = _attempt(hoard).finds
    assert find.error.startswith("Amplification: ") and find.error.endswith(" for a 100-byte input")


def test_inputs_are_reproducible(targets: list[fuzz.Target]) -> None:
    """Input I of a target under a seed is always the same (what --replay relies on), and seeds differ."""
    for target in targets:
        assert fuzz.generate(target, SEED, 77) == fuzz.generate(target, SEED, 77)
        assert fuzz.generate(target, SEED, 77) != fuzz.generate(target, SEED + 1, 77)
