"""
Remus-checkpointed main streams (xl remus: no CHECKPOINT_STATE), and AUTO,
which tells them from COLO streams by the record after the first CHECKPOINT_END.

The Remus streams here are generated, shaped as xen-colo-protocol.md 11.1
describes the one Xen 4.17 wrote in the lab (that capture was not kept).
"""

from __future__ import annotations

import pytest

from colod.protocol import (
    CLOSED,
    NEED_DATA,
    Checkpoint,
    Checkpointed,
    CheckpointEnd,
    CheckpointId,
    CheckpointState,
    Decoder,
    EmulatorContext,
    Encoder,
    Heartbeat,
    LibxcEnd,
    PageData,
    StreamError,
)
from colod.protocol.writers import write_record

from .streams import colo_main, decode, drain, encode, pages, remus_main

COLO, REMUS, AUTO = Checkpointed.COLO, Checkpointed.REMUS, Checkpointed.AUTO
NEW = CheckpointState(CheckpointId.NEW)
AS_REMUS = " (read as a Remus stream)"
AUTO_COLO = " (read as a COLO stream, as decided after its first checkpoint)"
AUTO_REMUS = " (read as a Remus stream, as decided after its first checkpoint)"


def decoded(data: bytes, checkpointed: Checkpointed) -> tuple[list, Decoder]:
    decoder = Decoder(checkpointed=checkpointed)
    decoder.receive_data(data)
    out = drain(decoder)
    decoder.receive_data(b"")
    assert decoder.next_record() is CLOSED
    return out, decoder


def test_remus_shape() -> None:
    """The generated stream is 11.1's: no CHECKPOINT_STATE, libxc records right after CHECKPOINT_END."""
    records = remus_main(3)
    assert not any(isinstance(record, CheckpointState) for record in records)
    ends = [i for i, record in enumerate(records) if isinstance(record, CheckpointEnd)]
    assert len(ends) == 4
    assert all(isinstance(records[i + 1], PageData) for i in ends[:-1])
    assert all(isinstance(records[i - 1], EmulatorContext) for i in ends)


@pytest.mark.parametrize("mode", [REMUS, AUTO], ids=lambda mode: mode.name)
@pytest.mark.parametrize("failover", [False, True], ids=["eof", "libxc-end"])
@pytest.mark.parametrize("sizes", [(), (7,), (4096, 13)], ids=["whole", "7", "mixed"])
def test_remus_stream_decodes(mode: Checkpointed, failover: bool, sizes: tuple[int, ...]) -> None:
    records = remus_main(4, failover)
    data = encode(records, checkpointed=REMUS)
    assert decode(data, sizes=sizes, checkpointed=mode) == records
    assert decoded(data, mode)[1].checkpointed is REMUS


def test_remus_encoding_is_the_colo_one_without_checkpoint_state() -> None:
    """Same bytes per record: only the order differs, so the COLO encoder's bytes line up."""
    colo = encode(colo_main(2))
    remus = encode(remus_main(2), checkpointed=REMUS)
    assert len(colo) - len(remus) == 2 * 16  # two 4-byte CHECKPOINT_STATE records, padded


@pytest.mark.parametrize("checkpoints", [0, 1, 3])
def test_auto_picks_colo(checkpoints: int) -> None:
    records = colo_main(checkpoints)
    out, decoder = decoded(encode(records), AUTO)
    assert out == records
    assert decoder.checkpointed is (COLO if checkpoints else AUTO)


def test_remus_end_of_file_after_checkpoint_end_and_between_records() -> None:
    """Xen's Remus receiver fails over at EOF once a checkpoint is complete."""
    records = remus_main(2)
    for cut in (len(records), len(records) - 1, len(records) - 3, len(records) - 6):
        for mode in (REMUS, AUTO):
            assert decode(encode(records[:cut], checkpointed=REMUS), checkpointed=mode) == records[:cut]


@pytest.mark.parametrize(("mode", "note"), [(REMUS, AS_REMUS), (AUTO, "")])
def test_remus_may_not_end_in_its_first_checkpoint(mode: Checkpointed, note: str) -> None:
    records = remus_main(0)[:-1]
    with pytest.raises(StreamError) as caught:
        decode(encode(records), checkpointed=mode)
    assert caught.value.reason == (
        "stream ends in the libxl part of the first checkpoint; "
        f"expected EMULATOR_XENSTORE_DATA, EMULATOR_CONTEXT, CHECKPOINT_END{note}")


def test_heartbeat_does_not_decide() -> None:
    """colod's records after CHECKPOINT_END leave AUTO undecided; the next Xen record decides."""
    records = remus_main(1)
    first_end = records.index(CheckpointEnd())
    mixed = [*records[: first_end + 1], Heartbeat(1), *records[first_end + 1 :]]
    data = encode(mixed, checkpointed=REMUS)
    split = offset_of(mixed, first_end + 2, REMUS)
    decoder = Decoder(checkpointed=AUTO)
    decoder.receive_data(data[:split])
    assert drain(decoder)[-1] == Heartbeat(1)
    assert decoder.checkpointed is AUTO
    decoder.receive_data(data[split:])
    assert drain(decoder) == records[first_end + 1 :]
    assert decoder.checkpointed is REMUS


def offset_of(records: list, index: int, checkpointed: Checkpointed = COLO) -> int:
    return len(encode(records[:index], checkpointed=checkpointed))


def test_auto_colo_stream_that_later_skips_new_is_refused() -> None:
    colo = colo_main(1)
    mixed = [*colo, pages(1), Checkpoint()]  # second checkpoint without CHECKPOINT_STATE(NEW)
    data = encode(colo) + _tail_bytes(mixed, len(colo))
    with pytest.raises(StreamError) as caught:
        decode(data, checkpointed=AUTO)
    length = 8 + 8 + 4096  # one page: header, pfn, data
    assert caught.value.offset == len(encode(colo))
    assert caught.value.reason == (
        f"record type 0x1 ({length} bytes) after CHECKPOINT_END where a COLO stream has "
        f"CHECKPOINT_STATE(NEW), as in a Remus stream{AUTO_COLO}")


def test_colo_mode_refuses_a_remus_stream_as_before() -> None:
    """COLO (the peer link's mode) keeps its own refusal: PAGE_DATA read as a libxl record."""
    records = remus_main(1)
    with pytest.raises(StreamError) as caught:
        decode(encode(records, checkpointed=REMUS))
    assert caught.value.offset == offset_of(records, records.index(CheckpointEnd()) + 1, REMUS) + 8
    assert caught.value.reason == "LIBXC_CONTEXT must have an empty body, got 4112 bytes"


def _tail_bytes(records: list, start: int) -> bytes:
    """The bytes of C{records[start:]}, each encoded on its own (orders no encoder would accept)."""
    out = b""
    for record in records[start:]:
        out += _lone(record)
    return out


def _lone(record: object) -> bytes:
    return b"".join(write_record(record))


@pytest.mark.parametrize(("mode", "note"), [(REMUS, AS_REMUS), (AUTO, AUTO_REMUS)])
def test_remus_stream_that_later_sends_new_is_refused(mode: Checkpointed, note: str) -> None:
    records = remus_main(2)
    second_end = [i for i, r in enumerate(records) if isinstance(r, CheckpointEnd)][1]
    data = encode(records[: second_end + 1], checkpointed=REMUS) + _lone(NEW)
    with pytest.raises(StreamError) as caught:
        decode(data, checkpointed=mode)
    assert caught.value.offset == offset_of(records, second_end + 1, REMUS)
    assert caught.value.reason == (
        f"CHECKPOINT_STATE (libxl type 5, 4 bytes) after CHECKPOINT_END, as in a COLO stream{note}")


def test_remus_mode_refuses_a_colo_stream() -> None:
    records = colo_main(1)
    with pytest.raises(StreamError) as caught:
        decode(encode(records), checkpointed=REMUS)
    assert caught.value.offset == offset_of(records, records.index(NEW))
    assert caught.value.reason == (
        f"CHECKPOINT_STATE (libxl type 5, 4 bytes) after CHECKPOINT_END, as in a COLO stream{AS_REMUS}")


def test_remus_libxc_end_ends_the_stream() -> None:
    data = encode(remus_main(1, failover=True), checkpointed=REMUS)
    with pytest.raises(StreamError, match="after the end of the stream"):
        decode(data + _lone(LibxcEnd()), checkpointed=AUTO)


def test_encoder_modes() -> None:
    with pytest.raises(ValueError, match="AUTO"):
        Encoder(checkpointed=AUTO)
    encoder = Encoder(checkpointed=REMUS)
    for record in remus_main(0):
        encoder.send(record)
    assert not encoder.can_send(NEW)
    with pytest.raises(StreamError) as caught:
        encoder.send(NEW)
    assert caught.value.reason == (
        "cannot send CHECKPOINT_STATE: CHECKPOINT_STATE(NEW) is not allowed in the libxc part of a "
        "checkpoint; expected PAGE_DATA, X86_PV_INFO, X86_PV_P2M_FRAMES, X86_PV_VCPU_BASIC, "
        "X86_PV_VCPU_EXTENDED, X86_PV_VCPU_XSAVE, X86_PV_VCPU_MSRS, SHARED_INFO, X86_TSC_INFO, "
        f"HVM_CONTEXT, HVM_PARAMS, VERIFY, CHECKPOINT, END{AS_REMUS}")
    assert encoder.can_send(pages(1))


def test_decoder_default_is_colo() -> None:
    assert Decoder().checkpointed is COLO
    decoder = Decoder()
    decoder.receive_data(encode(colo_main(1)))
    assert drain(decoder)[-1] == CheckpointEnd()
    assert decoder.next_record() is NEED_DATA
