# -*- test-case-name: tests.protocol.test_decoder -*-
"""The codec's single error type, so callers catch one thing and always learn where."""

from __future__ import annotations


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
