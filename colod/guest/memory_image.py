# -*- test-case-name: tests.guest.test_memory_image -*-
"""
Guest RAM as a file-backed image, for tests and benchmarks of the memory path.

Each side keeps the guest's RAM in a file of C{pages * 4096} bytes and a dirty
map next to it (C{path + ".dirty"}), one byte per page, both mmap'ed shared.
This is Xen's log-dirty bitmap in miniature: whoever plays the guest (any
process that opens the image) writes a page and then sets its byte; the
engine, playing the toolstack, takes and clears the set bytes at a checkpoint.

L{MemoryImageEngine} turns that into real migration-v2 records: PAGE_DATA from
the primary (its dirty pages plus the ones the secondary reports), and
CHECKPOINT_DIRTY_PFN_LIST from the secondary, so the whole memory path of the
protocol runs and the two images can be compared byte for byte.

A third file, the run control (C{path + ".run"}), lets the engine suspend
whoever plays the guest between two of its operations, as Xen pauses vCPUs at
an instruction boundary: its one byte asks the guest to pause, and an
C{flock} on it is held by the guest for each operation and by the engine while
the guest is suspended (L{RunControl}, L{MemoryImage.guest_turn}).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import time
from array import array
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import compress
from typing import Self

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from colod.protocol import CheckpointDirtyPfnList, PageData, PageType
from colod.protocol.pagedata import pages_with_data
from colod.protocol.wire import PAGE_SIZE, PAGE_TYPES_WITHOUT_DATA

#: Pages per PAGE_DATA record, as libxc batches them (MAX_BATCH_SIZE).
BATCH_SIZE = 1024

#: A dirty-map byte: a writer sets exactly this value after writing the page.
DIRTY = b"\x01"
_CLEAN = b"\x00"
_DATA_TYPES = frozenset(PageType) - PAGE_TYPES_WITHOUT_DATA
#: Page type to 1 if the type carries page data, else 0 (a C{bytes.translate} table).
_CARRIES_DATA = bytes(t in _DATA_TYPES for t in range(256))

#: The run-control byte: the engine asks the guest to stop before its next operation.
_PAUSE = b"\x01"
_RUN = b"\x00"
#: Seconds between two looks at the other side's run control, on either side.
POLL_INTERVAL = 0.0002


def dirty_map_path(path: str | os.PathLike[str]) -> str:
    """Where the dirty map of the image at C{path} lives."""
    return os.fspath(path) + ".dirty"


def run_control_path(path: str | os.PathLike[str]) -> str:
    """Where the run control of the image at C{path} lives."""
    return os.fspath(path) + ".run"


def _open_run_control(path: str | os.PathLike[str]) -> int:
    """
    A new open file description of the run control, created (running) if
    missing: C{flock} locks belong to open file descriptions, so each opener
    competes with every other, even within one process.
    """
    fd = os.open(run_control_path(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    if os.fstat(fd).st_size == 0:
        os.ftruncate(fd, len(_RUN))
    return fd


def _runs(pfns: Iterable[int]) -> Iterator[tuple[int, int]]:
    """C{[start, end)} ranges of consecutive pfns, so pages are copied a run at a time."""
    start = end = -1
    for pfn in pfns:
        if pfn != end:
            if start >= 0:
                yield start, end
            start = pfn
        end = pfn + 1
    if start >= 0:
        yield start, end


class MemoryImage:
    """One side's guest RAM and its dirty map, shared with any process that opens them."""

    def __init__(self, ram: mmap.mmap, dirty: mmap.mmap, run_control: int) -> None:
        self._ram = ram
        self._dirty = dirty
        self._run_control = run_control
        self.pages = len(dirty)

    @classmethod
    def create(cls, path: str | os.PathLike[str], pages: int) -> Self:
        """Make a zeroed (sparse) image of C{pages} pages, clean, and open it."""
        if pages <= 0:
            raise ValueError(f"an image needs at least one page, not {pages}")
        sizes = ((path, pages * PAGE_SIZE), (dirty_map_path(path), pages), (run_control_path(path), 1))
        for name, size in sizes:
            with open(name, "wb") as f:
                f.truncate(size)
        return cls.open(path)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Self:
        """Map an existing image; another process may have it open too.  A missing run control is made."""
        ram, dirty = _map(path), _map(dirty_map_path(path))
        if len(ram) != len(dirty) * PAGE_SIZE:
            problem = f"{os.fspath(path)}: {len(ram)} bytes of RAM but a dirty map of {len(dirty)} pages"
            ram.close()
            dirty.close()
            raise ValueError(problem)
        return cls(ram, dirty, _open_run_control(path))

    @contextmanager
    def guest_turn(self) -> Iterator[None]:
        """
        Hold the guest's run lock for one operation, once no pause is asked.

        The engine suspends by asking a pause and then taking the lock, so it
        waits for at most the operation under way.  The pause is checked again
        under the lock: a guest that was waiting for the lock when the engine
        asked leaves it to the engine.  The waits have no deadline (a guest is
        suspended for as long as the engine wants); signals interrupt them.
        """
        while True:
            while os.pread(self._run_control, 1, 0) == _PAUSE:
                time.sleep(POLL_INTERVAL)
            fcntl.flock(self._run_control, fcntl.LOCK_EX)
            try:
                if os.pread(self._run_control, 1, 0) != _PAUSE:
                    yield
                    return
            finally:
                fcntl.flock(self._run_control, fcntl.LOCK_UN)

    def write(self, pfn: int, data: bytes, offset: int = 0) -> None:
        """Write within one page, as the guest does, then mark the page dirty."""
        self._check(pfn)
        if offset < 0 or offset + len(data) > PAGE_SIZE:
            raise ValueError(f"{len(data)} bytes at offset {offset} do not fit in a page")
        at = pfn * PAGE_SIZE + offset
        self._ram[at : at + len(data)] = data
        # Data first, mark second: a checkpoint that clears the mark copies the page afterwards.
        self._dirty[pfn : pfn + 1] = DIRTY

    def read(self, pfn: int) -> bytes:
        """A copy of one page."""
        self._check(pfn)
        return self._ram[pfn * PAGE_SIZE : (pfn + 1) * PAGE_SIZE]

    def mark_dirty(self, pfns: Iterable[int]) -> None:
        """Mark pages dirty without writing them, as Xen ORs the secondary's dirty pfns into its bitmap."""
        pfns = array("Q", pfns)
        if pfns and max(pfns) >= self.pages:
            raise ValueError(f"pfn {max(pfns):#x} is beyond the last page ({self.pages - 1:#x})")
        for pfn in pfns:
            self._dirty[pfn] = DIRTY[0]

    def take_dirty(self) -> array:
        """
        The dirty pfns, ascending, with their marks cleared (log-dirty CLEAN).

        C{mmap.find} skips clean stretches in C, and each run of dirty pages
        costs two finds and one slice clear: O(runs) Python work on top of a
        C-speed scan, never a Python loop over all pages.
        """
        pfns = array("Q")
        start = self._dirty.find(DIRTY)
        while start >= 0:
            end = self._dirty.find(_CLEAN, start)
            if end < 0:
                end = self.pages
            self._dirty[start:end] = bytes(end - start)
            pfns.extend(range(start, end))
            start = self._dirty.find(DIRTY, end)
        return pfns

    def read_pages(self, pfns: Iterable[int]) -> bytes:
        """The pages of ascending C{pfns}, concatenated: one copy, made a run at a time."""
        with memoryview(self._ram) as ram:
            return b"".join(ram[start * PAGE_SIZE : end * PAGE_SIZE] for start, end in _runs(pfns))

    def load_pages(self, pfns: array, data: bytes | bytearray | memoryview) -> None:
        """
        Store concatenated pages at C{pfns} without marking them dirty: these
        are the primary's pages arriving, not the secondary guest's writes.
        """
        if len(data) != len(pfns) * PAGE_SIZE:
            raise ValueError(f"{len(data)} bytes of data for {len(pfns)} pages")
        if pfns and max(pfns) >= self.pages:
            raise ValueError(f"pfn {max(pfns):#x} is beyond the last page ({self.pages - 1:#x})")
        with memoryview(data) as source:
            at = 0
            for start, end in _runs(pfns):
                size = (end - start) * PAGE_SIZE
                self._ram[start * PAGE_SIZE : end * PAGE_SIZE] = source[at : at + size]
                at += size

    def close(self) -> None:
        """Unmap the image and close its run control (the files stay on disk)."""
        self._ram.close()
        self._dirty.close()
        os.close(self._run_control)

    def _check(self, pfn: int) -> None:
        if not 0 <= pfn < self.pages:
            raise ValueError(f"pfn {pfn:#x} is outside the image (0-{self.pages - 1:#x})")


def _map(path: str | os.PathLike[str]) -> mmap.mmap:
    with open(path, "r+b") as f:
        return mmap.mmap(f.fileno(), 0)


class SuspendTimeout(Exception):
    """The guest kept its run lock past the deadline: one of its operations hangs."""


class RunControl:
    """
    The engine's side of the run control: suspend and resume whoever plays the
    guest of the image at C{path}.  Never blocks, so it is safe on the reactor.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._fd = _open_run_control(path)

    def try_suspend(self) -> bool:
        """Ask the guest to pause; True once it has (the lock is ours), False while an operation runs."""
        os.pwrite(self._fd, _PAUSE, 0)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def resume(self) -> None:
        """Let the guest run again: withdraw the pause, then release the lock it waits on."""
        os.pwrite(self._fd, _RUN, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def suspend(self, clock: IReactorTime, timeout: float) -> Deferred[None]:
        """
        Poll L{try_suspend} on C{clock} until it succeeds.

        @raise SuspendTimeout: still running after C{timeout} seconds; the
            pause is withdrawn, so the guest runs on as if never asked.
        """

        async def poll() -> None:
            deadline = clock.seconds() + timeout
            while not self.try_suspend():
                if clock.seconds() >= deadline:
                    os.pwrite(self._fd, _RUN, 0)
                    raise SuspendTimeout(
                        f"the guest of {self.path} did not stop within {timeout:g} s: "
                        "an operation of its still holds the run lock"
                    )
                await deferLater(clock, POLL_INTERVAL, lambda: None)

        return Deferred.fromCoroutine(poll())

    def close(self) -> None:
        """Close the run control; a suspended guest is released (the lock goes with the file)."""
        os.close(self._fd)


class MemoryImageEngine:
    """
    The memory part of a checkpoint on one side, sans-IO.

    On the primary: L{full_records} once, then L{checkpoint_records} at each
    checkpoint.  On the secondary: L{apply} every PAGE_DATA, and
    L{dirty_pfn_list} when suspended, for the back channel.
    """

    def __init__(self, image: MemoryImage) -> None:
        self.image = image

    def full_records(self) -> list[PageData]:
        """Every page: the first copy.  Dirty marks are cleared first, so writes from now on are resent."""
        self.image.take_dirty()
        return self._records(array("Q", range(self.image.pages)))

    def checkpoint_records(self, extra_pfns: Iterable[int] = ()) -> list[PageData]:
        """
        The pages dirtied here since the last checkpoint, plus C{extra_pfns}
        (the secondary's dirty list: its copies of those pages must be restored).

        @raise ValueError: an extra pfn is beyond the image (Xen rejects pfn >= p2m_size).
        """
        self.image.mark_dirty(extra_pfns)
        return self._records(self.image.take_dirty())

    def apply(self, record: PageData) -> None:
        """Store the pages of a PAGE_DATA record; types without data (XTAB, BROKEN, XALLOC) store nothing."""
        if len(record.types) != len(record.pfns):
            raise ValueError(f"{len(record.pfns)} pfns but {len(record.types)} page types")
        pfns = record.pfns
        if pages_with_data(record.types) != len(pfns):
            pfns = array("Q", compress(pfns, record.types.translate(_CARRIES_DATA)))
        self.image.load_pages(pfns, record.data)

    def dirty_pfn_list(self) -> CheckpointDirtyPfnList:
        """The pages the secondary's guest dirtied since the last checkpoint, now cleared."""
        return CheckpointDirtyPfnList(self.image.take_dirty())

    def _records(self, pfns: array) -> list[PageData]:
        records = []
        for at in range(0, len(pfns), BATCH_SIZE):
            batch = pfns[at : at + BATCH_SIZE]
            types = bytes([PageType.NOTAB]) * len(batch)
            records.append(PageData(batch, types, self.image.read_pages(batch)))
        return records
