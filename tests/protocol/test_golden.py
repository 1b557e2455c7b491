"""
Golden vectors: every record type of both namespaces, written by hand from
Xen's headers and docs/protocol.md, checked in both directions.
"""

from __future__ import annotations

import pytest

from colod.protocol import (
    Channel,
    Checkpoint,
    CheckpointDirtyPfnList,
    CheckpointEnd,
    CheckpointId,
    CheckpointState,
    Decoder,
    DomainHeader,
    EmulatorContext,
    EmulatorId,
    EmulatorXenstoreData,
    Encoder,
    End,
    GuestType,
    Heartbeat,
    HvmContext,
    HvmParams,
    ImageHeader,
    LibxcContext,
    LibxcEnd,
    PageData,
    PageType,
    Record,
    ReplicationEnd,
    ReplicationEndReason,
    SharedInfo,
    SkippedRecord,
    StaticDataEnd,
    StreamError,
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
)

from .streams import drain

_HVM_STATIC = [StreamHeader(), LibxcContext(), ImageHeader(3), DomainHeader(GuestType.X86_HVM, 4, 17)]
_HVM = [*_HVM_STATIC, StaticDataEnd()]
_PV = [StreamHeader(), LibxcContext(), ImageHeader(3), DomainHeader(GuestType.X86_PV, 4, 17), StaticDataEnd()]
_CHECKPOINT = [*_HVM, Checkpoint()]
_READY = CheckpointState(CheckpointId.SVM_READY)
_RESUMED = CheckpointState(CheckpointId.SVM_RESUMED)
_SUSPENDED = CheckpointState(CheckpointId.SVM_SUSPENDED)
_BYE = ReplicationEnd(ReplicationEndReason.SHUTDOWN, "colod stopping")

#: Where a record is checked: (channel, the records that lead there).
POSITIONS: dict[str, tuple[Channel, list[Record]]] = {
    "start": (Channel.MAIN, []),
    "libxl": (Channel.MAIN, [StreamHeader()]),
    "image-header": (Channel.MAIN, [StreamHeader(), LibxcContext()]),
    "domain-header": (Channel.MAIN, [StreamHeader(), LibxcContext(), ImageHeader(3)]),
    "hvm-static": (Channel.MAIN, _HVM_STATIC),
    "hvm": (Channel.MAIN, _HVM),
    "pv": (Channel.MAIN, _PV),
    "checkpoint": (Channel.MAIN, _CHECKPOINT),
    "await-new": (Channel.MAIN, [*_CHECKPOINT, CheckpointEnd()]),
    "back-start": (Channel.BACK, []),
    "back-ready": (Channel.BACK, [_READY]),
    "back-resumed": (Channel.BACK, [_READY, _RESUMED]),
    "back-suspended": (Channel.BACK, [_READY, _RESUMED, _SUSPENDED]),
    "ended": (Channel.MAIN, [StreamHeader(), _BYE]),
    "back-ended": (Channel.BACK, [_BYE]),
}

_PAGE_11 = "11" * 4096

GOLDEN: list[tuple[str, Record, str]] = [
    # libxl stream header: ident "LibxlFmt", version 2, options; big-endian.
    ("start", StreamHeader(), "4c6962786c466d74 00000002 00000000"),
    ("start", StreamHeader(legacy=True), "4c6962786c466d74 00000002 00000002"),
    # libxl records: little-endian {type, length}, body, zero padding to 8.
    ("libxl", End(), "00000000 00000000"),
    ("libxl", LibxcContext(), "01000000 00000000"),
    ("libxl", EmulatorXenstoreData(EmulatorId.QEMU_UPSTREAM, 0, ((b"a/b", b"1"),)),
     "02000000 0e000000 02000000 00000000 612f6200 3100 0000"),
    ("libxl", EmulatorXenstoreData(EmulatorId.QEMU_UPSTREAM, 0, ()), "02000000 08000000 02000000 00000000"),
    ("libxl", EmulatorContext(EmulatorId.QEMU_UPSTREAM, 0, b"QEVM"),
     "03000000 0c000000 02000000 00000000 5145564d 00000000"),
    ("checkpoint", CheckpointEnd(), "04000000 00000000"),
    # CHECKPOINT_STATE: body length 4, then 4 bytes of padding: 16 bytes.
    ("await-new", CheckpointState(CheckpointId.NEW), "05000000 04000000 00000000 00000000"),
    ("back-start", _READY, "05000000 04000000 02000000 00000000"),
    ("back-ready", _RESUMED, "05000000 04000000 03000000 00000000"),
    ("back-resumed", _SUSPENDED, "05000000 04000000 01000000 00000000"),
    # libxc image header (big-endian) and domain header (little-endian).
    ("image-header", ImageHeader(3), "ffffffffffffffff 58454e46 00000003 0000 0000 00000000"),
    ("image-header", ImageHeader(2), "ffffffffffffffff 58454e46 00000002 0000 0000 00000000"),
    ("domain-header", DomainHeader(GuestType.X86_HVM, 4, 17), "02000000 0c00 0000 04000000 11000000"),
    ("domain-header", DomainHeader(GuestType.X86_PV, 4, 21), "01000000 0c00 0000 04000000 15000000"),
    # libxc records 0x00-0x12.
    ("hvm", LibxcEnd(), "00000000 00000000"),
    ("hvm", PageData([0x1234, 0x5], bytes([PageType.NOTAB, PageType.XTAB]), bytes([0x11]) * 4096),
     "01000000 18100000 02000000 00000000 3412000000000000 05000000000000f0" + _PAGE_11),
    ("pv", X86PvInfo(guest_width=8, pt_levels=4), "02000000 08000000 08 04 0000 00000000"),
    ("pv", X86PvP2mFrames(0, 0x3FF, [0x1234]), "03000000 10000000 00000000 ff030000 3412000000000000"),
    ("pv", X86PvVcpuBasic(1, b"ctx!"), "04000000 0c000000 01000000 00000000 63747821 00000000"),
    ("pv", X86PvVcpuExtended(1, b"ctx!"), "05000000 0c000000 01000000 00000000 63747821 00000000"),
    ("pv", X86PvVcpuXsave(2, b""), "06000000 08000000 02000000 00000000"),
    ("pv", SharedInfo(bytes([0x22]) * 4096), "07000000 00100000" + "22" * 4096),
    ("hvm", X86TscInfo(mode=1, khz=2_000_000, nsec=0x0102030405060708, incarnation=3),
     "08000000 18000000 01000000 80841e00 0807060504030201 03000000 00000000"),
    ("hvm", HvmContext(b"\xaa\xbb\xcc"), "09000000 03000000 aabbcc 0000000000"),
    ("hvm", HvmParams([(2, 0xFEFFE)]),
     "0a000000 18000000 01000000 00000000 0200000000000000 feef0f0000000000"),
    ("hvm", HvmParams([]), "0a000000 08000000 00000000 00000000"),
    ("pv", X86PvVcpuMsrs(0, b"\x01" * 16), "0c000000 18000000 00000000 00000000" + "01" * 16),
    ("hvm", Verify(), "0d000000 00000000"),
    ("hvm", Checkpoint(), "0e000000 00000000"),
    ("back-suspended", CheckpointDirtyPfnList([0x10, 0x2000]),
     "0f000000 10000000 1000000000000000 0020000000000000"),
    ("back-suspended", CheckpointDirtyPfnList([]), "0f000000 00000000"),
    ("hvm-static", StaticDataEnd(), "10000000 00000000"),
    ("hvm-static", X86CpuidPolicy([(0xD, 1, 0xA, 0xB, 0xC, 0xD)]),
     "11000000 18000000 0d000000 01000000 0a000000 0b000000 0c000000 0d000000"),
    ("hvm-static", X86MsrPolicy([(0xCE, 0, 0x80000000)]),
     "12000000 10000000 ce000000 00000000 0000008000000000"),
    # colod's heartbeat: type 0xC010D001 (optional bit set), legal in both namespaces.
    ("await-new", Heartbeat(7, 0x1122334455667788), "01d010c0 10000000 0700000000000000 8877665544332211"),
    ("hvm", Heartbeat(7, 0x1122334455667788), "01d010c0 10000000 0700000000000000 8877665544332211"),
    ("back-ready", Heartbeat(0, 0), "01d010c0 10000000 0000000000000000 0000000000000000"),
    # colod's replication end: type 0xC010D002; u32 reason, u32 text length, UTF-8 text, padding.
    ("libxl", _BYE, "02d010c0 16000000 01000000 0e000000 636f6c6f642073746f7070696e67 0000"),
    ("hvm", ReplicationEnd(ReplicationEndReason.PROTOCOL_ERROR, "\u00e9"),
     "02d010c0 0a000000 02000000 02000000 c3a9 000000000000"),
    ("back-start", ReplicationEnd(ReplicationEndReason.LOCAL_FAILURE, ""),
     "02d010c0 08000000 03000000 00000000"),
]

#: Bytes that decode but are not written by colod: (position, bytes, record).
DECODE_ONLY: list[tuple[str, str, Record]] = [
    # An unknown optional libxc record is skipped, as xg_sr_restore.c does.
    ("hvm", "23010080 03000000 010203 0000000000", SkippedRecord(0x80000123, 3)),
    # The spec draws CHECKPOINT_STATE as id + 4 bytes of padding in the body: accepted too.
    ("await-new", "05000000 08000000 00000000 00000000", CheckpointState(CheckpointId.NEW)),
]

#: Bytes a reader must refuse: (position, bytes, words expected in the reason).
REFUSED: list[tuple[str, str, str]] = [
    ("hvm", "0b000000 04000000 deadbeef 00000000", "TOOLSTACK"),
    ("libxl", "23010080 00000000", "unknown libxl record type 0x80000123"),
    ("hvm", "23010000 00000000", "unknown mandatory libxc record type 0x00000123"),
    ("await-new", "05000000 04000000 00000000 00000001", "padding"),
    ("await-new", "05000000 04000000 02000000 00000000", "CHECKPOINT_STATE(SVM_READY) is not allowed"),
    ("back-start", "05000000 04000000 00000000 00000000", "CHECKPOINT_STATE(NEW) is not allowed"),
    ("back-ready", "0f000000 00000000", "unknown libxl record type 0x0000000f"),
    ("hvm", "0f000000 00000000", "CHECKPOINT_DIRTY_PFN_LIST is not allowed"),
    ("hvm", "02000000 08000000 08 04 0000 00000000", "X86_PV_INFO belongs to X86_PV"),
    ("pv", "09000000 03000000 aabbcc 0000000000", "HVM_CONTEXT belongs to X86_HVM"),
    ("hvm-static", "01000000 10100000 01000000 00000000 0000000000000000" + _PAGE_11,
     "PAGE_DATA before STATIC_DATA_END"),
    ("start", "4c6962786c466d74 00000002 00000001", "big-endian"),
    ("start", "4c6962786c466d74 00000002 00000004", "reserved"),
    ("start", "4c6962786c466d74 00000003 00000000", "version 3"),
    ("image-header", "ffffffffffffffff 58454e46 00000003 0001 0000 00000000", "big-endian"),
    ("domain-header", "02000000 0d00 0000 04000000 11000000", "page shift 13"),
    ("libxl", "02d010c0 08000000 09000000 00000000", "unknown reason code 9"),
    ("back-start", "02d010c0 08000000 00000000 00000000", "unknown reason code 0"),
    ("hvm", "02d010c0 0a000000 01000000 02000000 c328 000000000000", "text is not valid UTF-8"),
    ("libxl", "02d010c0 0a000000 01000000 05000000 6869 000000000000", "text length 5, but 2 bytes"),
    ("libxl", "02d010c0 0a000000 01000000 01000000 6869 000000000000", "text length 1, but 2 bytes"),
    ("libxl", "02d010c0 04000000 01000000 00000000", "shorter than its 8-byte header"),
    ("libxl", "02d010c0 0a000000 01000000 02000000 6869 000000000001", "padding"),
    ("ended", "01d010c0 10000000 0000000000000000 0000000000000000",
     "data after COLOD_REPLICATION_END ended the channel"),
    ("back-ended", "05000000 04000000 02000000 00000000", "data after COLOD_REPLICATION_END"),
    ("back-ended", "02d010c0 08000000 01000000 00000000", "data after COLOD_REPLICATION_END"),
]


def _bytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def _encoder_at(position: str) -> tuple[Encoder, int]:
    channel, prefix = POSITIONS[position]
    encoder = Encoder(channel)
    return encoder, sum(len(encoder.send(record)) for record in prefix)


def _decode_at(position: str, data: bytes) -> tuple[Decoder, list[Record]]:
    channel, prefix = POSITIONS[position]
    encoder = Encoder(channel)
    decoder = Decoder(channel)
    decoder.receive_data(b"".join(encoder.send(record) for record in prefix) + data)
    return decoder, drain(decoder)[len(prefix):]


@pytest.mark.parametrize(("position", "record", "wire"), GOLDEN, ids=lambda v: type(v).__name__)
def test_encode(position: str, record: Record, wire: str) -> None:
    """The encoder writes exactly the hand-written bytes."""
    encoder, _ = _encoder_at(position)
    assert encoder.send(record).hex() == _bytes(wire).hex()


@pytest.mark.parametrize(("position", "record", "wire"), GOLDEN, ids=lambda v: type(v).__name__)
def test_decode(position: str, record: Record, wire: str) -> None:
    """The decoder reads the hand-written bytes as the record, at the right offset."""
    _, offset = _encoder_at(position)
    decoder, records = _decode_at(position, _bytes(wire))
    assert records == [record]
    assert decoder.last_frame.offset == offset


@pytest.mark.parametrize(("position", "record", "wire"), GOLDEN, ids=lambda v: type(v).__name__)
def test_decode_byte_by_byte(position: str, record: Record, wire: str) -> None:
    """Fed one byte at a time, the record appears exactly when its last byte arrives."""
    channel, prefix = POSITIONS[position]
    encoder, decoder = Encoder(channel), Decoder(channel)
    if prefix:  # b"" would mean end of file
        decoder.receive_data(b"".join(encoder.send(r) for r in prefix))
    assert len(drain(decoder)) == len(prefix)
    data = _bytes(wire)
    for byte in data[:-1]:
        decoder.receive_data(bytes([byte]))
        assert drain(decoder) == []
    decoder.receive_data(data[-1:])
    assert drain(decoder) == [record]


@pytest.mark.parametrize(("position", "wire", "record"), DECODE_ONLY)
def test_decode_only(position: str, wire: str, record: Record) -> None:
    assert _decode_at(position, _bytes(wire))[1] == [record]


@pytest.mark.parametrize(("position", "wire", "words"), REFUSED)
def test_refused(position: str, wire: str, words: str) -> None:
    """Each refusal is a StreamError at the offending record, with an actionable reason."""
    _, offset = _encoder_at(position)
    with pytest.raises(StreamError) as caught:
        _decode_at(position, _bytes(wire))
    assert words in caught.value.reason
    assert offset <= caught.value.offset < offset + len(_bytes(wire))


def test_every_type_has_a_vector() -> None:
    """
    Every type is covered: libxl 0x0-0x5, libxc 0x00-0x12 (TOOLSTACK as a
    refusal) and colod's own.
    """
    from colod.protocol.wire import ColodType, LibxcType, LibxlType

    written = {(type(r).NAMESPACE, type(r).TYPE) for _, r, _ in GOLDEN if type(r).TYPE is not None}
    libxl = {t for ns, t in written if ns is not None and ns.value == "libxl"}
    libxc = {t for ns, t in written if ns is not None and ns.value == "libxc"}
    colod = {t for ns, t in written if ns is None}
    assert libxl == set(LibxlType)
    assert libxc | {LibxcType.TOOLSTACK} == set(LibxcType)
    assert colod == set(ColodType)
