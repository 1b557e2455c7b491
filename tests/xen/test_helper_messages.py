"""
The helper-message codec against Xen 4.17's libxl_save_msgs_gen.pl: its
table, byte-exact vectors written by hand from it, a capture of Debian's
real helper, every split of a stream, hostile bytes, and each refusal.

The vectors are for a little-endian LP64 host (x86_64), the only kind the
Debian helper runs on: the protocol uses the host's byte order.
"""

from __future__ import annotations

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from colod.xen.helper_messages import (
    CLOSED,
    LIBXL_CALLBACKS,
    MESSAGES,
    NEED_DATA,
    Checkpoint,
    Complete,
    Decoder,
    Log,
    Message,
    MessageError,
    Postcopy,
    Progress,
    RestoreResults,
    Side,
    StaticDataDone,
    StreamType,
    Suspend,
    SwitchQemuLogdirty,
    WaitCheckpoint,
    cbflags,
    encode_message,
    encode_reply,
)

_SETTINGS = settings(max_examples=200, deadline=None, database=None,
                     suppress_health_check=[HealthCheck.too_slow])

#: @msgs in libxl_save_msgs_gen.pl at RELEASE-4.17.7, transcribed row by row:
#: flags, name, argument C types.
GENERATOR_MSGS = [
    ("sr", "log", ("uint32_t", "uint32_t", "STRING", "STRING")),
    ("sr", "progress", ("STRING", "STRING", "unsigned long", "unsigned long")),
    ("srcxA", "suspend", ()),
    ("srcxA", "postcopy", ()),
    ("srcxA", "checkpoint", ()),
    ("srcxA", "wait_checkpoint", ()),
    ("scxA", "switch_qemu_logdirty", ("uint32_t", "unsigned")),
    ("rcxW", "static_data_done", ("unsigned",)),
    ("rcx", "restore_results", ("xen_pfn_t", "xen_pfn_t")),
    ("srW", "complete", ("int", "int")),
]

#: (message, its bytes): u16 body length (not counting itself), u16 number, arguments.
GOLDEN: list[tuple[Message, str]] = [
    (Log(8, 2, "ctx", "hi"), "1900 0100 08000000 02000000 04000000 63747800 03000000 686900"),
    (Progress("xc", "Memory", 5, 1 << 32),
     "2400 0200 03000000 786300 07000000 4d656d6f727900 0500000000000000 0000000001000000"),
    (Suspend(), "0200 0300"),
    (Postcopy(), "0200 0400"),
    (Checkpoint(), "0200 0500"),
    (WaitCheckpoint(), "0200 0600"),
    (SwitchQemuLogdirty(7, 1), "0a00 0700 07000000 01000000"),
    (StaticDataDone(3), "0600 0800 03000000"),
    (RestoreResults(0xFEFFC, 0xFEFFD), "1200 0900 fcef0f0000000000 fdef0f0000000000"),
    (Complete(-1, 22), "0a00 0a00 ffffffff 16000000"),
]

#: Debian's helper (xen-utils-4.17 4.17.7) run as `--save-domain 3 -1 5 1 136 0`
#: on a host without Xen: everything it wrote on stdout before exiting 255.
DEBIAN_SAVE_WITHOUT_XEN = (
    "320001000100000000000000120000006c6962786c2d736176652d68656c706572000e0000007374"
    "617274696e672073617665005200010008000000020000000800000078656e63616c6c0038000000"
    "436f756c64206e6f74206f627461696e2068616e646c65206f6e2070726976696c6567656420636f"
    "6d6d616e6420696e74657266616365003d0001000800000002000000120000006c6962786c2d7361"
    "76652d68656c706572001900000078635f696e746572666163655f6f70656e206661696c656400"
)


def golden(side: Side) -> list[tuple[Message, bytes]]:
    return [(message, bytes.fromhex(hex_)) for message, hex_ in GOLDEN if side in message.SPEC.sides]


def decode_all(side: Side, *chunks: bytes) -> list[Message]:
    """Feed C{chunks}, then end of file; every message, asserting a clean end."""
    decoder = Decoder(side)
    out: list[Message] = []
    for chunk in chunks:
        if chunk:
            decoder.receive_data(chunk)
        while (message := decoder.next_message()) is not NEED_DATA:
            out.append(message)
    decoder.receive_data(b"")
    assert decoder.next_message() is CLOSED
    return out


def refusal(side: Side, hex_: str) -> MessageError:
    with pytest.raises(MessageError) as caught:
        decode_all(side, bytes.fromhex(hex_))
    return caught.value


# --- the table --------------------------------------------------------------------


def test_message_table_is_the_generators() -> None:
    """Numbers are 1-based positions in @msgs; flags, names and argument types match row by row."""
    assert list(MESSAGES) == list(range(1, len(GENERATOR_MSGS) + 1))
    rows = [(cls.SPEC.flags, cls.SPEC.name, cls.SPEC.layout) for cls in MESSAGES.values()]
    assert rows == GENERATOR_MSGS
    for cls in MESSAGES.values():
        assert len(attrs.fields(cls)) == len(cls.SPEC.layout), cls


def test_sides_and_replies_follow_the_flags() -> None:
    save = {cls.SPEC.name for cls in MESSAGES.values() if Side.SAVE in cls.SPEC.sides}
    restore = {cls.SPEC.name for cls in MESSAGES.values() if Side.RESTORE in cls.SPEC.sides}
    replies = {cls.SPEC.name for cls in MESSAGES.values() if cls.SPEC.replies}
    assert save == {"log", "progress", "suspend", "postcopy", "checkpoint", "wait_checkpoint",
                    "switch_qemu_logdirty", "complete"}
    assert restore == {"log", "progress", "suspend", "postcopy", "checkpoint", "wait_checkpoint",
                       "static_data_done", "restore_results", "complete"}
    assert replies == {"suspend", "postcopy", "checkpoint", "wait_checkpoint", "switch_qemu_logdirty",
                       "static_data_done", "complete"}


@pytest.mark.parametrize(("side", "stream_type", "value"), [
    (Side.SAVE, StreamType.PLAIN, 136),
    (Side.SAVE, StreamType.REMUS, 184),
    (Side.SAVE, StreamType.COLO, 248),
    (Side.RESTORE, StreamType.PLAIN, 768),
    (Side.RESTORE, StreamType.REMUS, 800),
    (Side.RESTORE, StreamType.COLO, 888),
])
def test_cbflags_are_libxls(side: Side, stream_type: StreamType, value: int) -> None:
    """The values libxl passes (184 seen on the command line of a real Remus save, NOTES-spike.md)."""
    assert cbflags(LIBXL_CALLBACKS[side, stream_type]) == value
    assert all(side in cls.SPEC.sides for cls in LIBXL_CALLBACKS[side, stream_type])


@pytest.mark.parametrize("cls", [Log, Progress, Complete])
def test_cbflags_refuses_what_cannot_be_announced(cls: type[Message]) -> None:
    with pytest.raises(ValueError, match=f"^{cls.SPEC.name} is not a callback a toolstack announces$"):
        cbflags([Suspend, cls])


# --- bytes ----------------------------------------------------------------------


@pytest.mark.parametrize(("message", "hex_"), GOLDEN, ids=[m.SPEC.name for m, _ in GOLDEN])
def test_golden_vectors_both_ways(message: Message, hex_: str) -> None:
    data = bytes.fromhex(hex_)
    assert encode_message(message) == data
    for side in message.SPEC.sides:
        assert decode_all(side, data) == [message]


def test_real_helper_output() -> None:
    """Debian's binary, failing without a hypervisor, says why in three log messages."""
    assert decode_all(Side.SAVE, bytes.fromhex(DEBIAN_SAVE_WITHOUT_XEN)) == [
        Log(1, 0, "libxl-save-helper", "starting save"),
        Log(8, 2, "xencall", "Could not obtain handle on privileged command interface"),
        Log(8, 2, "libxl-save-helper", "xc_interface_open failed"),
    ]


@pytest.mark.parametrize("side", list(Side))
def test_every_split_of_a_stream(side: Side) -> None:
    """All of a side's messages in a row, cut in two at every offset, then fed byte by byte."""
    vectors = golden(side)
    data = b"".join(raw for _, raw in vectors)
    expected = [message for message, _ in vectors]
    for cut in range(len(data) + 1):
        assert decode_all(side, data[:cut], data[cut:]) == expected, cut
    assert decode_all(side, *(data[i:i + 1] for i in range(len(data)))) == expected


def test_need_data_until_the_last_byte() -> None:
    data = bytes.fromhex("0a00 0a00 00000000 00000000")
    decoder = Decoder(Side.SAVE)
    for i in range(len(data) - 1):
        decoder.receive_data(data[i:i + 1])
        assert decoder.next_message() is NEED_DATA
    decoder.receive_data(data[-1:])
    assert decoder.next_message() == Complete(0, 0)
    assert decoder.next_message() is NEED_DATA


def test_string_is_read_up_to_its_first_nul_like_libxl() -> None:
    """libxl only checks the last byte and then uses a C string."""
    data = bytes.fromhex("1900 0100 05000000 00000000 04000000 63007800 03000000 686900")
    assert decode_all(Side.SAVE, data) == [Log(5, 0, "c", "hi")]


def test_bytes_that_are_not_utf8_are_escaped() -> None:
    data = bytes.fromhex("1600 0100 05000000 00000000 01000000 00 03000000 ff6100")
    assert decode_all(Side.SAVE, data) == [Log(5, 0, "", "\\xffa")]


# --- refusals -----------------------------------------------------------------------


@pytest.mark.parametrize(("side", "hex_", "offset", "reason"), [
    (Side.SAVE, "0000", 2, "a 0-byte message has no room for its 2-byte number"),
    (Side.SAVE, "0100 03", 2, "a 1-byte message has no room for its 2-byte number"),
    (Side.SAVE, "0200 0000", 2, "unknown message type 0"),
    (Side.SAVE, "0200 0b00", 2, "unknown message type 11"),
    (Side.SAVE, "0600 0800 03000000", 2, "static_data_done (type 8) is not a message of the save helper"),
    (Side.SAVE, "1200 0900" + "00" * 16, 2, "restore_results (type 9) is not a message of the save helper"),
    (Side.RESTORE, "0a00 0700 07000000 01000000", 2,
     "switch_qemu_logdirty (type 7) is not a message of the restore helper"),
    (Side.SAVE, "0600 0a00 00000000", 8,
     "complete (type 10) is 6 bytes, too short for its errno (int, 4 bytes)"),
    (Side.RESTORE, "0400 0800 0300", 4,
     "static_data_done (type 8) is 4 bytes, too short for its missing (unsigned, 4 bytes)"),
    (Side.SAVE, "0400 0300 0000", 4, "suspend (type 3) is 4 bytes, 2 more than its arguments take"),
    (Side.SAVE, "0b00 0a00 00000000 00000000 00", 12,
     "complete (type 10) is 11 bytes, 1 more than its arguments take"),
    (Side.SAVE, "0c00 0100 05000000 00000000 0000", 12,
     "the message ends before the length of log (type 1)'s context STRING"),
    (Side.SAVE, "0e00 0100 05000000 00000000 00000000", 12,
     "log (type 1)'s context STRING has length 0, but a STRING counts its NUL"),
    (Side.SAVE, "1100 0100 05000000 00000000 04000000 637478", 12,
     "log (type 1)'s context STRING claims 4 bytes, but the message has 3 left"),
    (Side.SAVE, "1200 0100 05000000 00000000 04000000 63747878", 19,
     "log (type 1)'s context STRING does not end with a NUL"),
    (Side.SAVE, "1700 0100 05000000 00000000 01000000 00 05000000 68690000", 17,
     "log (type 1)'s text STRING claims 5 bytes, but the message has 4 left"),
    (Side.SAVE, "0200 03", 0, "the output ends inside a message (3 bytes of it)"),
    (Side.SAVE, "02", 0, "the output ends inside a message (1 bytes of it)"),
])
def test_refusals(side: Side, hex_: str, offset: int, reason: str) -> None:
    error = refusal(side, hex_)
    assert (error.offset, error.reason) == (offset, reason)
    assert str(error) == f"offset {offset}: {reason}"


def test_offsets_count_from_the_start_of_the_output() -> None:
    """A bad message after a good one is placed in the whole output, not in its own body."""
    error = refusal(Side.SAVE, "0200 0300" + "0200 0b00")
    assert (error.offset, error.reason) == (6, "unknown message type 11")


def test_error_is_sticky() -> None:
    decoder = Decoder(Side.SAVE)
    decoder.receive_data(bytes.fromhex("0200 0b00"))
    with pytest.raises(MessageError) as first:
        decoder.next_message()
    decoder.receive_data(bytes.fromhex("0200 0300"))
    with pytest.raises(MessageError) as again:
        decoder.next_message()
    assert again.value is first.value


@pytest.mark.parametrize(("message", "reason"), [
    (Log(1, 0, "a\0b", ""), "log.context holds a NUL, which a C string cannot"),
    (SwitchQemuLogdirty(-1, 0), "switch_qemu_logdirty.domid = -1 does not fit a C uint32_t"),
    (Complete(1 << 31, 0), "complete.retval = 2147483648 does not fit a C int"),
    (Progress("", "", 1 << 64, 0), "progress.done = 18446744073709551616 does not fit a C unsigned long"),
    (Log(1, 0, "", "x" * 0xFFFF), "log would be 65555 bytes; the helper's limit is 65535"),
])
def test_encoder_refusals(message: Message, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        encode_message(message)
    assert str(caught.value) == reason


def test_largest_message() -> None:
    """The u16 length counts only the body, so a body may take all 65535 bytes it can express."""
    message = Log(1, 0, "", "x" * 65515)
    data = encode_message(message)
    assert data[:2] == bytes.fromhex("ffff") and len(data) == 2 + 65535
    assert decode_all(Side.SAVE, data) == [message]


def test_replies() -> None:
    assert encode_reply(1) == bytes.fromhex("01000000")
    assert encode_reply(-3) == bytes.fromhex("fdffffff")
    with pytest.raises(ValueError, match=r"^reply 2147483648 does not fit a C int$"):
        encode_reply(1 << 31)


# --- properties ---------------------------------------------------------------------

_u32 = st.integers(0, (1 << 32) - 1)
_u64 = st.integers(0, (1 << 64) - 1)
_int = st.integers(-(1 << 31), (1 << 31) - 1)
_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=40)
_messages = st.one_of(
    st.builds(Log, _u32, _u32, _text, _text),
    st.builds(Progress, _text, _text, _u64, _u64),
    st.sampled_from([Suspend(), Postcopy(), Checkpoint(), WaitCheckpoint()]),
    st.builds(SwitchQemuLogdirty, _u32, _u32),
    st.builds(StaticDataDone, _u32),
    st.builds(RestoreResults, _u64, _u64),
    st.builds(Complete, _int, _int),
)


@_SETTINGS
@given(st.lists(_messages, max_size=8), st.lists(st.integers(1, 60), max_size=8))
def test_encode_then_decode_in_any_chunks(messages: list[Message], sizes: list[int]) -> None:
    for side in Side:
        mine = [m for m in messages if side in m.SPEC.sides]
        data = b"".join(encode_message(m) for m in mine)
        chunks, position = [], 0
        for size in sizes:
            chunks.append(data[position:position + size])
            position += size
        chunks.append(data[position:])
        assert decode_all(side, *chunks) == mine


@_SETTINGS
@given(st.sampled_from(list(Side)), st.binary(max_size=300), st.lists(st.integers(1, 64), max_size=10))
def test_arbitrary_bytes_never_crash(side: Side, data: bytes, sizes: list[int]) -> None:
    """Anything at all yields messages, NEED_DATA, CLOSED or a MessageError; nothing else escapes."""
    decoder = Decoder(side)
    position = 0
    try:
        for size in [*sizes, len(data)]:
            chunk = data[position:position + size]
            position += size
            if chunk:
                decoder.receive_data(chunk)
            while (message := decoder.next_message()) is not NEED_DATA:
                assert isinstance(message, Message)
        decoder.receive_data(b"")
        assert decoder.next_message() is CLOSED
    except MessageError as error:
        assert 0 <= error.offset <= len(data)
