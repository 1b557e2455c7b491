"""The encoder refuses what a decoder would refuse, and writes page data without copying it."""

from __future__ import annotations

import pytest

from colod.protocol import (
    CheckpointId,
    CheckpointState,
    EmulatorContext,
    EmulatorXenstoreData,
    Encoder,
    Heartbeat,
    HvmContext,
    LibxcContext,
    PageData,
    ReplicationEnd,
    ReplicationEndReason,
    StreamError,
    StreamHeader,
    X86PvInfo,
)

from .streams import encode, pages, plain_hvm


def encoder_in_libxc() -> Encoder:
    encoder = Encoder()
    for record in plain_hvm()[:7]:
        encoder.send(record)
    return encoder


@pytest.mark.parametrize(
    ("record", "words"),
    [
        (PageData([1, 2], b"\0", b""), "2 pfns but 1"),
        (PageData([1], b"\0", b"short"), "needs 4096"),
        (PageData([], b"", b""), "at least one pfn"),
        (HvmContext(b""), "cannot be empty"),
        (CheckpointState(CheckpointId.NEW), "not allowed"),
        (X86PvInfo(8, 4), "belongs to X86_PV"),
        (LibxcContext(), "LIBXC_CONTEXT"),
        (ReplicationEnd(7, ""), "replication end reason 7"),
        (ReplicationEnd(ReplicationEndReason.SHUTDOWN, "\ud800"), "can't encode"),
    ],
)
def test_refusals_leave_the_encoder_usable(record: object, words: str) -> None:
    encoder = encoder_in_libxc()
    with pytest.raises(StreamError) as caught:
        encoder.send(record)
    assert words in caught.value.reason
    assert caught.value.offset == len(encode(plain_hvm()[:7]))
    encoder.send(Heartbeat(1))


def test_field_ranges() -> None:
    encoder = Encoder()
    encoder.send(StreamHeader())
    with pytest.raises(StreamError, match="out of range"):
        encoder.send(EmulatorContext(index=2**32))
    with pytest.raises(StreamError, match="relative path"):
        encoder.send(EmulatorXenstoreData(entries=((b"/abs", b"v"),)))
    with pytest.raises(StreamError, match="emulator id"):
        encoder.send(EmulatorContext(emulator=7))


def test_page_data_buffers_are_not_copied() -> None:
    encoder = encoder_in_libxc()
    batch = pages(16)
    chunks = encoder.send_buffers(batch)
    assert any(chunk is batch.data for chunk in chunks)
    assert sum(len(chunk) for chunk in chunks) == 16 + 16 * 8 + 16 * 4096


def test_nothing_is_sent_after_replication_end() -> None:
    encoder = encoder_in_libxc()
    encoder.send(ReplicationEnd(ReplicationEndReason.SHUTDOWN, "bye"))
    with pytest.raises(StreamError, match="HEARTBEAT is not allowed after COLOD_REPLICATION_END"):
        encoder.send(Heartbeat(1))
    assert not encoder.can_send(ReplicationEnd(ReplicationEndReason.SHUTDOWN, "again"))
