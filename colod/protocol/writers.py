# -*- test-case-name: tests.protocol.test_golden -*-
"""
Record writers: one typed record in, the exact bytes Xen would write out.

Contract: C{write_record(record)} returns the wire form as a list of buffers
(record header, body parts, zero padding) so that bulk data such as page
contents reaches the transport without being copied.  A writer refuses,
with C{ValueError}, any record a reader would refuse, so that whatever the
encoder emits decodes to the same record; the encoder turns that into a
L{StreamError}.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import Any

from .pagedata import join_words, pages_with_data
from .records import (
    Checkpoint,
    CheckpointDirtyPfnList,
    CheckpointEnd,
    CheckpointState,
    DomainHeader,
    EmulatorContext,
    EmulatorXenstoreData,
    End,
    Heartbeat,
    HvmContext,
    HvmParams,
    ImageHeader,
    LibxcContext,
    LibxcEnd,
    PageData,
    ReplicationEnd,
    SharedInfo,
    StaticDataEnd,
    StreamHeader,
    Verify,
    X86CpuidPolicy,
    X86MsrPolicy,
    X86PvInfo,
    X86PvP2mFrames,
    X86PvVcpuBasic,
    X86PvVcpuExtended,
    X86PvVcpuMsrs,
    X86PvVcpuXsave,
    X86TscInfo,
    type_name,
)
from .wire import (
    CPUID_LEAF,
    DOMAIN_HEADER,
    HEARTBEAT,
    HVM_PARAM,
    IHDR_ID,
    IHDR_MARKER,
    IHDR_VERSIONS,
    IMAGE_HEADER,
    LIBXL_IDENT,
    LIBXL_OPT_LEGACY,
    LIBXL_VERSION,
    MSR_ENTRY,
    PAGE_SHIFT,
    PAGE_SIZE,
    PV_INFO,
    REC_LENGTH_MAX,
    RECORD_HEADER,
    STREAM_HEADER,
    TSC_INFO,
    U32,
    U32_PAIR,
    CheckpointId,
    EmulatorId,
    GuestType,
    ReplicationEndReason,
    padding,
    u64_bytes,
)

Chunk = bytes | bytearray | memoryview
#: A record's body writer: it takes records of the type it is filed under.
Body = Callable[[Any], Sequence[Chunk]]

_ZEROS = bytes(8)


def _check(condition: bool, reason: str) -> None:
    if not condition:
        raise ValueError(reason)


def _member(value: int, kind: type[IntEnum], what: str) -> None:
    _check(value in kind.__members__.values(), f"{what} {value!r} is not a {kind.__name__}")


# --- fixed headers ---------------------------------------------------------


def _stream_header(header: StreamHeader) -> list[Chunk]:
    options = LIBXL_OPT_LEGACY if header.legacy else 0
    return [STREAM_HEADER.pack(LIBXL_IDENT, LIBXL_VERSION, options)]


def _image_header(header: ImageHeader) -> list[Chunk]:
    _check(header.version in IHDR_VERSIONS, f"libxc image version {header.version} is not 2 or 3")
    return [IMAGE_HEADER.pack(IHDR_MARKER, IHDR_ID, header.version, 0, 0, 0)]


def _domain_header(header: DomainHeader) -> list[Chunk]:
    _member(header.guest_type, GuestType, "domain type")
    return [DOMAIN_HEADER.pack(header.guest_type, PAGE_SHIFT, 0, header.xen_major, header.xen_minor)]


_HEADERS: dict[type, Callable[[Any], list[Chunk]]] = {
    StreamHeader: _stream_header,
    ImageHeader: _image_header,
    DomainHeader: _domain_header,
}


# --- record bodies ---------------------------------------------------------


def _empty(record: object) -> Sequence[Chunk]:
    return ()


def _emulator_header(emulator: int, index: int) -> bytes:
    _member(emulator, EmulatorId, "emulator id")
    return U32_PAIR.pack(emulator, index)


def _emulator_xenstore_data(record: EmulatorXenstoreData) -> Sequence[Chunk]:
    strings = []
    for key, value in record.entries:
        _check(bool(key) and not key.startswith(b"/"), f"xenstore key {key!r} is not a relative path")
        _check(b"\0" not in key and b"\0" not in value, "xenstore keys and values cannot contain NUL")
        strings += [key, b"\0", value, b"\0"]
    return [_emulator_header(record.emulator, record.index), *strings]


def _emulator_context(record: EmulatorContext) -> Sequence[Chunk]:
    return [_emulator_header(record.emulator, record.index), record.blob]


def _checkpoint_state(record: CheckpointState) -> Sequence[Chunk]:
    # libxl writes body_length = sizeof(struct) = 4; generic padding adds 4 zeros.
    _member(record.id, CheckpointId, "checkpoint control id")
    return [U32.pack(record.id)]


def _page_data(record: PageData) -> Sequence[Chunk]:
    count = len(record.pfns)
    _check(count > 0, "PAGE_DATA needs at least one pfn")
    words = join_words(record.pfns, record.types)
    expected = PAGE_SIZE * pages_with_data(record.types)
    _check(len(record.data) == expected, f"PAGE_DATA has {len(record.data)} bytes of data, needs {expected}")
    return [U32_PAIR.pack(count, 0), words, record.data]


def _x86_pv_info(record: X86PvInfo) -> Sequence[Chunk]:
    _check(record.guest_width in (4, 8), f"X86_PV_INFO guest width {record.guest_width} is not 4 or 8")
    _check(record.pt_levels in (3, 4), f"X86_PV_INFO levels {record.pt_levels} is not 3 or 4")
    return [PV_INFO.pack(record.guest_width, record.pt_levels, 0, 0)]


def _x86_pv_p2m_frames(record: X86PvP2mFrames) -> Sequence[Chunk]:
    return [U32_PAIR.pack(record.start_pfn, record.end_pfn), u64_bytes(record.p2m_pfns)]


def _pv_vcpu(record: X86PvVcpuBasic) -> Sequence[Chunk]:
    return [U32_PAIR.pack(record.vcpu_id, 0), record.context]


def _shared_info(record: SharedInfo) -> Sequence[Chunk]:
    _check(len(record.page) == PAGE_SIZE, "SHARED_INFO must be exactly one page")
    return [record.page]


def _x86_tsc_info(record: X86TscInfo) -> Sequence[Chunk]:
    return [TSC_INFO.pack(record.mode, record.khz, record.nsec, record.incarnation, 0)]


def _hvm_context(record: HvmContext) -> Sequence[Chunk]:
    _check(len(record.blob) > 0, "HVM_CONTEXT cannot be empty")
    return [record.blob]


def _hvm_params(record: HvmParams) -> Sequence[Chunk]:
    return [U32_PAIR.pack(len(record.params), 0), *(HVM_PARAM.pack(*pair) for pair in record.params)]


def _dirty_pfn_list(record: CheckpointDirtyPfnList) -> Sequence[Chunk]:
    # Exactly 8 header bytes and 8 bytes per pfn: not Xen 4.18's 16-byte header.
    return [u64_bytes(record.pfns)]


def _policy(item: struct.Struct) -> Body:
    def write(record: X86CpuidPolicy | X86MsrPolicy) -> Sequence[Chunk]:
        items = record.leaves if isinstance(record, X86CpuidPolicy) else record.entries
        _check(len(items) > 0, f"{type_name(type(record))} cannot be empty")
        return [item.pack(*fields) for fields in items]

    return write


def _heartbeat(record: Heartbeat) -> Sequence[Chunk]:
    return [HEARTBEAT.pack(record.sequence, record.sent_at_ns)]


def _replication_end(record: ReplicationEnd) -> Sequence[Chunk]:
    _member(record.reason, ReplicationEndReason, "replication end reason")
    text = record.text.encode("utf-8")  # UnicodeEncodeError is a ValueError
    return [U32_PAIR.pack(record.reason, len(text)), text]


_BODIES: dict[type[Any], Body] = {
    End: _empty,
    LibxcContext: _empty,
    EmulatorXenstoreData: _emulator_xenstore_data,
    EmulatorContext: _emulator_context,
    CheckpointEnd: _empty,
    CheckpointState: _checkpoint_state,
    LibxcEnd: _empty,
    PageData: _page_data,
    X86PvInfo: _x86_pv_info,
    X86PvP2mFrames: _x86_pv_p2m_frames,
    X86PvVcpuBasic: _pv_vcpu,
    X86PvVcpuExtended: _pv_vcpu,
    X86PvVcpuXsave: _pv_vcpu,
    X86PvVcpuMsrs: _pv_vcpu,
    SharedInfo: _shared_info,
    X86TscInfo: _x86_tsc_info,
    HvmContext: _hvm_context,
    HvmParams: _hvm_params,
    Verify: _empty,
    Checkpoint: _empty,
    CheckpointDirtyPfnList: _dirty_pfn_list,
    StaticDataEnd: _empty,
    X86CpuidPolicy: _policy(CPUID_LEAF),
    X86MsrPolicy: _policy(MSR_ENTRY),
    Heartbeat: _heartbeat,
    ReplicationEnd: _replication_end,
}


def write_record(record: object) -> list[Chunk]:
    """
    The wire form of C{record}: a fixed header, or record header + body + padding.

    @raise ValueError: the record cannot be written as it is (bad field value,
        inconsistent page data, body over 128 MiB, or a type colod cannot write).
    """
    kind = type(record)
    if kind in _HEADERS:
        return _HEADERS[kind](record)
    if kind not in _BODIES:
        raise ValueError(f"{kind.__name__} cannot be written to a stream")
    try:
        body = _BODIES[kind](record)
    except struct.error as e:
        raise ValueError(f"{type_name(kind)}: field out of range: {e}") from None
    length = sum(len(chunk) for chunk in body)
    _check(length <= REC_LENGTH_MAX, f"{type_name(kind)} body of {length} bytes exceeds 128 MiB")
    chunks: list[Chunk] = [RECORD_HEADER.pack(kind.TYPE, length), *body]
    pad = padding(length)
    if pad:
        chunks.append(_ZEROS[:pad])
    return chunks
