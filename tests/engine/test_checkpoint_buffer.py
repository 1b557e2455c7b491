"""The secondary's checkpoint buffer: pages outside the guest refused, pages sent twice kept once, a bound."""

from __future__ import annotations

from array import array

from twisted.trial.unittest import TestCase

from colod.engine.checkpoint_buffer import (
    ALLOWANCE,
    BATCH_SIZE,
    ENTRY_COST,
    CheckpointBuffer,
    CheckpointTooLarge,
    PageOutsideGuest,
    footprint,
    host_pages,
)
from colod.guest.memory_image import MemoryImage, MemoryImageEngine
from colod.protocol import Checkpoint, CheckpointEnd, EmulatorContext, HvmContext, PageData, PageType
from colod.protocol.wire import PAGE_SIZE
from tests.rig import ScratchTestCase

GUEST_PAGES = 4096


def page(fill: int) -> bytes:
    return bytes([fill]) * PAGE_SIZE


def pages(pfns: list[int], fills: list[int], types: bytes | None = None) -> PageData:
    """PAGE_DATA of ``pfns``; ``fills`` gives the byte of each page that carries data."""
    types = bytes(len(pfns)) if types is None else types
    return PageData(pfns, types, b"".join(page(f) for f in fills))


def receive(buffer: CheckpointBuffer, *records: object) -> None:
    """Each record as the engine hands it on: arrived, read by the machine, kept."""
    for record in records:
        buffer.arrived(record)
        buffer.delivered(record)
        buffer.add(record)


def as_pages(records: list[object]) -> dict[int, tuple[int, bytes]]:
    """pfn to (type, data) over the PAGE_DATA records, checking no pfn comes twice."""
    found: dict[int, tuple[int, bytes]] = {}
    for record in records:
        if isinstance(record, PageData):
            data, at = bytes(record.data), 0
            for pfn, page_type in zip(record.pfns, record.types, strict=True):
                assert pfn not in found, f"pfn {pfn:#x} handed out twice"
                carries = page_type not in (PageType.XTAB, PageType.BROKEN, PageType.XALLOC)
                found[pfn] = (page_type, data[at : at + PAGE_SIZE] if carries else b"")
                at += PAGE_SIZE if carries else 0
            assert at == len(data)
    return found


class OutsideTheGuestTests(TestCase):
    def test_page_beyond_the_guest_is_refused_on_arrival(self) -> None:
        """A record with one pfn past the guest is refused by name, before the machine sees it."""
        buffer = CheckpointBuffer(GUEST_PAGES)
        receive(buffer, pages([0, GUEST_PAGES - 1], [1, 2]))
        held = buffer.held
        with self.assertRaises(PageOutsideGuest) as caught:
            buffer.arrived(pages([5, GUEST_PAGES, GUEST_PAGES + 9, 7], [1, 2, 3, 4]))
        self.assertEqual(str(caught.exception),
                         f"page outside the guest: PAGE_DATA carries pfn {GUEST_PAGES:#x}, "
                         f"and the guest's memory is pages 0x0-{GUEST_PAGES - 1:#x}")
        self.assertEqual(buffer.held, held)
        self.assertEqual(set(as_pages(buffer.take())), {0, GUEST_PAGES - 1})

    def test_no_memory_image_takes_no_page(self) -> None:
        with self.assertRaises(PageOutsideGuest) as caught:
            CheckpointBuffer(0).arrived(pages([0], [1]))
        self.assertIn("it has no memory image", str(caught.exception))

    def test_unknown_size_takes_any_pfn_up_to_the_hosts_bound(self) -> None:
        """A guest of unknown size (Xen) has pfns past its memory; the bound is this host's memory."""
        buffer = CheckpointBuffer(None)
        receive(buffer, pages([0xFEFFF], [9]))
        self.assertEqual(buffer.limit, host_pages() * (PAGE_SIZE + ENTRY_COST) + ALLOWANCE)
        self.assertEqual(as_pages(buffer.take()), {0xFEFFF: (PageType.NOTAB, page(9))})


class DuplicateTests(TestCase):
    def test_page_sent_twice_is_held_once_and_the_later_copy_wins(self) -> None:
        buffer = CheckpointBuffer(GUEST_PAGES)
        receive(buffer, pages([1, 2, 3], [1, 2, 3]))
        held = buffer.held
        receive(buffer, pages([3, 4, 2], [0x33, 4, 0x22]))
        self.assertEqual(buffer.held, held + PAGE_SIZE + ENTRY_COST)  # only page 4 is new
        self.assertEqual(as_pages(buffer.take()), {1: (0, page(1)), 2: (0, page(0x22)), 3: (0, page(0x33)),
                                                   4: (0, page(4))})

    def test_twice_in_one_record(self) -> None:
        buffer = CheckpointBuffer(GUEST_PAGES)
        receive(buffer, pages([7, 8, 7], [1, 2, 3]))
        self.assertEqual(buffer.held, 2 * (PAGE_SIZE + ENTRY_COST))
        self.assertEqual(as_pages(buffer.take()), {7: (0, page(3)), 8: (0, page(2))})

    def test_a_later_copy_without_data_wins_too(self) -> None:
        """A page resent as XTAB (gone from the guest) is handed out as XTAB, its earlier data dropped."""
        buffer = CheckpointBuffer(GUEST_PAGES)
        receive(buffer, pages([1, 2], [1, 2]), pages([2, 3], [3], bytes([PageType.XTAB, PageType.NOTAB])))
        receive(buffer, pages([2], [0x22]))  # and back again, into its old slot
        self.assertEqual(buffer.held, 3 * ENTRY_COST + 3 * PAGE_SIZE)
        receive(buffer, pages([1], [], bytes([PageType.XTAB])))
        self.assertEqual(as_pages(buffer.take()), {1: (PageType.XTAB, b""), 2: (0, page(0x22)),
                                                   3: (0, page(3))})

    def test_a_whole_guest_sent_many_times_is_held_once(self) -> None:
        """Live-migration rounds resend the guest: what is held stays one guest's worth."""
        buffer = CheckpointBuffer(GUEST_PAGES)
        for round_ in range(5):
            for start in range(0, GUEST_PAGES, BATCH_SIZE):
                pfns = list(range(start, start + BATCH_SIZE))
                receive(buffer, pages(pfns, [round_] * BATCH_SIZE))
        self.assertEqual(buffer.held, GUEST_PAGES * (PAGE_SIZE + ENTRY_COST))
        records = buffer.take()
        self.assertEqual([len(r.pfns) for r in records], [BATCH_SIZE] * (GUEST_PAGES // BATCH_SIZE))
        self.assertEqual(bytes(records[-1].data)[-PAGE_SIZE:], page(4))
        self.assertEqual(buffer.held, 0)

    def test_order_around_the_pages_is_kept(self) -> None:
        """Pages go where the checkpoint's first PAGE_DATA was; the other records keep their order."""
        buffer = CheckpointBuffer(GUEST_PAGES)
        context, state = HvmContext(b"cpu"), EmulatorContext(blob=b"dm")
        receive(buffer, pages([5], [5]), context, pages([6], [6]), Checkpoint(), state)
        records = buffer.take()
        self.assertEqual([type(r) for r in records],
                         [PageData, PageData, HvmContext, Checkpoint, EmulatorContext])
        self.assertEqual([pfn for r in records[:2] for pfn in r.pfns], [5, 6])


class CopyTests(TestCase):
    def test_new_pages_are_held_without_a_copy(self) -> None:
        """A record of new pages (the common case, inside the guest's pause) is handed on as it came."""
        data = bytearray(page(1) + page(2))
        buffer = CheckpointBuffer(GUEST_PAGES)
        receive(buffer, PageData([1, 2], bytes(2), memoryview(data)))
        [record] = buffer.take()
        self.assertIs(memoryview(record.data).obj, data)

    def test_a_short_record_is_copied_out_of_its_larger_buffer(self) -> None:
        """A one-page record read inside a 1 MiB chunk must not keep the whole chunk alive."""
        chunk = bytes(1 << 20)
        buffer = CheckpointBuffer(GUEST_PAGES)
        receive(buffer, PageData([1], bytes(1), memoryview(chunk)[:PAGE_SIZE]))
        [record] = buffer.take()
        self.assertIsNot(memoryview(record.data).obj, chunk)
        self.assertEqual(bytes(record.data), page(0))


class BoundTests(TestCase):
    def test_records_beyond_the_allowance_are_refused(self) -> None:
        """A checkpoint of endless device state is cut off once past the guest's memory and the allowance."""
        buffer = CheckpointBuffer(16)
        blob = HvmContext(bytes(4 << 20))
        with self.assertRaises(CheckpointTooLarge) as caught:
            for _ in range(ALLOWANCE // len(blob.blob) + 2):
                receive(buffer, blob)
        self.assertIn("checkpoint too large", str(caught.exception))
        self.assertLessEqual(buffer.held, buffer.limit)

    def test_records_waiting_unread_count(self) -> None:
        """Records the machine has not read yet (a step runs) count against the bound until read."""
        buffer = CheckpointBuffer(16)
        blob = HvmContext(bytes(8 << 20))
        waiting = []
        with self.assertRaises(CheckpointTooLarge):
            while True:
                buffer.arrived(blob)
                waiting.append(blob)
        self.assertEqual(len(waiting), buffer.limit // footprint(blob))
        for record in waiting:
            buffer.delivered(record)
        buffer.arrived(blob)  # read, and not kept: there is room again

    def test_drop_forgets_everything(self) -> None:
        buffer = CheckpointBuffer(16)
        buffer.arrived(HvmContext(bytes(1000)))
        receive(buffer, pages([1], [1]))
        buffer.drop()
        self.assertEqual(buffer.held, 0)
        self.assertEqual(buffer.take(), [])
        waited = buffer.limit // footprint(CheckpointEnd())
        for _ in range(waited):  # nothing left waiting either: the whole bound is free
            buffer.arrived(CheckpointEnd())


class AppliedTests(ScratchTestCase):
    def test_what_is_handed_out_applies_to_a_memory_image(self) -> None:
        """The records handed out apply with the memory-image engine: each pfn holds its last copy."""
        image = MemoryImage.create(self.workdir / "memory.img", 64)
        self.addCleanup(image.close)
        buffer = CheckpointBuffer(image.pages)
        receive(buffer, pages(list(range(64)), list(range(64))), pages([63, 0, 9], [0xA0, 0xA1, 0xA2]))
        engine = MemoryImageEngine(image)
        for record in buffer.take():
            engine.apply(record)
        expected = {pfn: pfn for pfn in range(64)} | {63: 0xA0, 0: 0xA1, 9: 0xA2}
        self.assertEqual([image.read(pfn) for pfn in range(64)], [page(expected[p]) for p in range(64)])
        self.assertEqual(image.take_dirty(), array("Q"))
