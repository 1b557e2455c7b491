# -*- test-case-name: tests.protocol.test_decoder,tests.protocol.test_peer -*-
"""
The codec's single error type, so callers catch one thing and always learn
where; the two ways a peer link ends on purpose, kept apart from any failure
so that the engine can tell a deliberate end from a crash; and a stream that
stopped short, which is a lost connection, not a malformed stream.
"""

from __future__ import annotations

from typing import ClassVar

from twisted.internet.error import ConnectionLost

from .wire import ReplicationEndReason


class StreamError(Exception):
    """
    A stream (or a record handed to the encoder) breaks the format.

    @ivar offset: byte offset in the stream of the first byte found wrong
        (for the encoder: the offset the refused record would have had).
    @ivar reason: what is wrong, in words an operator can act on.
    """

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(offset, reason)
        self.offset = offset
        self.reason = reason

    def __str__(self) -> str:
        return f"offset {self.offset}: {self.reason}"


class ReplicationEnded(Exception):
    """
    Replication was ended on purpose with COLOD_REPLICATION_END, not lost.

    @ivar reason: the sender's reason code.
    @ivar text: the sender's explanation, for the operator.
    """

    #: Who ended it, for the message.
    WHO: ClassVar[str]

    def __init__(self, reason: ReplicationEndReason, text: str) -> None:
        super().__init__(reason, text)
        self.reason = reason
        self.text = text

    def __str__(self) -> str:
        said = f": {self.text}" if self.text else ""
        return f"{self.WHO} ended replication: {self.reason.name.lower().replace('_', ' ')}{said}"


class PeerEndedReplication(ReplicationEnded):
    """The peer sent COLOD_REPLICATION_END; after SHUTDOWN, do not take over."""

    WHO = "the peer"


class LocalEndedReplication(ReplicationEnded):
    """This side ended replication (L{colod.protocol.peer.PeerLink.end})."""

    WHO = "this colod"


class StreamCutShort(ConnectionLost):
    """
    The connection closed where the peer's stream may not end: inside a
    record or a header, or between records where more must follow.  A peer
    whose host died while writing a record leaves exactly this, so it is a
    lost connection (a secondary takes over from its last complete
    checkpoint), never a protocol error, which would mean "do not take over".

    @ivar stream_error: the codec's account of where the stream stopped.
    """

    def __init__(self, stream_error: StreamError) -> None:
        super().__init__(stream_error)
        self.stream_error = stream_error

    def __str__(self) -> str:
        return f"the link closed before the peer's stream was complete ({self.stream_error})"
