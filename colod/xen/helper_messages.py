# -*- test-case-name: tests.xen.test_helper_messages -*-
"""
The message protocol of Xen 4.17's libxl-save-helper, sans-IO: bytes from the
helper's stdout in, typed messages out; replies out as bytes for its stdin.

Framing, from libxl_save_helper.c (C{helper_transmitmsg}) and
libxl_save_callout.c (C{helper_stdout_readable}): a u16 length that counts
the message body only, not itself; then the body, which is a u16 message
number followed by the arguments, packed with no padding.  Replies are one C
int.  Everything is in the host's byte order and at the x86_64 (LP64) sizes
of its C types, since the helper is a program on the same host.

The messages are the rows of C{@msgs} in libxl_save_msgs_gen.pl; each
message class below carries its row as L{MessageSpec}.  The decoder is
stricter than libxl, which ignores a message it cannot parse (the return
value of C{recv_callback} is dropped) and then never replies to it: here any
malformed message is an error with the offset where it went wrong.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Mapping
from typing import ClassVar

import attrs

from colod.protocol.decoder import CLOSED, NEED_DATA, _Sentinel

__all__ = [
    "CLOSED", "LIBXL_CALLBACKS", "MESSAGES", "NEED_DATA", "REPLY", "Checkpoint", "Complete", "Decoder",
    "Log", "Message", "MessageError", "MessageSpec", "Postcopy", "Progress", "RestoreResults", "Side",
    "StaticDataDone", "StreamType", "Suspend", "SwitchQemuLogdirty", "WaitCheckpoint", "cbflags",
    "encode_message", "encode_reply",
]

#: The length before each message, and the message number that opens its body.
LENGTH = struct.Struct("=H")
NUMBER = struct.Struct("=H")
#: A reply: the C int the helper's callback returns (C{helper_getreply}).
REPLY = struct.Struct("=i")
#: A STRING argument: a u32 length that counts the terminating NUL, then the bytes.
STRING_LENGTH = struct.Struct("=I")
STRING = "STRING"
#: The generator's scalar C types at their LP64 sizes (xen_pfn_t is an unsigned long on x86).
SCALARS = {
    "int": struct.Struct("=i"),
    "unsigned": struct.Struct("=I"),
    "uint32_t": struct.Struct("=I"),
    "unsigned long": struct.Struct("=Q"),
    "xen_pfn_t": struct.Struct("=Q"),
}
#: The helper asserts that a body is under 64 KiB, so that its length fits the u16.
BODY_MAX = 0xFFFF


class Side(enum.Enum):
    """Which helper is talking: libxl has one receiver per side, and each knows only its own messages."""

    SAVE = "save"
    RESTORE = "restore"


class StreamType(enum.IntEnum):
    """The helper's last argument, libxc's C{xc_stream_type_t} (libxl's checkpointed_stream)."""

    PLAIN = 0
    REMUS = 1
    COLO = 2


class MessageError(Exception):
    """
    The helper's output breaks the message protocol.

    @ivar offset: byte offset in the helper's output of the first byte found wrong.
    @ivar reason: what is wrong, in words an operator can act on.
    """

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(offset, reason)
        self.offset = offset
        self.reason = reason

    def __str__(self) -> str:
        return f"offset {self.offset}: {self.reason}"


@attrs.frozen
class MessageSpec:
    """
    One row of the generator's C{@msgs}: the message number (its 1-based
    position in the table), the name, the flags and the argument C types.

    Flags: C{s}/C{r} the message exists on the save/restore side; C{c} it
    calls the toolstack's callback of that name; C{x} the toolstack
    announces that callback in cbflags; C{W}/C{A} the helper waits for a
    reply (libxl answers at once / later).
    """

    number: int
    name: str
    flags: str
    layout: tuple[str, ...]

    @property
    def sides(self) -> frozenset[Side]:
        return frozenset(side for side, flag in ((Side.SAVE, "s"), (Side.RESTORE, "r")) if flag in self.flags)

    @property
    def callback(self) -> bool:
        """A toolstack callback, as opposed to the helper's own log, progress and completion."""
        return "c" in self.flags

    @property
    def replies(self) -> bool:
        """The helper blocks until the toolstack writes one C int back."""
        return "W" in self.flags or "A" in self.flags


class Message:
    """A message from the helper; each subclass's fields are its arguments, in order."""

    SPEC: ClassVar[MessageSpec]


@attrs.frozen
class Log(Message):
    """A xentoollog message from libxc or the helper, for the toolstack's log."""

    SPEC = MessageSpec(1, "log", "sr", ("uint32_t", "uint32_t", STRING, STRING))
    #: A xentoollog level: 1 debug ... 8 error, 9 critical.
    level: int
    errno: int
    context: str
    text: str


@attrs.frozen
class Progress(Message):
    """How far libxc got, e.g. through the memory of a live pass."""

    SPEC = MessageSpec(2, "progress", "sr", (STRING, STRING, "unsigned long", "unsigned long"))
    context: str
    doing_what: str
    done: int
    total: int


@attrs.frozen
class Suspend(Message):
    """Suspend the guest now (save), or the secondary at the end of a checkpoint (COLO restore)."""

    SPEC = MessageSpec(3, "suspend", "srcxA", ())


@attrs.frozen
class Postcopy(Message):
    """A checkpoint's memory is sent (save) or applied (COLO restore): resume the guest."""

    SPEC = MessageSpec(4, "postcopy", "srcxA", ())


@attrs.frozen
class Checkpoint(Message):
    """Remus/COLO: libxc wrote (save) or read (restore) CHECKPOINT; the toolstack's records follow."""

    SPEC = MessageSpec(5, "checkpoint", "srcxA", ())


@attrs.frozen
class WaitCheckpoint(Message):
    """COLO: wait until the next checkpoint is due."""

    SPEC = MessageSpec(6, "wait_checkpoint", "srcxA", ())


@attrs.frozen
class SwitchQemuLogdirty(Message):
    """Turn the device model's dirty-page logging on or off (save only)."""

    SPEC = MessageSpec(7, "switch_qemu_logdirty", "scxA", ("uint32_t", "unsigned"))
    domid: int
    enable: int


@attrs.frozen
class StaticDataDone(Message):
    """The stream's static data is in; C{missing} says what an old stream lacked (XGR_SDD_MISSING_*)."""

    SPEC = MessageSpec(8, "static_data_done", "rcxW", ("unsigned",))
    missing: int


@attrs.frozen
class RestoreResults(Message):
    """Where the restored guest's xenstore and console rings are; the helper sends it even on failure."""

    SPEC = MessageSpec(9, "restore_results", "rcx", ("xen_pfn_t", "xen_pfn_t"))
    store_gfn: int
    console_gfn: int


@attrs.frozen
class Complete(Message):
    """xc_domain_save/restore returned; the helper waits for a reply (libxl sends 0), then exits."""

    SPEC = MessageSpec(10, "complete", "srW", ("int", "int"))
    retval: int
    errno: int


#: Every message class by number, in the generator's order.
MESSAGES: Mapping[int, type[Message]] = {
    cls.SPEC.number: cls
    for cls in (Log, Progress, Suspend, Postcopy, Checkpoint, WaitCheckpoint, SwitchQemuLogdirty,
                StaticDataDone, RestoreResults, Complete)
}

#: The callbacks libxl 4.17 implements, hence announces in cbflags, per side
#: and stream type: libxl_dom_save.c (plain save), libxl_remus.c,
#: libxl_colo_save.c, libxl_create.c (every restore), libxl_colo_restore.c.
#: They are the ones libxc asserts on for the stream type, so a helper
#: given fewer aborts.
LIBXL_CALLBACKS: Mapping[tuple[Side, StreamType], frozenset[type[Message]]] = {
    (Side.SAVE, StreamType.PLAIN): frozenset({Suspend, SwitchQemuLogdirty}),
    (Side.SAVE, StreamType.REMUS): frozenset({Suspend, Postcopy, Checkpoint, SwitchQemuLogdirty}),
    (Side.SAVE, StreamType.COLO): frozenset(
        {Suspend, Postcopy, Checkpoint, WaitCheckpoint, SwitchQemuLogdirty}),
    (Side.RESTORE, StreamType.PLAIN): frozenset({StaticDataDone, RestoreResults}),
    (Side.RESTORE, StreamType.REMUS): frozenset({StaticDataDone, RestoreResults, Checkpoint}),
    (Side.RESTORE, StreamType.COLO): frozenset(
        {StaticDataDone, RestoreResults, Suspend, Postcopy, Checkpoint, WaitCheckpoint}),
}


def cbflags(callbacks: Iterable[type[Message]]) -> int:
    """
    The helper's cbflags argument: bit C{1 << number} for each callback the
    toolstack implements; the helper passes libxc only those.

    @raise ValueError: one of them cannot be announced (log, progress, complete).
    """
    flags = 0
    for cls in callbacks:
        if "x" not in cls.SPEC.flags:
            raise ValueError(f"{cls.SPEC.name} is not a callback a toolstack announces")
        flags |= 1 << cls.SPEC.number
    return flags


class Decoder:
    """
    Decode the helper's stdout, in chunks of any size.  Usage mirrors h11::

        decoder.receive_data(chunk)          # b"" means end of file
        while (message := decoder.next_message()) is not NEED_DATA:
            if message is CLOSED: ...
            handle(message)
    """

    def __init__(self, side: Side) -> None:
        self.side = side
        self._buffer = bytearray()
        self._offset = 0  # output offset of _buffer[0]
        self._eof = False
        self._error: MessageError | None = None

    def receive_data(self, data: bytes) -> None:
        """Buffer C{data}; C{b""} marks the end of the output.  Never parses."""
        if not data:
            self._eof = True
        elif self._error is None:
            self._buffer += data

    def next_message(self) -> Message | _Sentinel:
        """
        The next complete message, C{NEED_DATA} or C{CLOSED}.

        @raise MessageError: the output is malformed; every later call raises the same error.
        """
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except MessageError as error:
            self._error = error
            self._buffer.clear()
            raise

    def _next(self) -> Message | _Sentinel:
        if len(self._buffer) >= LENGTH.size:
            (length,) = LENGTH.unpack_from(self._buffer)
            end = LENGTH.size + length
            if len(self._buffer) >= end:
                body = bytes(self._buffer[LENGTH.size:end])
                message = read_body(self.side, body, self._offset + LENGTH.size)
                del self._buffer[:end]
                self._offset += end
                return message
        if not self._eof:
            return NEED_DATA
        if self._buffer:
            raise MessageError(
                self._offset, f"the output ends inside a message ({len(self._buffer)} bytes of it)"
            )
        return CLOSED


def read_body(side: Side, body: bytes, at: int) -> Message:
    """
    The message in C{body} (its length already taken off), which starts at
    output offset C{at}; refused as libxl's receiver for C{side} would.
    """
    if len(body) < NUMBER.size:
        raise MessageError(at, f"a {len(body)}-byte message has no room for its 2-byte number")
    (number,) = NUMBER.unpack_from(body)
    cls = MESSAGES.get(number)
    if cls is None:
        raise MessageError(at, f"unknown message type {number}")
    spec = cls.SPEC
    name = f"{spec.name} (type {number})"
    if side not in spec.sides:
        raise MessageError(at, f"{name} is not a message of the {side.value} helper")
    values: list[int | str] = []
    position = NUMBER.size
    for ctype, field in zip(spec.layout, attrs.fields(cls), strict=True):
        if ctype == STRING:
            value, position = _read_string(body, position, at, f"{name}'s {field.name} STRING")
        else:
            scalar = SCALARS[ctype]
            if position + scalar.size > len(body):
                raise MessageError(
                    at + position,
                    f"{name} is {len(body)} bytes, too short for its {field.name} "
                    f"({ctype}, {scalar.size} bytes)",
                )
            (value,) = scalar.unpack_from(body, position)
            position += scalar.size
        values.append(value)
    if position != len(body):
        raise MessageError(
            at + position, f"{name} is {len(body)} bytes, {len(body) - position} more than its arguments take"
        )
    return cls(*values)


def _read_string(body: bytes, position: int, at: int, what: str) -> tuple[str, int]:
    """
    A STRING at C{position} and the position after it.  libxl requires the
    counted NUL at the end and, being C, reads only up to the first NUL; the
    text is the helper's C chars, normally ASCII, with any byte that is not
    UTF-8 kept as a \\xNN escape so that a log line can always be written.
    """
    if position + STRING_LENGTH.size > len(body):
        raise MessageError(at + position, f"the message ends before the length of {what}")
    (length,) = STRING_LENGTH.unpack_from(body, position)
    start = position + STRING_LENGTH.size
    if length == 0:
        raise MessageError(at + position, f"{what} has length 0, but a STRING counts its NUL")
    if length > len(body) - start:
        raise MessageError(
            at + position, f"{what} claims {length} bytes, but the message has {len(body) - start} left"
        )
    data = body[start:start + length]
    if data[-1] != 0:
        raise MessageError(at + start + length - 1, f"{what} does not end with a NUL")
    return data[:data.index(0)].decode("utf-8", "backslashreplace"), start + length


def encode_message(message: Message) -> bytes:
    """
    The bytes the helper writes for C{message}, length included (for
    stand-ins of the helper and for tests).

    @raise ValueError: a value does not fit its C type, a STRING holds a
        NUL, or the body would exceed 64 KiB.
    """
    spec = message.SPEC
    body = bytearray(NUMBER.pack(spec.number))
    for ctype, field in zip(spec.layout, attrs.fields(type(message)), strict=True):
        value = getattr(message, field.name)
        if ctype == STRING:
            data = value.encode("utf-8")
            if b"\0" in data:
                raise ValueError(f"{spec.name}.{field.name} holds a NUL, which a C string cannot")
            body += STRING_LENGTH.pack(len(data) + 1) + data + b"\0"
        else:
            try:
                body += SCALARS[ctype].pack(value)
            except struct.error:
                raise ValueError(f"{spec.name}.{field.name} = {value!r} does not fit a C {ctype}") from None
    if len(body) > BODY_MAX:
        raise ValueError(f"{spec.name} would be {len(body)} bytes; the helper's limit is {BODY_MAX}")
    return LENGTH.pack(len(body)) + body


def encode_reply(value: int) -> bytes:
    """
    A reply for the helper's stdin.

    @raise ValueError: C{value} does not fit a C int.
    """
    try:
        return REPLY.pack(value)
    except struct.error:
        raise ValueError(f"reply {value!r} does not fit a C int") from None
