# -*- test-case-name: tests.protocol.test_golden -*-
"""
Record body readers: bytes of one body in, one typed record out, or a
L{StreamError} that says which field is wrong.

Contract: C{reader(body, at)} gets the body without its padding and the
stream offset of the body's first byte.  Readers check layouts and values
only; whether the record may appear where it did is L{colod.protocol.state}'s
business.  Where Xen's C code and its Python verifier disagree, the stricter
check wins unless the C code accepts something Xen itself writes (see
docs/protocol.md, "Checks").
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from enum import IntEnum

from .errors import StreamError
from .pagedata import pages_with_data, split_words
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
    Record,
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
    IHDR_OPT_BIG_ENDIAN,
    IHDR_VERSIONS,
    IMAGE_HEADER,
    LIBXL_IDENT,
    LIBXL_OPT_BIG_ENDIAN,
    LIBXL_OPT_LEGACY,
    LIBXL_VERSION,
    MSR_ENTRY,
    PAGE_SHIFT,
    PAGE_SIZE,
    PV_INFO,
    STREAM_HEADER,
    TSC_INFO,
    U32,
    U32_PAIR,
    CheckpointId,
    ColodType,
    EmulatorId,
    GuestType,
    LibxcType,
    LibxlType,
    ReplicationEndReason,
    u64_array,
)

Reader = Callable[[memoryview, int], Record]

#: Most items read from one EMULATOR_XENSTORE_DATA (entries), HVM_PARAMS or CPUID/MSR policy: each
#: becomes Python objects 10 to 40 times its size on the wire (a 128 MiB record of them, GiBs), and
#: Xen writes at most a few hundred.
ITEMS_MAX = 1024


def _fail(at: int, reason: str) -> StreamError:
    return StreamError(at, reason)


# --- fixed headers ---------------------------------------------------------


def read_stream_header(data: memoryview, at: int) -> StreamHeader:
    ident, version, options = STREAM_HEADER.unpack(data)
    if ident != LIBXL_IDENT:
        raise _fail(at, f"not a libxl stream: ident {ident:#018x}, expected {LIBXL_IDENT:#018x} ('LibxlFmt')")
    if version != LIBXL_VERSION:
        raise _fail(at + 8, f"libxl stream version {version}, only version {LIBXL_VERSION} exists")
    if options & LIBXL_OPT_BIG_ENDIAN:
        raise _fail(at + 12, "big-endian libxl stream: libxl cannot read these either")
    if options & ~(LIBXL_OPT_BIG_ENDIAN | LIBXL_OPT_LEGACY):
        raise _fail(at + 12, f"reserved libxl header option bits set: {options:#010x}")
    return StreamHeader(legacy=bool(options & LIBXL_OPT_LEGACY))


def read_image_header(data: memoryview, at: int) -> ImageHeader:
    marker, ident, version, options, res1, res2 = IMAGE_HEADER.unpack(data)
    if marker != IHDR_MARKER:
        raise _fail(at, f"libxc image header marker {marker:#018x}, expected all ones")
    if ident != IHDR_ID:
        raise _fail(at + 8, f"libxc image id {ident:#010x}, expected {IHDR_ID:#010x} ('XENF')")
    if version not in IHDR_VERSIONS:
        raise _fail(at + 12, f"libxc image version {version}, expected 2 or 3")
    if options & IHDR_OPT_BIG_ENDIAN:
        raise _fail(at + 16, "big-endian libxc stream: Xen cannot restore these")
    if options or res1 or res2:
        raise _fail(at + 16, "reserved bits set in the libxc image header")
    return ImageHeader(version=version)


def read_domain_header(data: memoryview, at: int) -> DomainHeader:
    guest, page_shift, res, major, minor = DOMAIN_HEADER.unpack(data)
    if not _known(guest, GuestType):
        raise _fail(at, f"unknown domain type {guest:#x} (1 = x86 PV, 2 = x86 HVM)")
    if page_shift != PAGE_SHIFT:
        raise _fail(at + 4, f"page shift {page_shift}, only {PAGE_SHIFT} (4 KiB pages) is supported")
    if res:
        raise _fail(at + 6, "reserved field of the domain header is not zero")
    return DomainHeader(guest_type=GuestType(guest), xen_major=major, xen_minor=minor)


# --- helpers ---------------------------------------------------------------


def _empty(cls: type) -> Reader:
    def read(body: memoryview, at: int) -> Record:
        if body:
            raise _fail(at, f"{type_name(cls)} must have an empty body, got {len(body)} bytes")
        return cls()

    return read


def _at_least(body: memoryview, at: int, size: int, name: str) -> None:
    if len(body) < size:
        raise _fail(at, f"{name} body is {len(body)} bytes, shorter than its {size}-byte header")


def _array_of(body: memoryview, item: struct.Struct) -> tuple[tuple[int, ...], ...]:
    return tuple(item.iter_unpack(body))


def _known(value: int, kind: type[IntEnum]) -> bool:
    return value in kind.__members__.values()


def _few(count: int, at: int, name: str, items: str) -> None:
    if count > ITEMS_MAX:
        raise _fail(at, f"{name} with {count} {items}, over colod's limit of {ITEMS_MAX}")


# --- libxl bodies ----------------------------------------------------------


def _emulator_header(body: memoryview, at: int, name: str) -> tuple[EmulatorId, int]:
    _at_least(body, at, U32_PAIR.size, name)
    emulator, index = U32_PAIR.unpack_from(body)
    if not _known(emulator, EmulatorId):
        raise _fail(at, f"{name}: unknown emulator id {emulator} (0 unknown, 1 qemu-trad, 2 qemu-upstream)")
    return EmulatorId(emulator), index


def read_emulator_xenstore_data(body: memoryview, at: int) -> EmulatorXenstoreData:
    name = "EMULATOR_XENSTORE_DATA"
    emulator, index = _emulator_header(body, at, name)
    strings = bytes(body[8:])
    if strings and not strings.endswith(b"\0"):
        raise _fail(at + len(body) - 1, f"{name}: last string is not NUL-terminated")
    _few(strings.count(b"\0") // 2, at + 8, name, "entries")
    parts = strings[:-1].split(b"\0") if strings else []
    if len(parts) % 2:
        raise _fail(at + 8, f"{name}: key {parts[-1]!r} has no value")
    entries = tuple(zip(parts[0::2], parts[1::2], strict=True))
    for key, _ in entries:
        if not key or key.startswith(b"/"):
            raise _fail(at + 8, f"{name}: key {key!r} must be a non-empty relative path")
    return EmulatorXenstoreData(emulator=emulator, index=index, entries=entries)


def read_emulator_context(body: memoryview, at: int) -> EmulatorContext:
    emulator, index = _emulator_header(body, at, "EMULATOR_CONTEXT")
    return EmulatorContext(emulator=emulator, index=index, blob=body[8:])


def read_checkpoint_state(body: memoryview, at: int) -> CheckpointState:
    name = "CHECKPOINT_STATE"
    if len(body) < U32.size:
        raise _fail(at, f"{name} body is {len(body)} bytes; libxl writes 4 (the control id)")
    if any(body[U32.size:]):
        raise _fail(at + U32.size, f"{name}: bytes after the control id must be zero")
    (ident,) = U32.unpack_from(body)
    if not _known(ident, CheckpointId):
        known = ", ".join(f"{i.value} {i.name}" for i in CheckpointId)
        raise _fail(at, f"{name}: unknown control id {ident} ({known})")
    return CheckpointState(CheckpointId(ident))


LIBXL_READERS: dict[int, Reader] = {
    LibxlType.END: _empty(End),
    LibxlType.LIBXC_CONTEXT: _empty(LibxcContext),
    LibxlType.EMULATOR_XENSTORE_DATA: read_emulator_xenstore_data,
    LibxlType.EMULATOR_CONTEXT: read_emulator_context,
    LibxlType.CHECKPOINT_END: _empty(CheckpointEnd),
    LibxlType.CHECKPOINT_STATE: read_checkpoint_state,
}


# --- libxc bodies ----------------------------------------------------------


def read_page_data(body: memoryview, at: int) -> PageData:
    name = "PAGE_DATA"
    _at_least(body, at, U32_PAIR.size, name)
    count, res = U32_PAIR.unpack_from(body)
    if count < 1:
        raise _fail(at, f"{name} with a count of 0; Xen expects at least one pfn")
    if res:
        raise _fail(at + 4, f"{name}: reserved field is {res:#x}, must be zero")
    end_of_words = 8 + 8 * count
    if len(body) < end_of_words:
        raise _fail(at, f"{name} of {len(body)} bytes is too short for {count} pfn words")
    pfns, types = split_words(body[8:end_of_words], at + 8)
    expected = end_of_words + PAGE_SIZE * pages_with_data(types)
    if len(body) != expected:
        raise _fail(
            at,
            f"{name} length {len(body)} does not match its {count} pfns: "
            f"expected {end_of_words} + {expected - end_of_words} bytes of pages",
        )
    return PageData(pfns=pfns, types=types, data=body[end_of_words:])


def read_x86_pv_info(body: memoryview, at: int) -> X86PvInfo:
    if len(body) != PV_INFO.size:
        raise _fail(at, f"X86_PV_INFO body must be {PV_INFO.size} bytes, got {len(body)}")
    width, levels, res1, res2 = PV_INFO.unpack(body)
    if width not in (4, 8):
        raise _fail(at, f"X86_PV_INFO: guest width {width}, expected 4 or 8")
    if levels not in (3, 4):
        raise _fail(at + 1, f"X86_PV_INFO: {levels} page-table levels, expected 3 or 4")
    if res1 or res2:
        raise _fail(at + 2, "X86_PV_INFO: reserved bytes are not zero")
    return X86PvInfo(guest_width=width, pt_levels=levels)


def read_x86_pv_p2m_frames(body: memoryview, at: int) -> X86PvP2mFrames:
    name = "X86_PV_P2M_FRAMES"
    _at_least(body, at, U32_PAIR.size, name)
    if len(body) % 8:
        raise _fail(at, f"{name} length {len(body)} is not a multiple of 8")
    start, end = U32_PAIR.unpack_from(body)
    return X86PvP2mFrames(start_pfn=start, end_pfn=end, p2m_pfns=u64_array(body[8:]))


def _pv_vcpu(cls: type) -> Reader:
    def read(body: memoryview, at: int) -> Record:
        name = type_name(cls)
        _at_least(body, at, U32_PAIR.size, name)
        vcpu, res = U32_PAIR.unpack_from(body)
        if res:
            raise _fail(at + 4, f"{name}: reserved field is not zero")
        return cls(vcpu_id=vcpu, context=body[8:])

    return read


def read_shared_info(body: memoryview, at: int) -> SharedInfo:
    if len(body) != PAGE_SIZE:
        raise _fail(at, f"SHARED_INFO must be exactly one page ({PAGE_SIZE} bytes), got {len(body)}")
    return SharedInfo(page=body)


def read_x86_tsc_info(body: memoryview, at: int) -> X86TscInfo:
    if len(body) != TSC_INFO.size:
        raise _fail(at, f"X86_TSC_INFO body must be {TSC_INFO.size} bytes, got {len(body)}")
    mode, khz, nsec, incarnation, res = TSC_INFO.unpack(body)
    if res:
        raise _fail(at + 20, "X86_TSC_INFO: reserved field is not zero")
    return X86TscInfo(mode=mode, khz=khz, nsec=nsec, incarnation=incarnation)


def read_hvm_context(body: memoryview, at: int) -> HvmContext:
    if not body:
        raise _fail(at, "HVM_CONTEXT is empty")
    return HvmContext(blob=body)


def read_hvm_params(body: memoryview, at: int) -> HvmParams:
    name = "HVM_PARAMS"
    _at_least(body, at, U32_PAIR.size, name)
    count, res = U32_PAIR.unpack_from(body)
    if res:
        raise _fail(at + 4, f"{name}: reserved field is not zero")
    if len(body) != 8 + HVM_PARAM.size * count:
        expected = 8 + HVM_PARAM.size * count
        raise _fail(at, f"{name} length {len(body)}, expected {expected} for {count} params")
    _few(count, at, name, "params")
    return HvmParams(params=_array_of(body[8:], HVM_PARAM))


def read_toolstack(body: memoryview, at: int) -> Record:
    raise _fail(at - 8, "TOOLSTACK records are obsolete; Xen's restore code rejects them")


def read_checkpoint_dirty_pfn_list(body: memoryview, at: int) -> CheckpointDirtyPfnList:
    if len(body) % 8:
        raise _fail(at, f"CHECKPOINT_DIRTY_PFN_LIST length {len(body)} is not a multiple of 8")
    return CheckpointDirtyPfnList(pfns=u64_array(body))


def _policy(cls: type, item: struct.Struct) -> Reader:
    def read(body: memoryview, at: int) -> Record:
        if not body or len(body) % item.size:
            raise _fail(at, f"{type_name(cls)} length {len(body)} is not a non-zero multiple of {item.size}")
        _few(len(body) // item.size, at, type_name(cls), "entries")
        return cls(_array_of(body, item))

    return read


LIBXC_READERS: dict[int, Reader] = {
    LibxcType.END: _empty(LibxcEnd),
    LibxcType.PAGE_DATA: read_page_data,
    LibxcType.X86_PV_INFO: read_x86_pv_info,
    LibxcType.X86_PV_P2M_FRAMES: read_x86_pv_p2m_frames,
    LibxcType.X86_PV_VCPU_BASIC: _pv_vcpu(X86PvVcpuBasic),
    LibxcType.X86_PV_VCPU_EXTENDED: _pv_vcpu(X86PvVcpuExtended),
    LibxcType.X86_PV_VCPU_XSAVE: _pv_vcpu(X86PvVcpuXsave),
    LibxcType.SHARED_INFO: read_shared_info,
    LibxcType.X86_TSC_INFO: read_x86_tsc_info,
    LibxcType.HVM_CONTEXT: read_hvm_context,
    LibxcType.HVM_PARAMS: read_hvm_params,
    LibxcType.TOOLSTACK: read_toolstack,
    LibxcType.X86_PV_VCPU_MSRS: _pv_vcpu(X86PvVcpuMsrs),
    LibxcType.VERIFY: _empty(Verify),
    LibxcType.CHECKPOINT: _empty(Checkpoint),
    LibxcType.CHECKPOINT_DIRTY_PFN_LIST: read_checkpoint_dirty_pfn_list,
    LibxcType.STATIC_DATA_END: _empty(StaticDataEnd),
    LibxcType.X86_CPUID_POLICY: _policy(X86CpuidPolicy, CPUID_LEAF),
    LibxcType.X86_MSR_POLICY: _policy(X86MsrPolicy, MSR_ENTRY),
}


# --- colod's additions (both namespaces) -----------------------------------


def read_heartbeat(body: memoryview, at: int) -> Heartbeat:
    if len(body) != HEARTBEAT.size:
        raise _fail(at, f"colod HEARTBEAT body must be {HEARTBEAT.size} bytes, got {len(body)}")
    sequence, sent_at = HEARTBEAT.unpack(body)
    return Heartbeat(sequence=sequence, sent_at_ns=sent_at)


def read_replication_end(body: memoryview, at: int) -> ReplicationEnd:
    name = "COLOD_REPLICATION_END"
    _at_least(body, at, U32_PAIR.size, name)
    code, length = U32_PAIR.unpack_from(body)
    text = body[U32_PAIR.size:]
    if length != len(text):
        raise _fail(at + 4, f"{name}: text length {length}, but {len(text)} bytes follow its header")
    if not _known(code, ReplicationEndReason):
        known = ", ".join(f"{r.value} {r.name}" for r in ReplicationEndReason)
        raise _fail(at, f"{name}: unknown reason code {code} ({known})")
    try:
        decoded = bytes(text).decode("utf-8")
    except UnicodeDecodeError as e:
        raise _fail(at + U32_PAIR.size + e.start, f"{name}: text is not valid UTF-8 ({e.reason})") from None
    return ReplicationEnd(reason=ReplicationEndReason(code), text=decoded)


COLOD_READERS: dict[int, Reader] = {
    ColodType.HEARTBEAT: read_heartbeat,
    ColodType.COLOD_REPLICATION_END: read_replication_end,
}
