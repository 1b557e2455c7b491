# -*- test-case-name: tests.xen.test_helper_stream -*-
"""
The libxc stream a save helper writes, cut into checkpoints, sans-IO.

libxl-save-helper writes only libxc's part of a checkpointed stream: the
image and domain headers, static data and the first copy of the guest's
memory, then per checkpoint its dirty pages, vCPU and platform state and a
libxc CHECKPOINT record.  libxl writes the rest on the same fd (the stream
header and LIBXC_CONTEXT before the helper starts; EMULATOR_CONTEXT and
CHECKPOINT_END in the checkpoint callback).  colod reads the helper's bytes
from a pipe instead, so that they travel on the peer link between its
heartbeats: this module checks them with colod's own decoder, positioned as
libxl would have left the stream, and hands them out one checkpoint at a
time, each the records up to (not including) the helper's CHECKPOINT.
While L{HelperStream.live} is set (the first copy, made while the guest
runs), the records of the open round go to it one by one instead, so that
the guest's memory travels while it is being copied, not all at once in the
first checkpoint's pause.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from colod.protocol import (
    CLOSED,
    NEED_DATA,
    Channel,
    Checkpoint,
    Checkpointed,
    CheckpointEnd,
    Decoder,
    LibxcContext,
    LibxcEnd,
    Record,
    StreamHeader,
)


class HelperStream:
    """
    Feed it the helper's bytes; take complete checkpoints out.

    A malformed or misplaced record raises the codec's L{StreamError}, with
    the offset in the helper's output.
    """

    def __init__(self) -> None:
        self._decoder = Decoder(Channel.MAIN, Checkpointed.REMUS)
        # What libxl writes on the fd before the helper starts.
        self._decoder.skip(StreamHeader())
        self._decoder.skip(LibxcContext())
        self._round: list[Record] = []
        self._checkpoints: deque[list[Record]] = deque()
        #: The helper wrote libxc END: the save is over (no more checkpoints).
        self.ended = False
        #: Where the open round's records go as they come, while set; else they wait for the round's end.
        self.live: Callable[[Record], None] | None = None

    def receive_data(self, data: bytes) -> None:
        """Bytes the helper wrote; b"" when its fd closed."""
        self._decoder.receive_data(data)
        self._drain()

    def next_checkpoint(self) -> list[Record] | None:
        """The records of the oldest checkpoint not yet taken, or None while none is complete."""
        return self._checkpoints.popleft() if self._checkpoints else None

    def _drain(self) -> None:
        while (record := self._decoder.next_record()) is not NEED_DATA and record is not CLOSED:
            if isinstance(record, Checkpoint):
                self._checkpoints.append(self._round)
                self._round = []
                self._decoder.skip(CheckpointEnd())  # libxl's, in the checkpoint callback
            elif isinstance(record, LibxcEnd):
                self.ended = True
            elif self.live is not None and not self._checkpoints:
                self.live(record)
            else:
                self._round.append(record)
