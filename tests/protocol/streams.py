"""Record sequences shared by the tests: whole streams as Xen writes them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from colod.protocol import (
    CLOSED,
    NEED_DATA,
    Channel,
    Checkpoint,
    CheckpointDirtyPfnList,
    Checkpointed,
    CheckpointEnd,
    CheckpointId,
    CheckpointState,
    Decoder,
    DomainHeader,
    EmulatorContext,
    Encoder,
    End,
    GuestType,
    HvmContext,
    HvmParams,
    ImageHeader,
    LibxcContext,
    LibxcEnd,
    PageData,
    PageType,
    Record,
    StaticDataEnd,
    StreamHeader,
    X86CpuidPolicy,
    X86MsrPolicy,
    X86PvInfo,
    X86PvP2mFrames,
    X86PvVcpuBasic,
    X86TscInfo,
)


def encode(
    records: Iterable[Record], channel: Channel = Channel.MAIN, checkpointed: Checkpointed = Checkpointed.COLO
) -> bytes:
    encoder = Encoder(channel, checkpointed)
    return b"".join(encoder.send(record) for record in records)


def decode(
    data: bytes, channel: Channel = Channel.MAIN, sizes: Sequence[int] = (),
    checkpointed: Checkpointed = Checkpointed.COLO,
) -> list[Record]:
    """All records of C{data}, fed in chunks of C{sizes} (cycled; whole if empty), then EOF."""
    decoder = Decoder(channel, checkpointed)
    out: list[Record] = []
    position, turn = 0, 0
    while position < len(data):
        size = sizes[turn % len(sizes)] if sizes else len(data)
        decoder.receive_data(data[position : position + size])
        position, turn = position + size, turn + 1
        out += drain(decoder)
    decoder.receive_data(b"")
    out += drain(decoder)
    return out


def drain(decoder: Decoder) -> list[Record]:
    out = []
    while (record := decoder.next_record()) is not NEED_DATA and record is not CLOSED:
        out.append(record)
    return out


def pages(count: int, fill: int = 0xA5) -> PageData:
    return PageData(pfns=range(0x100, 0x100 + count), types=bytes(count), data=bytes([fill]) * (4096 * count))


def hvm_prologue() -> list[Record]:
    return [
        StreamHeader(), LibxcContext(), ImageHeader(3), DomainHeader(GuestType.X86_HVM, 4, 17),
        X86CpuidPolicy([(0, 0, 0xD, 0x756E6547, 0x6C65746E, 0x49656E69)]),
        X86MsrPolicy([(0xCE, 0, 0x80000000)]), StaticDataEnd(),
    ]


def hvm_end_of_checkpoint() -> list[Record]:
    return [
        X86TscInfo(mode=0, khz=2_000_000, nsec=123456789, incarnation=1),
        HvmContext(b"\x01\x02\x03 hvm context"), HvmParams([(2, 0xFEFFF), (5, 1)]),
    ]


def plain_hvm() -> list[Record]:
    """A complete, non-checkpointed HVM stream (no EMULATOR_XENSTORE_DATA: Xen's tool trips on it)."""
    return [
        *hvm_prologue(),
        pages(2),
        PageData(pfns=[0x200, 0x201, 0x202], types=bytes([PageType.NOTAB, PageType.XTAB, PageType.BROKEN]),
                 data=bytes(4096)),
        *hvm_end_of_checkpoint(), LibxcEnd(),
        EmulatorContext(blob=b"QEVM device state"), End(),
    ]


def plain_pv() -> list[Record]:
    return [
        StreamHeader(), LibxcContext(), ImageHeader(3), DomainHeader(GuestType.X86_PV, 4, 17),
        X86PvInfo(guest_width=8, pt_levels=4), X86PvP2mFrames(0, 0x3FF, [0x1234]), StaticDataEnd(),
        PageData(pfns=[1, 2], types=bytes([PageType.L4TAB_PINNED, PageType.L1TAB]), data=bytes(8192)),
        X86PvVcpuBasic(vcpu_id=0, context=b"regs" * 4), LibxcEnd(), End(),
    ]


def colo_main(checkpoints: int) -> list[Record]:
    """A COLO main stream: live migration, then C{checkpoints} more, cut after the last."""
    records = [*hvm_prologue(), pages(3), *hvm_end_of_checkpoint(), Checkpoint(),
               EmulatorContext(blob=b"dm 0"), CheckpointEnd()]
    for n in range(1, checkpoints + 1):
        records += [CheckpointState(CheckpointId.NEW), pages(1, fill=n), *hvm_end_of_checkpoint(),
                    Checkpoint(), EmulatorContext(blob=b"dm %d" % n), CheckpointEnd()]
    return records


def colo_back(checkpoints: int) -> list[Record]:
    """The back channel that goes with L{colo_main}."""
    ready, resumed = CheckpointState(CheckpointId.SVM_READY), CheckpointState(CheckpointId.SVM_RESUMED)
    records: list[Record] = [ready, resumed]
    for n in range(checkpoints):
        records += [CheckpointState(CheckpointId.SVM_SUSPENDED), CheckpointDirtyPfnList([n, 0x100 + n]),
                    ready, resumed]
    return records


def remus_main(checkpoints: int, failover: bool = False) -> list[Record]:
    """
    A main stream as Xen's C{xl remus} writes it (xen-colo-protocol.md 11.1):
    the initial checkpoint, then C{checkpoints} more, each straight after the
    last CHECKPOINT_END (no CHECKPOINT_STATE), cut after the last one, or
    ended by a libxc END (failover) if C{failover}.
    """
    records = [*hvm_prologue(), pages(3), *hvm_end_of_checkpoint(), Checkpoint(),
               EmulatorContext(blob=b"dm 0"), CheckpointEnd()]
    for n in range(1, checkpoints + 1):
        records += [pages(1, fill=n), *hvm_end_of_checkpoint(), Checkpoint(),
                    EmulatorContext(blob=b"dm %d" % n), CheckpointEnd()]
    if failover:
        records.append(LibxcEnd())
    return records
