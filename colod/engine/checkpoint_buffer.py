# -*- test-case-name: tests.engine.test_checkpoint_buffer -*-
"""What the secondary holds of one checkpoint before its CHECKPOINT_END, within a bound.

The secondary applies nothing before CHECKPOINT_END, so it must hold a whole
checkpoint; a primary that never ends one must not make it hold more than a
checkpoint can legitimately carry:

- a page outside the guest is refused as it arrives (L{PageOutsideGuest}),
  when the guest's size is known;
- a page sent twice in one checkpoint is kept once, the later copy winning
  (Xen's first checkpoint is a live migration, whose rounds resend pages), so
  the pages held never exceed the guest's own;
- everything held, counted together with what waits unread in the engine's
  inbox, stays under the guest's memory plus L{ALLOWANCE} for the other
  records (L{CheckpointTooLarge}).

A guest whose size colod does not know (a Xen domain: its pfns are not its
memory size) is bounded by half this host's memory as the kernel reports it,
the most a checkpoint could take here without starving the host.

Pages are held where they arrived, without a copy while no page comes twice,
and handed out again as PAGE_DATA records in the order their pages first
arrived, at the place of the checkpoint's first PAGE_DATA; records without
pages keep their order around them.
"""

from __future__ import annotations

import os
from array import array

import attrs

from colod.engine.link_end import ProtocolViolation
from colod.protocol import PageData, PageType, Record
from colod.protocol.records import Buffer
from colod.protocol.wire import PAGE_SIZE, PAGE_TYPES_WITHOUT_DATA

#: Bytes allowed beyond the guest's pages: the records other than pages (device
#: state, CPU context), and pages waiting unread while a local step runs.
ALLOWANCE = 64 << 20
#: What one held page costs beyond its data: its index entry, pfn, type and slot.
ENTRY_COST = 160
#: What a decoded record costs beyond its buffers, and each item of its tuples.
RECORD_COST = 256
ITEM_COST = 128
#: Pages per PAGE_DATA record handed out (libxc's MAX_BATCH_SIZE).
BATCH_SIZE = 1024

#: Page type to 1 if the type carries page data, else 0 (a bytes.translate table).
_CARRIES_DATA = bytes(t in frozenset(PageType) - PAGE_TYPES_WITHOUT_DATA for t in range(256))
_NO_SLOT = -1
#: A slot is its chunk's number shifted by this, plus the page's index in the chunk (records are
#: at most 128 MiB: 32768 pages).
SLOT_BITS = 16
_PAGE_MASK = (1 << SLOT_BITS) - 1


class PageOutsideGuest(ProtocolViolation):
    """The primary sent a page beyond the guest's memory."""


class CheckpointTooLarge(ProtocolViolation):
    """The primary sent more than one checkpoint can hold before its CHECKPOINT_END."""


def host_pages() -> int:
    """The bound in pages for a guest of unknown size: half this host's memory."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // PAGE_SIZE // 2


def footprint(record: Record) -> int:
    """Roughly the bytes a decoded record holds: its buffers, plus Python's cost of the rest."""
    if isinstance(record, PageData):
        return len(record.data) + ENTRY_COST * len(record.pfns)
    size = RECORD_COST
    for field in attrs.fields(type(record)):
        value = getattr(record, field.name)
        if isinstance(value, array):
            size += value.itemsize * len(value)
        elif isinstance(value, bytes | bytearray | memoryview):
            size += memoryview(value).nbytes
        elif isinstance(value, tuple | str):
            size += ITEM_COST * len(value)
    return size


def _kept(data: Buffer) -> memoryview:
    """``data`` to hold on to: a view of it, or a copy if it is a small part of a larger buffer
    (a short record read in one chunk), whose rest a view would keep alive."""
    view = memoryview(data)
    base = view.obj
    if base is not None and memoryview(base).nbytes > 2 * view.nbytes:
        return memoryview(bytes(view))
    return view


class _Pages:
    """The distinct pages of one checkpoint: an entry per pfn, a data slot per page that carried data.

    The slots are the pages of the records themselves, kept as they arrived:
    a record of new pages is held as it is, without a copy.  A later copy of a
    page overwrites its slot in place (its buffer copied once, if read-only),
    and the new pages of a record that also carries copies are copied into a
    buffer of their own, so nothing held is ever superseded.  A slot is
    numbered ``chunk << SLOT_BITS | page``.
    """

    def __init__(self) -> None:
        self.index: dict[int, int] = {}  # pfn to entry
        self.pfns = array("Q")  # entry to pfn
        self.types = bytearray()  # entry to its latest page type
        self.slots = array("q")  # entry to its data slot, or _NO_SLOT
        self.chunks: list[memoryview] = []  # the slots' buffers
        self.data_bytes = 0
        self.breaks: list[int] = []  # the first entry each add made: records handed out start there too

    @property
    def size(self) -> int:
        return self.data_bytes + ENTRY_COST * len(self.pfns)

    def _chunk(self, data: memoryview) -> int:
        self.chunks.append(data)
        self.data_bytes += data.nbytes
        return (len(self.chunks) - 1) << SLOT_BITS

    def add(self, record: PageData) -> None:
        pfns, types = record.pfns, bytes(record.types)
        carries = types.translate(_CARRIES_DATA)
        if not self.breaks or self.breaks[-1] != len(self.pfns):
            self.breaks.append(len(self.pfns))
        if self.index.keys().isdisjoint(pfns) and len(set(pfns)) == len(pfns) and all(carries):
            # Every page new and carrying data, as almost always: the record is held as it is.
            first, slot = len(self.pfns), self._chunk(_kept(record.data))
            self.index.update(zip(pfns, range(first, first + len(pfns)), strict=True))
            self.pfns.extend(pfns)
            self.types += types
            self.slots.extend(range(slot, slot + len(pfns)))
            return
        fresh = bytearray()  # this record's new pages, copied
        fresh_slot = len(self.chunks) << SLOT_BITS
        with memoryview(record.data) as data:
            at = 0
            for pfn, page_type, has_data in zip(pfns, types, carries, strict=True):
                entry = self.index.get(pfn)
                if entry is None:
                    entry = self.index[pfn] = len(self.pfns)
                    self.pfns.append(pfn)
                    self.types.append(page_type)
                    self.slots.append(_NO_SLOT)
                else:
                    self.types[entry] = page_type
                if not has_data:
                    continue
                page = data[at : at + PAGE_SIZE]
                at += PAGE_SIZE
                slot = self.slots[entry]
                if slot == _NO_SLOT:
                    self.slots[entry] = fresh_slot + len(fresh) // PAGE_SIZE
                    fresh += page
                elif slot >= fresh_slot:
                    offset = (slot - fresh_slot) * PAGE_SIZE
                    fresh[offset : offset + PAGE_SIZE] = page
                else:
                    self._writable(slot >> SLOT_BITS)
                    self._pages(slot, 1)[:] = page
        if fresh:
            self._chunk(memoryview(fresh))

    def _writable(self, chunk: int) -> None:
        if self.chunks[chunk].readonly:
            self.chunks[chunk] = memoryview(bytearray(self.chunks[chunk]))

    def _pages(self, slot: int, count: int) -> memoryview:
        """The ``count`` pages from ``slot`` on, in its chunk."""
        at = (slot & _PAGE_MASK) * PAGE_SIZE
        return self.chunks[slot >> SLOT_BITS][at : at + count * PAGE_SIZE]

    def records(self) -> list[PageData]:
        """The pages as PAGE_DATA records, in batches; their data are views of the slots where they can be."""
        out = []
        ends = [*self.breaks[1:], len(self.pfns)] if self.breaks else []
        batches = ((start, min(start + BATCH_SIZE, end)) for first, end in zip(self.breaks, ends, strict=True)
                   for start in range(first, end, BATCH_SIZE))
        for start, end in batches:
            types = bytes(self.types[start:end])
            slots = array("q", (s for s, has in zip(self.slots[start:end], types.translate(_CARRIES_DATA),
                                                     strict=True) if has))
            data: Buffer
            if slots and slots == array("q", range(slots[0], slots[0] + len(slots))):
                data = self._pages(slots[0], len(slots))
            else:
                data = b"".join(self._pages(s, 1) for s in slots)
            out.append(PageData(self.pfns[start:end], types, data))
        return out


class CheckpointBuffer:
    """One checkpoint's records on the secondary, from its first record to CHECKPOINT_END, bounded.

    The engine calls L{arrived} as each record comes off the link (before it
    waits in the inbox), L{delivered} as the machine reads it, L{add} for the
    records it keeps, and L{take} at CHECKPOINT_END.
    """

    def __init__(self, guest_pages: int | None) -> None:
        #: Pages at or beyond this are outside the guest; None when the guest's size is not known.
        self.guest_pages = guest_pages
        pages = host_pages() if guest_pages is None else guest_pages
        #: The most bytes held and waiting at once.
        self.limit = pages * (PAGE_SIZE + ENTRY_COST) + ALLOWANCE
        self._waiting = 0  # bytes of records arrived and not yet read by the machine
        self._drop_held()

    def _drop_held(self) -> None:
        self._records: list[Record | None] = []  # None: where the pages go
        self._pages = _Pages()
        self._others = 0

    @property
    def held(self) -> int:
        """Bytes held for the checkpoint under way."""
        return self._pages.size + self._others

    def arrived(self, record: Record) -> None:
        """A record came off the link: refuse it now if the checkpoint cannot take it.

        @raise PageOutsideGuest: a page beyond the guest's memory.
        @raise CheckpointTooLarge: it would take the checkpoint over its bound.
        """
        if isinstance(record, PageData) and self.guest_pages is not None and len(record.pfns):
            if max(record.pfns) >= self.guest_pages:
                outside = next(pfn for pfn in record.pfns if pfn >= self.guest_pages)
                guest = (f"pages 0x0-{self.guest_pages - 1:#x}" if self.guest_pages
                         else "it has no memory image")
                raise PageOutsideGuest(f"page outside the guest: PAGE_DATA carries pfn {outside:#x}, "
                                       f"and the guest's memory is {guest}")
        size = footprint(record)
        if self.held + self._waiting + size > self.limit:
            raise CheckpointTooLarge(
                f"checkpoint too large: over {self.limit >> 20} MiB sent before CHECKPOINT_END; this "
                f"secondary holds at most the guest's memory plus {ALLOWANCE >> 20} MiB per checkpoint")
        self._waiting += size

    def delivered(self, record: Record) -> None:
        """The machine read ``record`` (kept or not): it no longer waits."""
        self._waiting -= footprint(record)

    def add(self, record: Record) -> None:
        """Keep ``record`` for the checkpoint; a page already held is replaced by this copy."""
        if isinstance(record, PageData):
            if None not in self._records:
                self._records.append(None)
            self._pages.add(record)
        else:
            self._records.append(record)
            self._others += footprint(record)

    def take(self) -> list[Record]:
        """The checkpoint's records, each page once; the buffer is empty again."""
        pages = self._pages.records()
        records = [r for held in self._records for r in ([held] if held is not None else pages)]
        self._drop_held()
        return records

    def drop(self) -> None:
        """The peer is gone: forget what was held and what waited."""
        self._drop_held()
        self._waiting = 0
