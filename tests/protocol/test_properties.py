"""Property tests: round trips, arbitrary chunking, and hostile input."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from colod.protocol import NEED_DATA, Channel, Decoder, Record, StreamError

from .strategies import sequences
from .streams import colo_main, decode, encode

_SETTINGS = settings(
    max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
channels = st.sampled_from(list(Channel))


def _sequence_and_channel() -> st.SearchStrategy[tuple[Channel, list[Record]]]:
    return channels.flatmap(lambda channel: st.tuples(st.just(channel), sequences(channel)))


def _decode_prefix(data: bytes, channel: Channel, sizes: list[int]) -> list[Record]:
    """Records of C{data} without sending EOF: a valid stream may stop anywhere in a checkpoint."""
    decoder = Decoder(channel)
    out: list[Record] = []
    position = 0
    for size in sizes + [len(data)]:
        chunk = data[position : position + size]
        position += size
        if chunk:  # b"" would mean end of file
            decoder.receive_data(chunk)
        while (record := decoder.next_record()) is not NEED_DATA:
            out.append(record)
    return out


@_SETTINGS
@given(_sequence_and_channel())
def test_encode_then_decode_is_identity(case: tuple[Channel, list[Record]]) -> None:
    channel, records = case
    assert _decode_prefix(encode(records, channel), channel, []) == records


@_SETTINGS
@given(_sequence_and_channel(), st.lists(st.integers(1, 5000), max_size=20))
def test_split_points_do_not_matter(case: tuple[Channel, list[Record]], sizes: list[int]) -> None:
    channel, records = case
    data = encode(records, channel)
    assert _decode_prefix(data, channel, sizes) == records


@_SETTINGS
@given(channels, st.binary(max_size=300), st.lists(st.integers(1, 64), max_size=10))
def test_arbitrary_bytes_give_records_or_stream_error(
    channel: Channel, data: bytes, sizes: list[int]
) -> None:
    try:
        decode(data, channel, sizes)
    except StreamError as error:
        assert 0 <= error.offset <= len(data)


_COLO = encode(colo_main(2))


@_SETTINGS
@given(
    st.lists(st.tuples(st.integers(0, len(_COLO) - 1), st.sampled_from(["flip", "insert", "delete", "cut"]),
                       st.integers(0, 255)), min_size=1, max_size=4),
    st.lists(st.integers(1, 3000), max_size=8),
)
def test_mutated_streams_give_records_or_stream_error(
    mutations: list[tuple[int, str, int]], sizes: list[int]
) -> None:
    data = bytearray(_COLO)
    for where, how, value in mutations:
        if not data:
            break
        where %= len(data)
        if how == "flip":
            data[where] ^= value or 1
        elif how == "insert":
            data[where:where] = bytes([value]) * (value % 9 + 1)
        elif how == "delete":
            del data[where : where + value % 9 + 1]
        else:
            del data[where:]
    try:
        decode(bytes(data), Channel.MAIN, sizes)
    except StreamError as error:
        assert 0 <= error.offset <= len(data)
