"""The decoder's framing: chunking, end of file, errors with offsets, memory and copies."""

from __future__ import annotations

import tracemalloc

import pytest

from colod.protocol import (
    CLOSED,
    NEED_DATA,
    Channel,
    CheckpointId,
    CheckpointState,
    Decoder,
    EmulatorXenstoreData,
    End,
    HvmParams,
    LibxcEnd,
    PageData,
    ReplicationEnd,
    ReplicationEndReason,
    StreamError,
    StreamHeader,
    X86CpuidPolicy,
    X86MsrPolicy,
)
from colod.protocol.readers import ITEMS_MAX
from colod.protocol.writers import write_record

from .streams import colo_back, colo_main, decode, drain, encode, pages, plain_hvm


def test_record_header_over_128_mib_is_refused_before_its_body() -> None:
    """Only the 8 header bytes are needed to refuse a body over REC_LENGTH_MAX."""
    prefix = encode(plain_hvm()[:7])
    decoder = Decoder()
    decoder.receive_data(prefix + bytes.fromhex("01000000 01000008"))
    with pytest.raises(StreamError) as caught:
        drain(decoder)
    assert caught.value.offset == len(prefix) + 4
    assert "128 MiB" in caught.value.reason


def test_error_state_is_sticky() -> None:
    decoder = Decoder()
    decoder.receive_data(b"NotLibxlFmt12345")
    with pytest.raises(StreamError) as first:
        decoder.next_record()
    decoder.receive_data(encode(plain_hvm()))
    with pytest.raises(StreamError) as again:
        decoder.next_record()
    assert again.value is first.value
    assert str(first.value).startswith("offset 0: not a libxl stream")


@pytest.mark.parametrize(("cut", "offset", "reason"), [
    (1, 0, "stream ends inside a header (1 bytes of it)"),
    (15, 0, "stream ends inside a header (15 bytes of it)"),
    (16, 16, "stream ends in the libxl stream, before its libxc stream; expected LIBXC_CONTEXT, "
             "EMULATOR_XENSTORE_DATA, EMULATOR_CONTEXT, END"),
    (20, 16, "stream ends inside a header (4 bytes of it)"),
    (23, 16, "stream ends inside a header (7 bytes of it)"),
    (24, 24, "stream ends expecting the libxc image header; expected IMAGE_HEADER v2, IMAGE_HEADER v3"),
    (100, 96, "stream ends inside a header (4 bytes of it)"),
])
def test_truncated_plain_stream(cut: int, offset: int, reason: str) -> None:
    """A plain stream must reach END; anywhere else EOF is an error at the cut record, saying so."""
    data = encode(plain_hvm())[:cut]
    with pytest.raises(StreamError) as caught:
        decode(data)
    assert (caught.value.offset, caught.value.reason) == (offset, reason)


def test_clean_end_of_file() -> None:
    decoder = Decoder()
    decoder.receive_data(encode(plain_hvm()))
    assert drain(decoder)[-1] == End()
    assert decoder.next_record() is NEED_DATA
    decoder.receive_data(b"")
    assert decoder.next_record() is CLOSED
    assert decoder.next_record() is CLOSED


def test_trailing_data_after_end() -> None:
    with pytest.raises(StreamError, match="after the end of the stream"):
        decode(encode(plain_hvm()) + bytes(8))


@pytest.mark.parametrize("trailing", [1, 8, 5000])
def test_trailing_data_error_does_not_depend_on_chunking(trailing: int) -> None:
    """The same offset and words whether the bytes after END come whole or one at a time."""
    data = encode(plain_hvm())
    errors = []
    for sizes in ((), (1,), (7, 4096)):
        with pytest.raises(StreamError) as caught:
            decode(data + bytes(trailing), sizes=sizes)
        errors.append((caught.value.offset, caught.value.reason))
    assert errors == [(len(data), "data after the end of the stream")] * 3


def test_colo_stream_may_end_after_a_complete_checkpoint() -> None:
    """COLO never sends END: the primary's stream just stops (failover)."""
    records = colo_main(2)
    assert decode(encode(records)) == records
    new = CheckpointState(CheckpointId.NEW)
    assert decode(encode([*records, new]))[-1] == new


def test_colo_stream_may_not_end_in_its_first_checkpoint() -> None:
    records = colo_main(0)
    with pytest.raises(StreamError, match="first checkpoint"):
        decode(encode(records[:-1]))


@pytest.mark.parametrize("channel", list(Channel))
def test_end_of_file_after_replication_end_is_clean(channel: Channel) -> None:
    """Even in the first checkpoint, where EOF alone is an error: the sender meant to stop."""
    records = colo_main(0)[:-1] if channel is Channel.MAIN else colo_back(0)[:1]
    bye = ReplicationEnd(ReplicationEndReason.LOCAL_FAILURE, "disk gone")
    assert decode(encode([*records, bye], channel), channel, sizes=[7]) == [*records, bye]


def test_back_channel_lock_step() -> None:
    records = colo_back(2)
    assert decode(encode(records, Channel.BACK), Channel.BACK) == records
    resumed = bytes.fromhex("05000000 04000000 03000000 00000000")
    with pytest.raises(StreamError, match=r"SVM_RESUMED\) is not allowed after SVM_RESUMED") as caught:
        decode(encode(records[:2], Channel.BACK) + resumed, Channel.BACK)
    assert caught.value.offset == 32


def test_page_data_is_a_view_of_the_received_bytes() -> None:
    """A body inside one received chunk is handed out without a copy."""
    data = encode([*plain_hvm()[:7], pages(4)])
    decoder = Decoder()
    decoder.receive_data(data)
    record = drain(decoder)[-1]
    assert isinstance(record, PageData)
    assert isinstance(record.data, memoryview)
    assert record.data.obj is data
    assert record.data.nbytes == 4 * 4096


def test_memory_is_bounded_by_one_record() -> None:
    """Decoding 64 MiB of PAGE_DATA fed in 64 KiB chunks never holds much more than one 1 MiB record."""
    prologue = encode(plain_hvm()[:7])
    batch = encode([*plain_hvm()[:7], pages(256)])[len(prologue):]
    decoder = Decoder()
    decoder.receive_data(prologue)
    drain(decoder)
    chunk = 64 * 1024
    decoded = 0
    tracemalloc.start()
    try:
        for _ in range(64):
            for start in range(0, len(batch), chunk):
                decoder.receive_data(batch[start : start + chunk])
                decoded += len(drain(decoder))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert decoded == 64
    assert peak < 1.5 * len(batch) + chunk, peak


def test_big_page_data_is_not_copied_per_page() -> None:
    """1024 pages decode into one pfn array and one buffer."""
    data = encode([*plain_hvm()[:7], pages(1024)])
    record = decode_prefix(data)[-1]
    assert record.pfns.typecode == "Q" and len(record.pfns) == 1024
    assert record.data.nbytes == 1024 * 4096


def decode_prefix(data: bytes) -> list:
    decoder = Decoder()
    decoder.receive_data(data)
    return drain(decoder)


#: Records of small items, each a few Python objects once read: (records of plain_hvm() that lead to
#: where the record is read, the record with N items).
_MANY_ITEMS = {
    "EMULATOR_XENSTORE_DATA": (1, lambda n: EmulatorXenstoreData(entries=((b"ab", b"cd"),) * n)),
    "HVM_PARAMS": (4, lambda n: HvmParams([(i, i) for i in range(n)])),
    "X86_CPUID_POLICY": (4, lambda n: X86CpuidPolicy([(i, 0, 1, 2, 3, 4) for i in range(n)])),
    "X86_MSR_POLICY": (4, lambda n: X86MsrPolicy([(i, 0, 1) for i in range(n)])),
}


@pytest.mark.parametrize("name", list(_MANY_ITEMS))
def test_records_of_many_small_items_are_refused(name: str) -> None:
    """
    Found by tests/fuzz.py: a record of tiny items decoded into objects 10 to
    40 times its size (a 128 MiB one, GiBs).  At most ITEMS_MAX are read.
    """
    leading, make = _MANY_ITEMS[name]
    prefix = encode(plain_hvm()[:leading])
    assert decode_prefix(prefix + b"".join(write_record(make(ITEMS_MAX))))[-1] == make(ITEMS_MAX)
    with pytest.raises(StreamError) as caught:
        decode_prefix(prefix + b"".join(write_record(make(ITEMS_MAX + 1))))
    assert caught.value.reason.startswith(f"{name} with {ITEMS_MAX + 1} ")
    assert caught.value.reason.endswith(f", over colod's limit of {ITEMS_MAX}")
    assert len(prefix) + 8 <= caught.value.offset <= len(prefix) + 16


def test_a_record_of_tiny_items_is_refused_without_building_them() -> None:
    """A 1.2 MB EMULATOR_XENSTORE_DATA of 6-byte entries took 35 MB to read; now about its own size."""
    data = encode(plain_hvm()[:1]) + b"".join(write_record(EmulatorXenstoreData(entries=((b"ab", b"cd"),)
                                                                                 * 200_000)))
    tracemalloc.start()
    try:
        with pytest.raises(StreamError, match="over colod's limit"):
            decode_prefix(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * len(data), peak



def test_skip_moves_past_records_another_writer_puts_in() -> None:
    """A stream read without some of its records (a save helper's output): skip() stands in for them."""
    records = plain_hvm()
    end = records.index(LibxcEnd()) + 1
    libxl_part, helper_part = records[:2], records[2:end]
    decoder = Decoder()
    for record in libxl_part:
        decoder.skip(record)
    data = b"".join(b"".join(write_record(record)) for record in helper_part)
    decoder.receive_data(data)
    assert drain(decoder) == helper_part
    with pytest.raises(StreamError) as caught:
        decoder.skip(StreamHeader())
    assert str(caught.value) == (
        f"offset {len(data)}: STREAM_HEADER is not allowed in the libxl stream, after its libxc stream "
        "ended; expected EMULATOR_XENSTORE_DATA, EMULATOR_CONTEXT, END")
