# -*- test-case-name: tests.protocol.test_golden -*-
"""
The typed records of a checkpoint stream: one frozen class per Xen record
type (plus the three fixed headers and colod's two records).

Records are plain values.  Layout knowledge lives in the readers and writers;
what may follow what lives in L{colod.protocol.state}.  Bulk payloads (page
contents, device-model blobs) are kept as the buffers they arrived in, so a
decoded PAGE_DATA costs one pfn array and one memoryview, never an object per
page.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from typing import Any, ClassVar

import attrs

from .wire import (
    CheckpointId,
    ColodType,
    EmulatorId,
    GuestType,
    LibxcType,
    LibxlType,
    Namespace,
    ReplicationEndReason,
)

#: Bulk data: a decoded record holds a memoryview into the received bytes.
Buffer = bytes | bytearray | memoryview


def _pfn_array(pfns: Iterable[int]) -> array:
    """Keep an existing array('Q') as is; build one from anything else."""
    if isinstance(pfns, array) and pfns.typecode == "Q":
        return pfns
    return array("Q", pfns)


# --- headers (no record framing) -------------------------------------------


@attrs.frozen
class StreamHeader:
    """The 16-byte big-endian libxl header that opens the main channel."""

    NAMESPACE: ClassVar[Namespace] = Namespace.LIBXL
    TYPE: ClassVar[None] = None
    #: Options bit 1: the stream was made by convert-legacy-stream.
    legacy: bool = False


@attrs.frozen
class ImageHeader:
    """The 24-byte big-endian libxc image header, after the first LIBXC_CONTEXT."""

    NAMESPACE: ClassVar[Namespace] = Namespace.LIBXC
    TYPE: ClassVar[None] = None
    version: int = 3


@attrs.frozen
class DomainHeader:
    """The 16-byte libxc domain header that follows the image header."""

    NAMESPACE: ClassVar[Namespace] = Namespace.LIBXC
    TYPE: ClassVar[None] = None
    guest_type: GuestType = GuestType.X86_HVM
    xen_major: int = 4
    xen_minor: int = 17


# --- libxl records ---------------------------------------------------------


@attrs.frozen
class End:
    """libxl END: the last record of a non-checkpointed stream."""

    NAMESPACE: ClassVar[Namespace] = Namespace.LIBXL
    TYPE: ClassVar[int] = LibxlType.END


@attrs.frozen
class LibxcContext:
    """The bytes that follow belong to the libxc stream."""

    NAMESPACE: ClassVar[Namespace] = Namespace.LIBXL
    TYPE: ClassVar[int] = LibxlType.LIBXC_CONTEXT


@attrs.frozen
class EmulatorXenstoreData:
    """Device-model xenstore keys (relative paths) and their values."""

    NAMESPACE: ClassVar[Namespace] = Namespace.LIBXL
    TYPE: ClassVar[int] = LibxlType.EMULATOR_XENSTORE_DATA
    emulator: EmulatorId = EmulatorId.QEMU_UPSTREAM
    index: int = 0
    entries: tuple[tuple[bytes, bytes], ...] = ()


@attrs.frozen
class EmulatorContext:
    """The device model's saved state (what xen-save-devices-state wrote)."""

    NAMESPACE: ClassVar[Namespace] = Namespace.LIBXL
    TYPE: ClassVar[int] = LibxlType.EMULATOR_CONTEXT
    emulator: EmulatorId = EmulatorId.QEMU_UPSTREAM
    index: int = 0
    blob: Buffer = b""


@attrs.frozen
class CheckpointEnd:
    """Ends the libxl part of one checkpoint."""

    NAMESPACE: ClassVar[Namespace] = Namespace.LIBXL
    TYPE: ClassVar[int] = LibxlType.CHECKPOINT_END


@attrs.frozen
class CheckpointState:
    """COLO lock-step message: NEW on the main channel, SVM_* on the back channel."""

    NAMESPACE: ClassVar[Namespace] = Namespace.LIBXL
    TYPE: ClassVar[int] = LibxlType.CHECKPOINT_STATE
    id: CheckpointId


# --- libxc records ---------------------------------------------------------


@attrs.frozen
class LibxcEnd:
    """libxc END: the memory stream is complete."""

    NAMESPACE: ClassVar[Namespace] = Namespace.LIBXC
    TYPE: ClassVar[int] = LibxcType.END


@attrs.frozen
class PageData:
    """
    A batch of guest pages.

    @ivar pfns: the frame numbers (type and reserved bits stripped).
    @ivar types: one L{PageType} value per pfn, as bytes.
    @ivar data: the page contents, 4096 bytes for each pfn whose type carries
        data, concatenated in pfn order; one buffer, never copied per page.
    """

    NAMESPACE: ClassVar[Namespace] = Namespace.LIBXC
    TYPE: ClassVar[int] = LibxcType.PAGE_DATA
    pfns: array = attrs.field(converter=_pfn_array)
    types: bytes = attrs.field(converter=bytes)
    data: Buffer


@attrs.frozen
class X86PvInfo:
    NAMESPACE: ClassVar[Namespace] = Namespace.LIBXC
    TYPE: ClassVar[int] = LibxcType.X86_PV_INFO
    GUEST: ClassVar[GuestType] = GuestType.X86_PV
    guest_width: int
    pt_levels: int


@attrs.frozen
class X86PvP2mFrames:
    NAMESPACE: ClassVar[Namespace] = Namespace.LIBXC
    TYPE: ClassVar[int] = LibxcType.X86_PV_P2M_FRAMES
    GUEST: ClassVar[GuestType] = GuestType.X86_PV
    start_pfn: int
    end_pfn: int
    p2m_pfns: array = attrs.field(converter=_pfn_array)


@attrs.frozen
class _X86PvVcpu:
    """Common shape of the four X86_PV_VCPU_* records: a vcpu id and a blob."""

    NAMESPACE: ClassVar[Namespace] = Namespace.LIBXC
    GUEST: ClassVar[GuestType] = GuestType.X86_PV
    vcpu_id: int
    context: Buffer = b""


@attrs.frozen
class X86PvVcpuBasic(_X86PvVcpu):
    TYPE: ClassVar[int] = LibxcType.X86_PV_VCPU_BASIC


@attrs.frozen
class X86PvVcpuExtended(_X86PvVcpu):
    TYPE: ClassVar[int] = LibxcType.X86_PV_VCPU_EXTENDED


@attrs.frozen
class X86PvVcpuXsave(_X86PvVcpu):
    TYPE: ClassVar[int] = LibxcType.X86_PV_VCPU_XSAVE


@attrs.frozen
class X86PvVcpuMsrs(_X86PvVcpu):
    TYPE: ClassVar[int] = LibxcType.X86_PV_VCPU_MSRS


@attrs.frozen
class SharedInfo:
    NAMESPACE: ClassVar[Namespace] = Namespace.LIBXC
    TYPE: ClassVar[int] = LibxcType.SHARED_INFO
    GUEST: ClassVar[GuestType] = GuestType.X86_PV
    page: Buffer


@attrs.frozen
class X86TscInfo:
    NAMESPACE: ClassVar[Namespace] = Namespace.LIBXC
    TYPE: ClassVar[int] = LibxcType.X86_TSC_INFO
    mode: int
    khz: int
    nsec: int
    incarnation: int


@attrs.frozen
class HvmContext:
    NAMESPACE: ClassVar[Namespace] = Namespace.LIBXC
    TYPE: ClassVar[int] = LibxcType.HVM_CONTEXT
    GUEST: ClassVar[GuestType] = GuestType.X86_HVM
    blob: Buffer


@attrs.frozen
class HvmParams:
    NAMESPACE: ClassVar[Namespace] = Namespace.LIBXC
    TYPE: ClassVar[int] = LibxcType.HVM_PARAMS
    GUEST: ClassVar[GuestType] = GuestType.X86_HVM
    #: (index, value) pairs.
    params: tuple[tuple[int, int], ...] = attrs.field(converter=tuple, default=())


@attrs.frozen
class Verify:
    """Debug: the restorer compares the pages that follow instead of loading them."""

    NAMESPACE: ClassVar[Namespace] = Namespace.LIBXC
    TYPE: ClassVar[int] = LibxcType.VERIFY


@attrs.frozen
class Checkpoint:
    """Everything before is a consistent VM state; control returns to libxl."""

    NAMESPACE: ClassVar[Namespace] = Namespace.LIBXC
    TYPE: ClassVar[int] = LibxcType.CHECKPOINT


@attrs.frozen
class CheckpointDirtyPfnList:
    """Back channel only: pfns the secondary dirtied since the last checkpoint."""

    NAMESPACE: ClassVar[Namespace] = Namespace.LIBXC
    TYPE: ClassVar[int] = LibxcType.CHECKPOINT_DIRTY_PFN_LIST
    pfns: array = attrs.field(converter=_pfn_array, factory=lambda: array("Q"))


@attrs.frozen
class StaticDataEnd:
    NAMESPACE: ClassVar[Namespace] = Namespace.LIBXC
    TYPE: ClassVar[int] = LibxcType.STATIC_DATA_END


@attrs.frozen
class X86CpuidPolicy:
    NAMESPACE: ClassVar[Namespace] = Namespace.LIBXC
    TYPE: ClassVar[int] = LibxcType.X86_CPUID_POLICY
    #: (leaf, subleaf, eax, ebx, ecx, edx) per xen_cpuid_leaf_t.
    leaves: tuple[tuple[int, int, int, int, int, int], ...] = attrs.field(converter=tuple)


@attrs.frozen
class X86MsrPolicy:
    NAMESPACE: ClassVar[Namespace] = Namespace.LIBXC
    TYPE: ClassVar[int] = LibxcType.X86_MSR_POLICY
    #: (idx, flags, val) per xen_msr_entry_t.
    entries: tuple[tuple[int, int, int], ...] = attrs.field(converter=tuple)


@attrs.frozen
class SkippedRecord:
    """An optional libxc record colod does not know; Xen skips it, and so do we."""

    NAMESPACE: ClassVar[Namespace] = Namespace.LIBXC
    type: int
    length: int


# --- colod's additions -----------------------------------------------------


@attrs.frozen
class Heartbeat:
    """colod liveness record; legal at any record boundary, in either namespace."""

    NAMESPACE: ClassVar[None] = None
    TYPE: ClassVar[int] = ColodType.HEARTBEAT
    sequence: int
    sent_at_ns: int = 0


@attrs.frozen
class ReplicationEnd:
    """
    colod: the sender ends replication on purpose, so that the receiver can
    tell it from a crash (and, after SHUTDOWN, not take over).  Legal wherever
    a heartbeat is; nothing may follow it on its channel.
    """

    NAMESPACE: ClassVar[None] = None
    TYPE: ClassVar[int] = ColodType.COLOD_REPLICATION_END
    reason: ReplicationEndReason
    text: str = ""


Record = (
    StreamHeader | ImageHeader | DomainHeader
    | End | LibxcContext | EmulatorXenstoreData | EmulatorContext | CheckpointEnd | CheckpointState
    | LibxcEnd | PageData | X86PvInfo | X86PvP2mFrames | X86PvVcpuBasic | X86PvVcpuExtended
    | X86PvVcpuXsave | X86PvVcpuMsrs | SharedInfo | X86TscInfo | HvmContext | HvmParams | Verify
    | Checkpoint | CheckpointDirtyPfnList | StaticDataEnd | X86CpuidPolicy | X86MsrPolicy
    | SkippedRecord | Heartbeat | ReplicationEnd
)


_HEADER_NAMES = {StreamHeader: "STREAM_HEADER", ImageHeader: "IMAGE_HEADER", DomainHeader: "DOMAIN_HEADER"}
_TYPE_TABLES = {Namespace.LIBXL: LibxlType, Namespace.LIBXC: LibxcType, None: ColodType}


def type_name(kind: type[Any]) -> str:
    """Xen's name for a record class's type (e.g. C{PAGE_DATA}), or the header's name (a record class
    has NAMESPACE and TYPE)."""
    if kind in _HEADER_NAMES:
        return _HEADER_NAMES[kind]
    return _TYPE_TABLES[kind.NAMESPACE](kind.TYPE).name


def record_name(record: object) -> str:
    """L{type_name} of a record; unknown optional records are named by number."""
    if isinstance(record, SkippedRecord):
        return f"OPTIONAL_{record.type:#010x}"
    return type_name(type(record))
