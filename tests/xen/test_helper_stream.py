"""The save helper's libxc stream, cut into checkpoints (colod.xen.helper_stream).

The helper's output is what a Remus stream holds between libxl's records:
here it is made from tests.protocol.streams.remus_main by leaving out the
records libxl writes (stream header, LIBXC_CONTEXT, EMULATOR_CONTEXT,
CHECKPOINT_END), exactly as they are left out on the real helper's fd.
"""

from __future__ import annotations

import pytest

from colod.protocol import (
    Checkpoint,
    CheckpointEnd,
    EmulatorContext,
    HvmParams,
    LibxcContext,
    LibxcEnd,
    PageData,
    Record,
    StreamError,
    StreamHeader,
)
from colod.protocol.writers import write_record
from colod.xen.helper_stream import HelperStream
from tests.protocol.streams import remus_main

LIBXL_ONLY = (StreamHeader, LibxcContext, EmulatorContext, CheckpointEnd)


def helper_output(checkpoints: int, failover: bool = False) -> tuple[bytes, list[list[Record]]]:
    """What a helper writes for ``checkpoints`` checkpoints after the first, and the checkpoints it holds."""
    records = [r for r in remus_main(checkpoints, failover) if not isinstance(r, LIBXL_ONLY)]
    rounds: list[list[Record]] = [[]]
    for record in records:
        if isinstance(record, Checkpoint):
            rounds.append([])
        elif not isinstance(record, LibxcEnd):
            rounds[-1].append(record)
    assert rounds[-1] == []
    return b"".join(b"".join(write_record(r)) for r in records), rounds[:-1]


def take_all(stream: HelperStream) -> list[list[Record]]:
    out = []
    while (checkpoint := stream.next_checkpoint()) is not None:
        out.append(checkpoint)
    return out


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_checkpoints_come_out_whole_in_any_chunking(chunk: int) -> None:
    data, expected = helper_output(4)
    stream = HelperStream()
    got: list[list[Record]] = []
    for at in range(0, len(data), chunk):
        stream.receive_data(data[at : at + chunk])
        got += take_all(stream)
    stream.receive_data(b"")
    assert take_all(stream) == []
    assert got == expected
    assert len(got) == 5 and not stream.ended
    assert isinstance(got[1][0], PageData) and isinstance(got[1][-1], HvmParams)


def test_a_checkpoint_is_held_back_until_its_checkpoint_record() -> None:
    data, expected = helper_output(1)
    stream = HelperStream()
    cut = data.rindex(b"".join(write_record(Checkpoint())))
    stream.receive_data(data[:cut])
    assert take_all(stream) == expected[:1]
    stream.receive_data(data[cut:])
    assert take_all(stream) == expected[1:]


def test_libxc_end_ends_the_save() -> None:
    data, expected = helper_output(2, failover=True)
    stream = HelperStream()
    stream.receive_data(data)
    assert take_all(stream) == expected
    assert stream.ended


def test_malformed_output_is_refused_with_its_offset() -> None:
    data, _ = helper_output(0)
    stream = HelperStream()
    with pytest.raises(StreamError) as caught:
        stream.receive_data(data[:24] + b"\x00" * 16)  # the image header, then no domain header
        take_all(stream)
    assert str(caught.value) == "offset 24: unknown domain type 0x0 (1 = x86 PV, 2 = x86 HVM)"


def test_output_cut_short_is_refused() -> None:
    data, _ = helper_output(1)
    stream = HelperStream()
    stream.receive_data(data[:-3])
    with pytest.raises(StreamError) as caught:
        stream.receive_data(b"")
    assert "stream ends inside" in str(caught.value)


@pytest.mark.parametrize("chunk", [1, 4096, 1 << 20])
def test_live_records_go_out_one_by_one_until_live_is_unset(chunk: int) -> None:
    """The first copy: records go to ``live`` as they are decoded; the rest of the round, after
    ``live`` is unset (the guest is suspended), comes out as the first checkpoint."""
    data, expected = helper_output(2)
    first = expected[0]
    cut = sum(len(b"".join(write_record(r))) for r in first[:3])  # three records before the suspend
    stream = HelperStream()
    live: list[Record] = []
    stream.live = live.append
    for at in range(0, cut, chunk):
        stream.receive_data(data[at : min(at + chunk, cut)])
        assert stream.next_checkpoint() is None
    assert live == first[:3]
    stream.live = None
    stream.receive_data(data[cut:])
    assert take_all(stream) == [first[3:], *expected[1:]]
