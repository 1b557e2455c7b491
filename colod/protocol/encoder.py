# -*- test-case-name: tests.protocol.test_encoder -*-
"""
The stream encoder: typed records in, Xen's exact bytes out.

It follows the same table as the decoder (L{colod.protocol.state}), so a
sender cannot emit a sequence its peer would reject.  A refused record leaves
the encoder as it was: nothing was emitted, so the stream is still whole.
"""

from __future__ import annotations

from .errors import StreamError
from .records import Record, record_name
from .state import Channel, Checkpointed, Tracker
from .writers import Chunk, write_record


class Encoder:
    """
    Encode one direction of the peer link (main or back channel), COLO
    checkpointed, or a Remus-checkpointed main stream (C{Checkpointed.REMUS}).
    """

    def __init__(
        self, channel: Channel = Channel.MAIN, checkpointed: Checkpointed = Checkpointed.COLO
    ) -> None:
        if checkpointed is Checkpointed.AUTO:
            raise ValueError("an encoder must be told COLO or REMUS; AUTO is for decoding")
        self._position = Tracker(channel, checkpointed)
        self._offset = 0

    def can_send(self, record: Record) -> bool:
        """Whether C{record} may be sent now (e.g. a heartbeat between two headers may not)."""
        return self._position.refusal(record) is None

    def send_buffers(self, record: Record) -> list[Chunk]:
        """
        The wire form of C{record} as a list of buffers for
        C{ITransport.writeSequence}; page data is not copied.

        @raise StreamError: C{record} is malformed or not allowed here.
        """
        reason = self._position.refusal(record)
        if reason is None:
            try:
                chunks = write_record(record)
            except ValueError as e:
                reason = str(e)
        if reason is not None:
            raise StreamError(self._offset, f"cannot send {record_name(record)}: {reason}")
        self._position.advance(record)
        self._offset += sum(len(chunk) for chunk in chunks)
        return chunks

    def send(self, record: Record) -> bytes:
        """The wire form of C{record} as one C{bytes} (a copy; see L{send_buffers})."""
        return b"".join(self.send_buffers(record))
