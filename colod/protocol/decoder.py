# -*- test-case-name: tests.protocol.test_decoder -*-
"""
The incremental stream decoder: bytes in, in chunks of any size, typed
records out.  It owns no socket, file or reactor.

Usage mirrors h11::

    decoder.receive_data(chunk)          # b"" means end of file
    while (record := decoder.next_record()) is not NEED_DATA:
        if record is CLOSED: ...
        handle(record)

Memory: at most one record (bodies are refused above 128 MiB before anything
is allocated) plus a record header is held on the decoder's account; a body
that arrives whole inside one received chunk is handed out as a memoryview
of that chunk, without a copy.  Call C{next_record} until C{NEED_DATA} after
each C{receive_data}, or received chunks pile up.
"""

from __future__ import annotations

from collections import deque

import attrs

from .errors import StreamError
from .readers import (
    COLOD_READERS,
    LIBXC_READERS,
    LIBXL_READERS,
    Reader,
    read_domain_header,
    read_image_header,
    read_stream_header,
)
from .records import DomainHeader, ImageHeader, Record, SkippedRecord, StreamHeader
from .state import FINAL, HEADER_STATES, NAMESPACE, Channel, Checkpointed, State, Tracker
from .wire import (
    DOMAIN_HEADER,
    IMAGE_HEADER,
    REC_LENGTH_MAX,
    REC_TYPE_OPTIONAL,
    RECORD_HEADER,
    STREAM_HEADER,
    Namespace,
    padding,
)


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: C{next_record} needs more bytes (or C{receive_data(b"")}) first.
NEED_DATA = _Sentinel("NEED_DATA")
#: The peer closed its side where a stream may end; nothing more will come.
CLOSED = _Sentinel("CLOSED")

_HEADER_READERS: dict[type, tuple[int, Reader]] = {
    StreamHeader: (STREAM_HEADER.size, read_stream_header),
    ImageHeader: (IMAGE_HEADER.size, read_image_header),
    DomainHeader: (DOMAIN_HEADER.size, read_domain_header),
}
_READERS = {Namespace.LIBXL: LIBXL_READERS, Namespace.LIBXC: LIBXC_READERS}


@attrs.define
class Frame:
    """Where the last record returned sat: its offset and its body length."""

    offset: int
    length: int


@attrs.define
class _Pending:
    """A record whose header is read and whose body is still arriving."""

    offset: int
    namespace: Namespace
    type: int
    length: int
    size: int  # body plus padding
    body: bytearray | None = None


class Decoder:
    """
    Decode one direction of the peer link, or a saved stream.

    C{checkpointed} says what a checkpointed main stream does between
    checkpoints: COLO (the peer link's), REMUS (Xen's C{xl remus}), or AUTO,
    decided by the record after the first CHECKPOINT_END (see
    L{colod.protocol.state}).

    @ivar last_frame: position of the record last returned by L{next_record}.
    """

    def __init__(
        self, channel: Channel = Channel.MAIN, checkpointed: Checkpointed = Checkpointed.COLO
    ) -> None:
        self._position = Tracker(channel, checkpointed)
        self._chunks: deque[memoryview] = deque()
        self._buffered = 0
        self._offset = 0  # stream offset of the first unconsumed byte
        self._eof = False
        self._pending: _Pending | None = None
        self._error: StreamError | None = None
        self.last_frame = Frame(0, 0)

    @property
    def checkpointed(self) -> Checkpointed:
        """The mode the stream is read in: AUTO until an AUTO stream's first checkpoint decides it."""
        return self._position.mode

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """
        Buffer C{data}; C{b""} marks the end of the stream.  Never parses.

        Records may keep views of C{data}: pass C{bytes}, or do not change
        the buffer afterwards.
        """
        if self._error is not None:
            return
        if self._eof and data:
            self._fail(StreamError(self._offset + self._buffered, "data received after end of file"))
            return
        if not data:
            self._eof = True
            return
        view = memoryview(data).cast("B")
        self._chunks.append(view)
        self._buffered += len(view)

    def skip(self, record: Record) -> None:
        """
        Move the stream's position past C{record} as if it had been read
        here, without its bytes: for a stream whose writer leaves out records
        that another writer puts in on the same fd (a save helper's libxc
        records, and libxl's between them).  Call it between records only,
        after the last L{next_record} and before the bytes that follow.

        @raise StreamError: C{record} may not come here.
        """
        if self._error is not None:
            raise self._error
        if self._pending is not None or self._position.state in HEADER_STATES and self._buffered:
            raise ValueError("skip() is only for record boundaries with nothing of the next record read")
        reason = self._position.advance(record)
        if reason is not None:
            raise StreamError(self._offset, reason)

    def next_record(self) -> Record | _Sentinel:
        """
        The next complete record, C{NEED_DATA} or C{CLOSED}.

        @raise StreamError: the stream is malformed; every later call raises
            the same error.
        """
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except StreamError as error:
            self._fail(error)
            raise

    def _fail(self, error: StreamError) -> None:
        self._error = error
        self._position.state = State.ERROR
        self._chunks.clear()
        self._pending = None

    def _next(self) -> Record | _Sentinel:
        kind = HEADER_STATES.get(self._position.state)
        if kind is not None:
            size, reader = _HEADER_READERS[kind]
            offset = self._offset
            data = self._take(size)
            if data is None:
                return self._starved()
            record = reader(data, offset)
            self.last_frame = Frame(offset, size)
        else:
            record = self._next_framed()
            if record is None:
                return self._starved()
        self._advance(record)
        return record

    def _next_framed(self) -> Record | None:
        if self._pending is None:
            state = self._position.state
            if state in FINAL and self._buffered:
                # No count: only the bytes received so far are known, and those depend on chunking.
                raise StreamError(self._offset, f"data {state.value}")
            offset = self._offset
            header = self._take(RECORD_HEADER.size)
            if header is None:
                return None
            rtype, length = RECORD_HEADER.unpack(header)
            if length > REC_LENGTH_MAX:
                raise StreamError(
                    offset + 4, f"record type {rtype:#x} claims {length} bytes, over the 128 MiB limit"
                )
            reason = self._position.header(rtype, length)
            if reason is not None:
                raise StreamError(offset, reason)
            namespace = NAMESPACE[self._position.state]
            self._pending = _Pending(offset, namespace, rtype, length, length + padding(length))
        pending = self._pending
        raw = self._collect(pending)
        if raw is None:
            return None
        self._pending = None
        at = pending.offset + RECORD_HEADER.size
        if any(raw[pending.length:]):
            raise StreamError(at + pending.length, "record padding is not zero")
        record = self._read_body(pending, raw[: pending.length], at)
        self.last_frame = Frame(pending.offset, pending.length)
        return record

    def _read_body(self, pending: _Pending, body: memoryview, at: int) -> Record:
        reader = COLOD_READERS.get(pending.type) or _READERS[pending.namespace].get(pending.type)
        if reader is not None:
            return reader(body, at)
        if pending.namespace is Namespace.LIBXC and pending.type & REC_TYPE_OPTIONAL:
            return SkippedRecord(type=pending.type, length=pending.length)
        if pending.namespace is Namespace.LIBXL:
            reason = (
                f"unknown libxl record type {pending.type:#010x} "
                "(libxl accepts no unknown records, optional or not)"
            )
        else:
            reason = f"unknown mandatory libxc record type {pending.type:#010x}"
        raise StreamError(pending.offset, reason)

    def _advance(self, record: Record) -> None:
        reason = self._position.advance(record)
        if reason is not None:
            raise StreamError(self.last_frame.offset, reason)

    def _starved(self) -> _Sentinel:
        if not self._eof:
            return NEED_DATA
        if self._pending is not None:
            pending = self._pending
            raise StreamError(
                pending.offset,
                f"stream ends inside the {pending.length}-byte record "
                f"(type {pending.type:#x}) that starts here",
            )
        if self._buffered:
            raise StreamError(self._offset, f"stream ends inside a header ({self._buffered} bytes of it)")
        reason = self._position.end_of_file()
        if reason is not None:
            raise StreamError(self._offset, reason)
        return CLOSED

    def _take(self, size: int) -> memoryview | None:
        """Consume exactly C{size} bytes if they are all here (headers only)."""
        if self._buffered < size:
            return None
        first = self._chunks[0]
        if len(first) >= size:
            data = first[:size]
            self._consume_front(size)
            return data
        out = bytearray()
        self._fill(out, size)
        return memoryview(out)

    def _collect(self, pending: _Pending) -> memoryview | None:
        """
        The padded body once it is all here.  A body inside one chunk is a
        view of it; one that spans chunks is copied into a buffer that grows
        only as bytes arrive, so a lying length costs nothing up front.
        """
        if not pending.size:
            return memoryview(b"")
        if pending.body is None:
            if not self._chunks:
                return None
            first = self._chunks[0]
            if len(first) >= pending.size:
                self._consume_front(pending.size)
                return first[: pending.size]
            pending.body = bytearray()
        self._fill(pending.body, pending.size)
        if len(pending.body) < pending.size:
            return None
        return memoryview(pending.body)

    def _fill(self, out: bytearray, size: int) -> None:
        """Move buffered bytes onto the end of C{out} until it holds C{size} bytes."""
        while len(out) < size and self._chunks:
            chunk = self._chunks[0]
            n = min(len(chunk), size - len(out))
            out += chunk[:n]
            self._consume_front(n)

    def _consume_front(self, n: int) -> None:
        chunk = self._chunks[0]
        if n == len(chunk):
            self._chunks.popleft()
        else:
            self._chunks[0] = chunk[n:]
        self._buffered -= n
        self._offset += n
