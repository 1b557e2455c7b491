# -*- test-case-name: tests.engine.test_engines -*-
"""The guest engine colod runs today: a QEMU device model, and RAM as a memory image.

Without Xen there are no vCPUs or guest pages for libxc to move, so the
guest is what colod can drive and check: the device model QEMU over QMP
(colod.guest.device_model) and, when the domain has ``memory_image``, guest
RAM as a file-backed image that a writer process plays the guest on
(colod.guest.memory_image).  A domain without it sends no pages at all: a
disk-only domain.

The secondary's guest does not run between checkpoints (its device model
stays stopped; checkpoint-only replication, as Remus does): it is started
once, by take_over.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from twisted.internet.defer import Deferred, FirstError, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from colod.guest.device_model import DeviceModelEngine
from colod.guest.interfaces import IPrimaryGuest, ISecondaryGuest
from colod.guest.memory_image import MemoryImage, MemoryImageEngine, RunControl
from colod.protocol import (
    CheckpointDirtyPfnList,
    DomainHeader,
    EmulatorContext,
    ImageHeader,
    PageData,
    Record,
    StaticDataEnd,
)
from colod.role import Role

_T = TypeVar("_T")


class CheckpointDataError(Exception):
    """A checkpoint's records cannot be applied here (e.g. a page beyond this node's RAM)."""


@implementer(IPrimaryGuest, ISecondaryGuest)
class QemuGuest:
    """One domain's guest on one node: its device model and, optionally, its memory image."""

    def __init__(self, role: Role, device_model: DeviceModelEngine, memory_image: str | None,
                 clock: IReactorTime, timeout: float) -> None:
        self._primary = Role(role) is Role.PRIMARY
        self._device_model = device_model
        self._clock = clock
        self._timeout = timeout
        self._memory: MemoryImageEngine | None = None
        self._run: RunControl | None = None
        if memory_image is not None:
            self._memory = MemoryImageEngine(MemoryImage.open(memory_image))
            self._run = RunControl(memory_image)
        #: The guest's pages are pfns 0 to memory_pages - 1: none at all without a memory image.
        self.memory_pages = self._memory.image.pages if self._memory is not None else 0
        #: Seconds spent copying guest pages (building or applying PAGE_DATA).
        self.copy_seconds = 0.0
        memory = f"memory image {memory_image}" if memory_image else "no guest memory (disk-only)"
        self.description = f"{memory}; device model {device_model.policy}"

    def close(self) -> None:
        if self._memory is not None:
            self._memory.image.close()
        if self._run is not None:
            self._run.close()

    # -- running ------------------------------------------------------------

    def suspend(self) -> Deferred[None]:
        steps = []
        if self._run is not None:
            steps.append(self._run.suspend(self._clock, self._timeout))
        if self._primary:
            steps.append(self._device_model.suspend())
        return _all(steps)

    def resume(self) -> Deferred[None]:
        steps = [self._device_model.resume()] if self._primary else []
        if self._run is not None:
            self._run.resume()
        return _all(steps)

    # -- primary ------------------------------------------------------------

    def halt(self) -> Deferred[None]:
        return self.suspend()  # stopped, and nothing here resumes it

    def detach(self) -> Deferred[None]:
        return succeed(None)  # nothing outlives a checkpoint here: each one copies what it sends

    def copy_live(self, send: Callable[[Record], None]) -> Deferred[None]:
        return succeed(None)  # the memory image is copied whole in the first pause

    def first_records(self) -> Deferred[Sequence[Record]]:
        # What libxc writes first: an HVM guest's headers, its (here empty) static data.
        headers: list[Record] = [ImageHeader(), DomainHeader(), StaticDataEnd()]
        if self._memory is None:
            return succeed(headers)
        return succeed([*headers, *self._copied(self._memory.full_records)])

    def checkpoint_records(self, secondary_dirty: CheckpointDirtyPfnList) -> Deferred[Sequence[Record]]:
        memory = self._memory
        if memory is None:
            if secondary_dirty.pfns:
                raise CheckpointDataError(
                    f"the secondary reports {len(secondary_dirty.pfns)} dirty pages, but this guest "
                    "has no memory image")
            return succeed([])
        try:
            return succeed(self._copied(lambda: memory.checkpoint_records(secondary_dirty.pfns)))
        except ValueError as e:
            raise CheckpointDataError(f"the secondary's dirty page list: {e}") from None

    def emulator_records(self) -> Deferred[Sequence[Record]]:
        return self._device_model.save_device_state().addCallback(
            lambda state: [EmulatorContext(blob=state)])

    # -- secondary ----------------------------------------------------------

    def dirty_pfn_list(self) -> Deferred[CheckpointDirtyPfnList]:
        if self._memory is None:
            return succeed(CheckpointDirtyPfnList())
        return succeed(self._memory.dirty_pfn_list())

    def apply_checkpoint(self, records: Sequence[Record]) -> Deferred[None]:
        pages = [r for r in records if isinstance(r, PageData)]
        states = [r for r in records if isinstance(r, EmulatorContext)]
        if len(states) != 1:
            raise CheckpointDataError(f"a checkpoint needs one EMULATOR_CONTEXT, this one has {len(states)}")
        if pages:
            memory = self._memory
            if memory is None:
                raise CheckpointDataError(
                    "the checkpoint carries guest pages, but this guest has no memory image")
            # Check every record before storing any, so that a bad one leaves the image as it was.
            last = memory.image.pages - 1
            for record in pages:
                if len(record.pfns) and max(record.pfns) > last:
                    raise CheckpointDataError(f"page {max(record.pfns):#x} is beyond this node's "
                                              f"memory image (last page {last:#x})")

            def apply_pages() -> None:
                for record in pages:
                    memory.apply(record)

            self._copied(apply_pages)
        self._device_model.stage_device_state(bytes(states[0].blob))
        return succeed(None)

    def take_over(self) -> Deferred[None]:
        d = self._device_model.take_over()
        run = self._run
        if run is not None:
            d.addCallback(lambda _: run.resume())
        return d

    def _copied(self, work: Callable[[], _T]) -> _T:
        started = time.perf_counter()
        try:
            return work()
        finally:
            self.copy_seconds += time.perf_counter() - started


def _all(steps: list[Deferred[None]]) -> Deferred[None]:
    """All of ``steps`` (run side by side); fails with the first failure itself, not a FirstError."""
    return gatherResults(steps, consumeErrors=True).addCallbacks(lambda _: None, _first_failure)


def _first_failure(failure: Failure) -> Failure:
    """The failure of the step that failed first, from gatherResults' FirstError."""
    failure.trap(FirstError)
    error = failure.value
    assert isinstance(error, FirstError)
    return error.subFailure
