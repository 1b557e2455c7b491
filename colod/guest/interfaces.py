"""The guest's own state in a checkpoint, behind one interface per side of a domain.

A checkpoint engine (colod.engine) moves the protocol; an IGuestEngine does
what touches the guest: stop and start it, produce the records that carry its
memory (inside LIBXC_CONTEXT) and its device model (EMULATOR_CONTEXT) on the
primary, and keep and finally load them on the secondary.  The shape follows
libxl's callbacks into libxc (xen-colo-protocol.md §3.1): a Xen engine that
drives ``libxl-save-helper`` fits behind the same methods, its records read
from the helper's stream instead of built here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from colod.protocol import CheckpointDirtyPfnList, Record


class IGuestEngine(Interface):
    """One domain's guest on one node, as a checkpoint sees it: what both sides do to it."""

    description = Attribute("str: what this engine drives and how it loads state, for logs and status")
    copy_seconds = Attribute("float: wall-clock seconds spent copying pages so far: a pause's share of it")

    def suspend() -> Deferred[None]:
        """Stop the guest: no vCPU runs and no device does I/O until resume."""

    def resume() -> Deferred[None]:
        """Let the guest run again."""


class IPrimaryGuest(IGuestEngine):
    """The primary's guest: it makes the records of each checkpoint."""

    def copy_live(send: Callable[[Record], None]) -> Deferred[None]:
        """Guest running, before the first checkpoint: hand to ``send``, as they are made, the
        first checkpoint's libxc records that can be made while the guest runs (a live copy of
        its memory, as libxc's); fires once the rest needs the guest suspended."""

    def first_records() -> Deferred[Sequence[Record]]:
        """Guest suspended: the rest of the first checkpoint's libxc stream after what
        L{copy_live} sent, up to its last record before CHECKPOINT (with it: from the image
        header, every page), dirty tracking reset."""

    def checkpoint_records(secondary_dirty: CheckpointDirtyPfnList) -> Deferred[Sequence[Record]]:
        """Guest suspended: the libxc body of a later checkpoint, with the secondary's dirty pages too."""

    def emulator_records() -> Deferred[Sequence[Record]]:
        """Guest suspended: the device model's records (EMULATOR_CONTEXT) of this checkpoint."""

    def detach() -> Deferred[None]:
        """No more checkpoints with this secondary: end what the replication holds (the Xen
        engine's save helper and its dirty tracking) before a guest suspended for a checkpoint
        runs again; fires once it is ended.  A later first checkpoint starts with copy_live."""

    def halt() -> Deferred[None]:
        """Stop the guest for good, outside any checkpoint: another node took it over
        (colod.engine.generation), and this copy must never run again."""


class ISecondaryGuest(IGuestEngine):
    """The secondary's copy of the guest: it keeps each complete checkpoint and runs the last one."""

    memory_pages = Attribute(
        "int | None: the guest's pages are pfns 0 to memory_pages - 1, so that the secondary refuses "
        "others as they arrive; None where the engine does not know (a Xen guest's pfns run past its "
        "memory size), and the secondary bounds a checkpoint by this host's memory instead")

    def dirty_pfn_list() -> Deferred[CheckpointDirtyPfnList]:
        """Guest suspended: the pages it dirtied since the last checkpoint, tracking reset."""

    def apply_checkpoint(records: Sequence[Record]) -> Deferred[None]:
        """Make one complete checkpoint (libxc body and emulator records) the state to fail over to.

        Called only once the checkpoint has arrived whole, so a checkpoint cut
        short is never half-applied.
        """

    def take_over() -> Deferred[None]:
        """Failover: bring the guest to the last applied checkpoint and run it."""
