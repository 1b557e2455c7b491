"""MemoryImage and MemoryImageEngine: dirty tracking across processes, and the memory path end to end;
RunControl: suspending a guest process between its operations."""

from __future__ import annotations

import multiprocessing
import multiprocessing.process
import tempfile
import time
from array import array
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.task import Clock

from colod.guest.memory_image import (
    BATCH_SIZE,
    MemoryImage,
    MemoryImageEngine,
    RunControl,
    SuspendTimeout,
    dirty_map_path,
    run_control_path,
)
from colod.protocol import (
    Channel,
    Checkpoint,
    CheckpointDirtyPfnList,
    CheckpointEnd,
    CheckpointId,
    CheckpointState,
    Decoder,
    EmulatorContext,
    Encoder,
    PageData,
    PageType,
    Record,
)
from colod.protocol.wire import PAGE_SIZE
from tests.protocol.streams import drain, hvm_end_of_checkpoint, hvm_prologue
from tests.rig import ScratchTestCase, async_test, sleep

_SETTINGS = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

#: A guest write: (pfn, offset in the page, bytes).
Write = tuple[int, int, bytes]


def _writes(pages: int) -> st.SearchStrategy[list[Write]]:
    write = st.tuples(
        st.integers(0, pages - 1), st.integers(0, PAGE_SIZE - 1), st.binary(min_size=1, max_size=64)
    ).map(lambda w: (w[0], min(w[1], PAGE_SIZE - len(w[2])), w[2]))
    return st.lists(write, max_size=40)


def _apply_writes(image: MemoryImage, writes: list[Write]) -> None:
    for pfn, offset, data in writes:
        image.write(pfn, data, offset)


class Pair:
    """A primary and a secondary image of the same size, with their engines."""

    def __init__(self, directory: Path, pages: int) -> None:
        self.primary_path, self.secondary_path = directory / "primary.ram", directory / "secondary.ram"
        self.primary = MemoryImage.create(self.primary_path, pages)
        self.secondary = MemoryImage.create(self.secondary_path, pages)
        self.sender, self.receiver = MemoryImageEngine(self.primary), MemoryImageEngine(self.secondary)

    def equal(self) -> bool:
        """The two RAM files, byte for byte."""
        return self.primary_path.read_bytes() == self.secondary_path.read_bytes()

    def close(self) -> None:
        self.primary.close()
        self.secondary.close()


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return Pair(tmp_path, 40)


def test_write_read_and_take_dirty(tmp_path: Path) -> None:
    image = MemoryImage.create(tmp_path / "ram", 8)
    assert image.pages == 8
    assert (tmp_path / "ram").stat().st_size == 8 * PAGE_SIZE
    assert Path(dirty_map_path(tmp_path / "ram")).stat().st_size == 8
    assert Path(run_control_path(tmp_path / "ram")).read_bytes() == b"\0"
    image.write(5, b"abc", offset=10)
    image.write(2, b"\xff" * PAGE_SIZE)
    assert image.read(5) == bytes(10) + b"abc" + bytes(PAGE_SIZE - 13)
    assert image.read(2) == b"\xff" * PAGE_SIZE
    assert image.take_dirty() == array("Q", [2, 5])
    assert image.take_dirty() == array("Q")
    image.close()


@_SETTINGS
@given(st.sets(st.integers(0, 199)))
def test_take_dirty_finds_every_run(dirty: set[int]) -> None:
    """Runs at the start, at the end, single pages and whole stretches are all found and cleared."""
    with tempfile.TemporaryDirectory() as directory:
        image = MemoryImage.create(Path(directory) / "ram", 200)
        image.mark_dirty(dirty)
        assert image.take_dirty() == array("Q", sorted(dirty))
        assert image.take_dirty() == array("Q")
        image.close()


def test_bad_writes_are_refused(tmp_path: Path) -> None:
    image = MemoryImage.create(tmp_path / "ram", 4)
    with pytest.raises(ValueError, match="outside the image"):
        image.write(4, b"x")
    with pytest.raises(ValueError, match="do not fit in a page"):
        image.write(0, b"xy", offset=PAGE_SIZE - 1)
    with pytest.raises(ValueError, match="beyond the last page"):
        image.mark_dirty([1, 4])
    assert image.take_dirty() == array("Q")
    image.close()


def test_open_checks_the_dirty_map(tmp_path: Path) -> None:
    MemoryImage.create(tmp_path / "ram", 4).close()
    Path(dirty_map_path(tmp_path / "ram")).write_bytes(bytes(3))
    with pytest.raises(ValueError, match="16384 bytes of RAM but a dirty map of 3 pages"):
        MemoryImage.open(tmp_path / "ram")


def test_open_makes_a_missing_run_control(tmp_path: Path) -> None:
    """Images made before the run control existed still open, and run."""
    MemoryImage.create(tmp_path / "ram", 4).close()
    Path(run_control_path(tmp_path / "ram")).unlink()
    MemoryImage.open(tmp_path / "ram").close()
    assert Path(run_control_path(tmp_path / "ram")).read_bytes() == b"\0"


def _guest(path: str, writes: list[Write]) -> None:
    image = MemoryImage.open(path)
    _apply_writes(image, writes)
    image.close()


def test_writes_from_another_process_are_seen(tmp_path: Path) -> None:
    """The dirty map is shared the way Xen's log-dirty bitmap is: a guest process marks, colod takes."""
    image = MemoryImage.create(tmp_path / "ram", 64)
    writes = [(63, 0, b"last page"), (0, 100, b"first"), (17, 4000, b"x" * 96)]
    guest = multiprocessing.get_context("spawn").Process(target=_guest, args=(str(tmp_path / "ram"), writes))
    guest.start()
    guest.join(30)
    assert guest.exitcode == 0
    assert image.take_dirty() == array("Q", [0, 17, 63])
    assert image.read(63).startswith(b"last page")
    assert image.read(0)[100:105] == b"first"
    assert image.read(17)[4000:] == b"x" * 96
    image.close()


def test_full_records_copy_everything_in_batches(tmp_path: Path) -> None:
    pair = Pair(tmp_path, 2 * BATCH_SIZE + 3)
    for pfn in range(0, pair.primary.pages, 7):
        pair.primary.write(pfn, pfn.to_bytes(4, "little") * (PAGE_SIZE // 4))
    records = pair.sender.full_records()
    assert [len(r.pfns) for r in records] == [BATCH_SIZE, BATCH_SIZE, 3]
    assert all(r.types == bytes([PageType.NOTAB]) * len(r.pfns) for r in records)
    assert all(len(r.data) == PAGE_SIZE * len(r.pfns) for r in records)
    assert pair.sender.checkpoint_records() == []  # the first copy starts dirty tracking afresh
    for record in records:
        pair.receiver.apply(record)
    assert pair.equal()
    assert pair.receiver.dirty_pfn_list() == CheckpointDirtyPfnList()  # applying is not the guest writing
    pair.close()


def test_checkpoint_sends_both_sides_dirty_pages(pair: Pair) -> None:
    for record in pair.sender.full_records():
        pair.receiver.apply(record)
    pair.primary.write(3, b"primary")
    pair.secondary.write(3, b"secondary")
    pair.secondary.write(30, b"only the secondary")
    reported = pair.receiver.dirty_pfn_list()
    assert reported.pfns == array("Q", [3, 30])
    records = pair.sender.checkpoint_records(reported.pfns)
    assert [list(r.pfns) for r in records] == [[3, 30]]
    assert not pair.equal()
    for record in records:
        pair.receiver.apply(record)
    assert pair.equal()
    pair.close()


def test_a_dirty_pfn_beyond_the_image_is_refused(pair: Pair) -> None:
    with pytest.raises(ValueError, match="beyond the last page"):
        pair.sender.checkpoint_records([40])
    pair.close()


def test_apply_stores_only_pages_that_carry_data(pair: Pair) -> None:
    types = bytes([PageType.XTAB, PageType.NOTAB, PageType.BROKEN, PageType.NOTAB, PageType.XALLOC])
    data = b"A" * PAGE_SIZE + b"B" * PAGE_SIZE
    pair.receiver.apply(PageData([1, 2, 3, 4, 5], types, data))
    assert [pair.secondary.read(pfn)[:1] for pfn in range(1, 6)] == [b"\0", b"A", b"\0", b"B", b"\0"]
    with pytest.raises(ValueError, match="bytes of data for 2 pages"):
        pair.receiver.apply(PageData([1, 2], bytes(2), data[:PAGE_SIZE]))
    pair.close()


def _checkpoint(pair: Pair, primary_writes: list[Write], secondary_writes: list[Write]) -> list[PageData]:
    """One round as COLO runs it: both guests write, the secondary reports, the primary sends."""
    _apply_writes(pair.primary, primary_writes)
    _apply_writes(pair.secondary, secondary_writes)
    reported = pair.receiver.dirty_pfn_list()
    assert reported.pfns == array("Q", sorted({pfn for pfn, _, _ in secondary_writes}))
    return pair.sender.checkpoint_records(reported.pfns)


@_SETTINGS
@given(st.lists(st.tuples(_writes(40), _writes(40)), min_size=1, max_size=6))
def test_images_are_equal_after_every_checkpoint(rounds: list[tuple[list[Write], list[Write]]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        pair = Pair(Path(directory), 40)
        for record in pair.sender.full_records():
            pair.receiver.apply(record)
        assert pair.equal()
        for primary_writes, secondary_writes in rounds:
            for record in _checkpoint(pair, primary_writes, secondary_writes):
                pair.receiver.apply(record)
            assert pair.equal()
        pair.close()


class Link:
    """One direction of the peer link: records are encoded, decoded on the far side, and must survive."""

    def __init__(self, channel: Channel) -> None:
        self._encoder, self._decoder = Encoder(channel), Decoder(channel)

    def carry(self, records: list[Record]) -> list[Record]:
        self._decoder.receive_data(b"".join(self._encoder.send(record) for record in records))
        received = drain(self._decoder)
        assert received == records
        return received


@_SETTINGS
@given(st.lists(st.tuples(_writes(40), _writes(40)), min_size=1, max_size=4))
def test_the_records_travel_as_a_real_colo_stream(rounds: list[tuple[list[Write], list[Write]]]) -> None:
    """
    The primary's records go over a main channel, inside a whole COLO stream,
    and the secondary applies what it decoded; the secondary's dirty lists go
    over the back channel, and the primary re-sends what it decoded.
    """
    main, back = Link(Channel.MAIN), Link(Channel.BACK)
    ready, resumed = CheckpointState(CheckpointId.SVM_READY), CheckpointState(CheckpointId.SVM_RESUMED)

    def deliver(records: list[Record]) -> None:
        for record in main.carry(records):
            if isinstance(record, PageData):
                pair.receiver.apply(record)

    with tempfile.TemporaryDirectory() as directory:
        pair = Pair(Path(directory), 40)
        deliver([*hvm_prologue(), *pair.sender.full_records(), *hvm_end_of_checkpoint(),
                 Checkpoint(), EmulatorContext(blob=b"dm 0"), CheckpointEnd()])
        back.carry([ready, resumed])
        assert pair.equal()
        for primary_writes, secondary_writes in rounds:
            _apply_writes(pair.primary, primary_writes)
            _apply_writes(pair.secondary, secondary_writes)
            main.carry([CheckpointState(CheckpointId.NEW)])
            _, reported = back.carry([CheckpointState(CheckpointId.SVM_SUSPENDED),
                                      pair.receiver.dirty_pfn_list()])
            assert isinstance(reported, CheckpointDirtyPfnList)
            deliver([*pair.sender.checkpoint_records(reported.pfns), *hvm_end_of_checkpoint(),
                     Checkpoint(), EmulatorContext(blob=b"dm"), CheckpointEnd()])
            back.carry([ready, resumed])
            assert pair.equal()
        pair.close()


def _paired_guest(path: str) -> None:
    """Forever: op k writes k to page 1, pauses, then writes k to page 2; a whole op leaves them equal."""
    image = MemoryImage.open(path)
    k = 0
    while True:
        k += 1
        with image.guest_turn():
            image.write(1, k.to_bytes(8, "little"))
            time.sleep(0.001)
            image.write(2, k.to_bytes(8, "little"))


def _stuck_guest(path: str) -> None:
    """An op that never ends: marks page 1, then keeps the run lock."""
    image = MemoryImage.open(path)
    with image.guest_turn():
        image.write(1, b"stuck")
        time.sleep(120)


class RunControlTests(ScratchTestCase):
    """RunControl on the reactor against guest processes using guest_turn."""

    def setUp(self) -> None:
        super().setUp()
        self.path = self.workdir / "ram"
        self.image = MemoryImage.create(self.path, 4)
        self.addCleanup(self.image.close)
        self.control = RunControl(self.path)
        self.addCleanup(self.control.close)

    def spawn(self, target: Callable[[str], None]) -> multiprocessing.process.BaseProcess:
        guest = multiprocessing.get_context("spawn").Process(target=target, args=(str(self.path),))
        guest.start()
        self.addCleanup(guest.join, 10)
        self.addCleanup(guest.kill)
        return guest

    async def page_changes(self, pfn: int, old: bytes) -> bytes:
        """Page C{pfn} once it differs from C{old}."""
        deadline = time.monotonic() + 30
        while (page := self.image.read(pfn)) == old:
            self.assertLess(time.monotonic(), deadline, f"page {pfn} did not change within 30 s")
            await sleep(0.005)
        return page

    @async_test
    async def test_a_suspended_guest_is_between_operations_and_still(self) -> None:
        self.spawn(_paired_guest)
        page = await self.page_changes(1, bytes(PAGE_SIZE))
        for _ in range(20):
            await self.control.suspend(reactor, 5)
            self.assertEqual(self.image.read(1), self.image.read(2))  # no op half-done
            page = self.image.read(1)
            self.control.resume()
            page = await self.page_changes(1, page)
        await self.control.suspend(reactor, 5)
        still = self.path.read_bytes()
        await sleep(0.2)
        self.assertEqual(self.path.read_bytes(), still)
        self.control.resume()
        await self.page_changes(1, self.image.read(1))

    def test_suspend_without_a_guest_is_immediate(self) -> None:
        """No process plays the guest (an opened image is no player): the first try succeeds."""
        self.successResultOf(self.control.suspend(Clock(), 1))
        self.assertTrue(self.control.try_suspend())  # again, while suspended
        self.control.resume()
        self.assertEqual(Path(run_control_path(self.path)).read_bytes(), b"\0")

    @async_test
    async def test_a_stuck_guest_times_out_and_a_killed_one_lets_go(self) -> None:
        guest = self.spawn(_stuck_guest)
        await self.page_changes(1, bytes(PAGE_SIZE))
        error = await self.assertFailure(self.control.suspend(reactor, 0.2), SuspendTimeout)
        self.assertEqual(str(error), f"the guest of {self.path} did not stop within 0.2 s: "
                                     "an operation of its still holds the run lock")
        self.assertEqual(Path(run_control_path(self.path)).read_bytes(), b"\0")  # pause withdrawn
        guest.kill()
        guest.join(10)
        self.assertEqual(guest.exitcode, -9)
        self.assertTrue(self.control.try_suspend())  # the kernel dropped the dead guest's flock
