# -*- test-case-name: tests.test_fuzz -*-
"""
The fuzz campaign: hostile bytes against every decoder that a peer or a Xen
helper can reach, so that a crash is found here and not by an attacker.

    python -m tests.fuzz                          # 1,000,000 inputs, seed 0
    python -m tests.fuzz --count 50000 --seconds 60 --seed 7 --target link-secondary
    python -m tests.fuzz --seed 0 --replay stream-main-colo 1234     # one input, traceback and all

Targets: the stream decoder (C{colod.protocol.Decoder}) on the main channel
in COLO, REMUS and AUTO modes and on the back channel; the handshake as each
role reads it (C{Hello.parse} on the bytes gathered so far, then
C{check_peer}, then the rest into the decoder of the channel that role
receives, as C{PeerLink} does); the save helper's message decoder
(C{colod.xen.helper_messages.Decoder}) for each side; the control protocol
(C{colod.control.protocol}) as the daemon reads requests and as colodctl
reads responses (C{LineReader}, then each line parsed).

Inputs come from valid seeds: the streams of L{tests.protocol.streams}, the
golden vectors of L{tests.protocol.test_golden} and
L{tests.xen.test_helper_messages} (Debian's real helper output included),
and sequences drawn by hypothesis from L{tests.protocol.strategies} (random
walks of the state table) and from the helper tests' message strategy.  Each
seed is kept cut into its frames (headers, records, the hello, messages), so
that mutations can be structure-aware: frames dropped, duplicated, swapped,
spliced in from another seed, cut off; length fields that lie (a little or
wildly); fields overwritten with boundary values and type numbers.  Then
byte-level ones: bit flips, boundary bytes, insertions, deletions,
truncations, splices, duplicated ranges.  Each input is fed in chunks
(whole, byte by byte, small, large, or cut at and next to frame edges), then
usually end of file.  Input I of target T under seed S is a pure function of
(S, T, I, the drawn corpus): C{--replay} rebuilds it.

Acceptable outcomes: records (messages) and a clean end, or the target's
named errors (L{StreamError}, L{HandshakeError}, L{MessageError}), whose
offset must lie inside the input.  Anything else is a *find*: any other
exception (IndexError, struct.error, MemoryError under the address-space
limit, ...), an input that runs past C{--timeout} (a hang), or a named
error that points outside the input.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import random
import re
import resource
import signal
import struct
import sys
import time
import traceback
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from types import FrameType

import attrs
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from colod.control import protocol as control
from colod.protocol import (
    Channel,
    CheckpointDirtyPfnList,
    Checkpointed,
    Decoder,
    EmulatorXenstoreData,
    Encoder,
    HvmParams,
    PageData,
    PageType,
    Record,
    StreamError,
    X86CpuidPolicy,
    X86MsrPolicy,
    X86PvP2mFrames,
)
from colod.protocol.handshake import MAGIC, HandshakeError, Hello, check_peer
from colod.protocol.wire import REC_LENGTH_MAX, RECORD_HEADER, ColodType, LibxcType, LibxlType, padding
from colod.protocol.writers import write_record
from colod.role import Role
from colod.xen import helper_messages as helper

from .protocol import test_golden
from .protocol.strategies import sequences
from .protocol.streams import colo_back, colo_main, drain, plain_hvm, plain_pv, remus_main
from .xen import test_helper_messages

#: Inputs in a full campaign: issue 13 asks for at least a million.
DEFAULT_COUNT = 1_000_000
#: Share of inputs whose memory is measured, besides every one built to amplify (L{_dense_record}).
MEASURED = 1 / 16
#: A find: an input that makes the decoder allocate more than this many times its size at once (the
#: records it returns included), plus a constant for the decoder itself.
AMPLIFICATION = 16
SLACK = 256 << 10
#: Sequences drawn by hypothesis per channel (and helper message lists per side) for the seed corpus.
DEFAULT_DRAWN = 60

# --- inputs -------------------------------------------------------------------------


@attrs.frozen
class Seed:
    """A valid (or deliberately refused) input, cut into its frames: headers, records, hello, messages."""

    frames: tuple[bytes, ...]


@attrs.frozen
class Input:
    """One test case: the bytes, where they are cut into chunks, and whether end of file follows."""

    data: bytes
    cuts: tuple[int, ...]
    eof: bool
    #: Whether the memory it takes is measured (tracemalloc slows a run fivefold, so only some are).
    measure: bool = False

    def chunks(self) -> Iterator[bytes]:
        """The non-empty chunks, in order (an empty one would mean end of file)."""
        for start, end in itertools.pairwise((0, *self.cuts, len(self.data))):
            if end > start:
                yield self.data[start:end]


#: Where a frame's length fields are: (offset, layout) pairs, for the length-lie mutation.
LengthFields = Callable[[bytes], list[tuple[int, struct.Struct]]]
#: Changes a seed's frames in place.
FrameMutation = Callable[[random.Random, list[bytes], "Target"], None]


@attrs.frozen
class Target:
    """A decoder under test, the seeds its inputs grow from, and what it may raise."""

    name: str
    seeds: tuple[Seed, ...]
    length_fields: LengthFields
    #: Feeds one input to a fresh decoder; returns, or raises one of C{named} (or a find).
    feed: Callable[[Input], None]
    named: tuple[type[Exception], ...]
    #: The structure-aware mutations that fit its frames.
    frame_mutations: tuple[FrameMutation, ...]


# --- the targets --------------------------------------------------------------------


def _stream_feed(channel: Channel, mode: Checkpointed) -> Callable[[Input], None]:
    def feed(case: Input) -> None:
        decoder = Decoder(channel, mode)
        for chunk in case.chunks():
            decoder.receive_data(chunk)
            drain(decoder)
        if case.eof:
            decoder.receive_data(b"")
            drain(decoder)

    return feed


def _link_feed(local: Hello, peer_node: str) -> Callable[[Input], None]:
    """Read as C{PeerLink} does: the hello from the bytes so far, its checks, then the stream."""
    receives = Channel.MAIN if local.role is Role.SECONDARY else Channel.BACK

    def feed(case: Input) -> None:
        gathered = b""
        decoder: Decoder | None = None
        for chunk in case.chunks():
            if decoder is None:
                gathered += chunk
                parsed = Hello.parse(gathered)
                if parsed is None:
                    continue
                peer, size = parsed
                check_peer(local, peer_node, peer)
                decoder = Decoder(receives)
                chunk = gathered[size:]
                if not chunk:
                    continue
            decoder.receive_data(chunk)
            drain(decoder)
        if case.eof and decoder is not None:
            decoder.receive_data(b"")
            drain(decoder)

    return feed


def _helper_feed(side: helper.Side) -> Callable[[Input], None]:
    def feed(case: Input) -> None:
        decoder = helper.Decoder(side)
        for chunk in case.chunks():
            decoder.receive_data(chunk)
            while decoder.next_message() is not helper.NEED_DATA:
                pass
        if case.eof:
            decoder.receive_data(b"")
            while decoder.next_message() not in (helper.NEED_DATA, helper.CLOSED):
                pass

    return feed


def _control_feed(limit: int, parse: Callable[[bytes], object]) -> Callable[[Input], None]:
    """Read lines as the control socket's ends do, each parsed (a named error ends the input)."""
    def feed(case: Input) -> None:
        reader = control.LineReader(limit)
        for chunk in case.chunks():
            reader.receive_data(chunk)
            while (line := reader.next_line()) is not None:
                parse(line)

    return feed


def _control_seeds() -> tuple[tuple[Seed, ...], tuple[Seed, ...]]:
    """Requests (each command, alone and in a row) and responses (results and every error code)."""
    requests = [control.encode_request(command, **{key: "guest1" if key == "domain" else "debug"
                                                   for key in arguments})
                for command, arguments in control.COMMANDS.items()]
    requests += [b'{"version":1,"command":"drop","domain":7}\n', b'{"version":1,"command":"drop"}\n',
                 b'[{"version":1,"command":"status"}]\n', b'{"version":2,"command":"status"}\n']
    results = [{}, {"domain": "guest1", "checkpoint": 7}, {"level": "debug", "was": "info"},
               {"domains": [{"domain": "guest1", "role": "primary", "state": "protected", "checkpoints": 3,
                             "pause_p50_ms": 12.5, "error": None, "disks": ["xvda healthy"]}]}]
    responses = [control.encode_response(result) for result in results]
    responses += [control.encode_response(error=control.RequestError(code, f"{code.value}: said why"))
                  for code in control.ErrorCode]
    return ((*(Seed((line,)) for line in requests), Seed(tuple(requests))),
            (*(Seed((line,)) for line in responses), Seed(tuple(responses))))


def _no_length(frame: bytes) -> list[tuple[int, struct.Struct]]:
    return []  # JSON lines carry no length fields


def _record_length(frame: bytes) -> list[tuple[int, struct.Struct]]:
    """A framed record's u32 body length (not a fixed header's)."""
    if len(frame) >= RECORD_HEADER.size:
        _, length = RECORD_HEADER.unpack_from(frame)
        if RECORD_HEADER.size + length + padding(length) == len(frame):
            return [(4, struct.Struct("<I"))]
    return []


_HELLO_LENGTHS = [(12, struct.Struct(">H")), (14, struct.Struct(">H"))]


def _hello_or_record_length(frame: bytes) -> list[tuple[int, struct.Struct]]:
    """The hello's two name lengths, or a record's length."""
    return _HELLO_LENGTHS if frame.startswith(MAGIC) else _record_length(frame)


def _message_length(frame: bytes) -> list[tuple[int, struct.Struct]]:
    """A helper message's u16 body length."""
    return [(0, helper.LENGTH)]


def _frames(records: Sequence[Record], channel: Channel, mode: Checkpointed = Checkpointed.COLO) -> Seed:
    encoder = Encoder(channel, mode)
    return Seed(tuple(encoder.send(record) for record in records))


def _golden(channel: Channel) -> list[Seed]:
    """Every golden, decode-only and refused vector of the channel, after the records that lead to it."""
    vectors = [(position, wire) for position, _, wire in test_golden.GOLDEN]
    vectors += [(position, wire) for position, wire, _ in test_golden.DECODE_ONLY + test_golden.REFUSED]
    seeds = []
    for position, wire in vectors:
        where, prefix = test_golden.POSITIONS[position]
        if where is channel:
            seeds.append(Seed(_frames(prefix, channel).frames + (bytes.fromhex(wire.replace(" ", "")),)))
    return seeds


def _drawn(strategy: st.SearchStrategy, count: int, seed: int) -> list:
    """C{count} values drawn by hypothesis, the same ones for the same seed (and hypothesis version)."""
    values: list = []

    @hypothesis_seed(seed)
    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(value: object) -> None:
        values.append(value)

    collect()
    return values


def _hello_seeds(peer: Hello, stream: Seed) -> list[Seed]:
    """The peer's hello before C{stream}, and hellos that fail each check (long and non-ASCII names)."""
    others = [
        attrs.evolve(peer, domain="d" * 255, node="n" * 255),
        attrs.evolve(peer, domain="dömäin-节点", node=peer.node),
        attrs.evolve(peer, node="intruder"),
        attrs.evolve(peer, role=Role.PRIMARY if peer.role is Role.SECONDARY else Role.SECONDARY),
    ]
    return [Seed((hello.encode(), *stream.frames)) for hello in (peer, *others)]


def build_targets(seed: int = 0, drawn: int = DEFAULT_DRAWN) -> list[Target]:
    """Every target with its seed corpus; the same corpus for the same C{seed} and C{drawn}."""
    walks = {channel: [_frames(records, channel) for records in _drawn(sequences(channel), drawn, seed)]
             for channel in Channel}
    plain = [_frames(plain_hvm(), Channel.MAIN), _frames(plain_pv(), Channel.MAIN)]
    colo = [_frames(colo_main(2), Channel.MAIN), *plain, *_golden(Channel.MAIN), *walks[Channel.MAIN]]
    remus = [
        _frames(remus_main(2), Channel.MAIN, Checkpointed.REMUS),
        _frames(remus_main(1, failover=True), Channel.MAIN, Checkpointed.REMUS),
        *colo,
    ]
    back = [_frames(colo_back(3), Channel.BACK), *_golden(Channel.BACK), *walks[Channel.BACK]]

    primary, secondary = Hello(Role.PRIMARY, "hvm1", "node-a"), Hello(Role.SECONDARY, "hvm1", "node-b")
    to_secondary = _hello_seeds(primary, _frames(colo_main(1), Channel.MAIN))
    to_primary = _hello_seeds(secondary, _frames(colo_back(2), Channel.BACK))

    messages = _drawn(st.lists(test_helper_messages._messages, min_size=1, max_size=8), drawn, seed)
    capture = bytes.fromhex(test_helper_messages.DEBIAN_SAVE_WITHOUT_XEN)

    def helper_seeds(side: helper.Side) -> tuple[Seed, ...]:
        golden = [message for message, _ in test_helper_messages.golden(side)]
        lists = [golden, *([m for m in listed if side in m.SPEC.sides] for listed in messages)]
        if side is helper.Side.SAVE:
            lists.append(test_helper_messages.decode_all(side, capture))
        return tuple(Seed(tuple(helper.encode_message(m) for m in lst)) for lst in lists if lst)

    stream, link = (StreamError,), (HandshakeError, StreamError)
    requests, responses = _control_seeds()
    return [
        Target("stream-main-colo", tuple(colo), _record_length,
               _stream_feed(Channel.MAIN, Checkpointed.COLO), stream, RECORD_MUTATIONS),
        Target("stream-main-remus", tuple(remus), _record_length,
               _stream_feed(Channel.MAIN, Checkpointed.REMUS), stream, RECORD_MUTATIONS),
        Target("stream-main-auto", tuple(remus), _record_length,
               _stream_feed(Channel.MAIN, Checkpointed.AUTO), stream, RECORD_MUTATIONS),
        Target("stream-back", tuple(back), _record_length,
               _stream_feed(Channel.BACK, Checkpointed.COLO), stream, RECORD_MUTATIONS),
        Target("link-secondary", tuple(to_secondary), _hello_or_record_length,
               _link_feed(secondary, primary.node), link, RECORD_MUTATIONS),
        Target("link-primary", tuple(to_primary), _hello_or_record_length,
               _link_feed(primary, secondary.node), link, RECORD_MUTATIONS),
        Target("helper-save", helper_seeds(helper.Side.SAVE), _message_length,
               _helper_feed(helper.Side.SAVE), (helper.MessageError,), FRAME_MUTATIONS),
        Target("helper-restore", helper_seeds(helper.Side.RESTORE), _message_length,
               _helper_feed(helper.Side.RESTORE), (helper.MessageError,), FRAME_MUTATIONS),
        Target("control-request", requests, _no_length,
               _control_feed(control.MAX_REQUEST, control.parse_request),
               (control.RequestError, control.LineTooLong), FRAME_MUTATIONS),
        Target("control-response", responses, _no_length,
               _control_feed(control.MAX_RESPONSE, control.parse_response),
               (control.RequestError, control.ProtocolError, control.LineTooLong), FRAME_MUTATIONS),
    ]


# --- mutations ----------------------------------------------------------------------

_TYPES = [int(t) for t in (*LibxlType, *LibxcType, *ColodType)]
#: Values written over fields: edges of every width, the record length limit, and every type number.
INTERESTING = sorted({
    0, 1, 2, 3, 4, 7, 8, 9, 12, 15, 16, 17, 24, 0x7F, 0x80, 0xFF, 0x100, 0xFFF, 0x1000, 0x1001, 0x7FFF,
    0x8000, 0xFFFF, 0x10000, REC_LENGTH_MAX - 1, REC_LENGTH_MAX, REC_LENGTH_MAX + 1, 0x7FFFFFFF,
    0x80000000, 0xFFFFFFFF, 1 << 52, 1 << 63, (1 << 64) - 1,
    *_TYPES, *(t | 0x80000000 for t in _TYPES),
})
_WIDTHS = {1: "B", 2: "H", 4: "I", 8: "Q"}


def _drop(rng: random.Random, frames: list[bytes], target: Target) -> None:
    if frames:
        del frames[rng.randrange(len(frames))]


def _duplicate(rng: random.Random, frames: list[bytes], target: Target) -> None:
    if frames:
        frames.insert(rng.randrange(len(frames) + 1), rng.choice(frames))


def _swap(rng: random.Random, frames: list[bytes], target: Target) -> None:
    if len(frames) > 1:
        i, j = rng.sample(range(len(frames)), 2)
        frames[i], frames[j] = frames[j], frames[i]


def _splice_frame(rng: random.Random, frames: list[bytes], target: Target) -> None:
    """A frame of another seed (a record the stream has, elsewhere, or one it never has)."""
    other = rng.choice(target.seeds).frames
    if other:
        frames.insert(rng.randrange(len(frames) + 1), rng.choice(other))


def _cut_frames(rng: random.Random, frames: list[bytes], target: Target) -> None:
    del frames[rng.randrange(len(frames) + 1):]


def _lie_length(rng: random.Random, frames: list[bytes], target: Target) -> None:
    """A length field off by a little (a padding's worth, one byte) or by a lot, the body unchanged."""
    candidates = [(i, field) for i, frame in enumerate(frames) for field in target.length_fields(frame)]
    if not candidates:
        return
    i, (offset, layout) = rng.choice(candidates)
    frame = bytearray(frames[i])
    (true,) = layout.unpack_from(frame, offset)
    lie = true + rng.choice((-9, -8, -4, -1, 1, 4, 8, 9)) if rng.random() < 0.6 else rng.choice(INTERESTING)
    layout.pack_into(frame, offset, lie % (1 << (8 * layout.size)))
    frames[i] = bytes(frame)


def _write_field(rng: random.Random, frames: list[bytes], target: Target) -> None:
    """A boundary value or a type number, of any width and either byte order, over a frame's first bytes."""
    if not frames:
        return
    i = rng.randrange(len(frames))
    frame = bytearray(frames[i])
    width = rng.choice(list(_WIDTHS))
    if len(frame) < width:
        return
    offset = rng.randrange(0, min(len(frame), 48) - width + 1)
    if rng.random() < 0.7:
        offset -= offset % width
    layout = struct.Struct(rng.choice("<>") + _WIDTHS[width])
    layout.pack_into(frame, offset, rng.choice(INTERESTING) % (1 << (8 * width)))
    frames[i] = bytes(frame)


def _dense_record(rng: random.Random, frames: list[bytes], target: Target) -> None:
    """
    A record made of many of the smallest items its body can hold (keys,
    params, leaves, pfns): where a few bytes decode into a Python object each.
    """
    count = rng.choice((1, 2, 64, 1024, 1025, 8192, rng.randint(1, 8192)))
    values = [rng.getrandbits(32) for _ in range(6)]
    record = rng.choice((
        lambda: EmulatorXenstoreData(entries=((b"ab", b"cd"),) * count),
        lambda: HvmParams([(values[0] + i, values[1]) for i in range(count)]),
        lambda: X86CpuidPolicy([(i, *values[1:]) for i in range(count)]),
        lambda: X86MsrPolicy([(i, 0, values[0]) for i in range(count)]),
        lambda: CheckpointDirtyPfnList(range(count)),
        lambda: X86PvP2mFrames(0, count, range(count)),
        lambda: PageData(pfns=range(count), types=bytes([PageType.XTAB]) * count, data=b""),
    ))()
    frames.insert(rng.randrange(len(frames) + 1), b"".join(write_record(record)))


FRAME_MUTATIONS: tuple[FrameMutation, ...] = (
    _drop, _duplicate, _swap, _splice_frame, _cut_frames, _lie_length, _lie_length, _write_field,
    _write_field,
)
#: A record stream's: the generic ones and dense records.
RECORD_MUTATIONS = (*FRAME_MUTATIONS, _dense_record, _dense_record)


def _flip_bits(rng: random.Random, data: bytearray, target: Target) -> None:
    for _ in range(rng.randint(1, 8)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)


def _boundary_byte(rng: random.Random, data: bytearray, target: Target) -> None:
    data[rng.randrange(len(data))] = rng.choice((0, 1, 0x7F, 0x80, 0xFF))


def _insert(rng: random.Random, data: bytearray, target: Target) -> None:
    at = rng.randrange(len(data) + 1)
    data[at:at] = rng.randbytes(rng.choice((1, 2, 4, 8, rng.randint(1, 64))))


def _delete(rng: random.Random, data: bytearray, target: Target) -> None:
    at = rng.randrange(len(data))
    del data[at:at + rng.choice((1, 2, 4, 8, rng.randint(1, 4096)))]


def _truncate(rng: random.Random, data: bytearray, target: Target) -> None:
    del data[rng.randrange(len(data)):]


def _splice(rng: random.Random, data: bytearray, target: Target) -> None:
    """This input up to a point, then another seed from some point on."""
    other = b"".join(rng.choice(target.seeds).frames)
    data[rng.randrange(len(data) + 1):] = other[rng.randrange(len(other) + 1):]


def _copy_range(rng: random.Random, data: bytearray, target: Target) -> None:
    start = rng.randrange(len(data))
    piece = data[start:start + rng.randint(1, 256)]
    at = rng.randrange(len(data) + 1)
    data[at:at] = piece


BYTE_MUTATIONS = (_flip_bits, _flip_bits, _boundary_byte, _insert, _delete, _truncate, _splice, _copy_range)


def _chunk_whole(rng: random.Random, size: int, edges: list[int]) -> list[int]:
    return []


def _chunk_bytewise(rng: random.Random, size: int, edges: list[int]) -> list[int]:
    """Byte by byte through the first 512 bytes (headers, the hello, the first records), then the rest."""
    return list(range(1, min(size, 512)))


def _chunk_small(rng: random.Random, size: int, edges: list[int]) -> list[int]:
    return list(itertools.accumulate(rng.randint(1, 64) for _ in range(rng.randint(1, 100))))


def _chunk_large(rng: random.Random, size: int, edges: list[int]) -> list[int]:
    return list(itertools.accumulate(rng.randint(1, 8192) for _ in range(rng.randint(1, 20))))


def _chunk_at_edges(rng: random.Random, size: int, edges: list[int]) -> list[int]:
    """At the frames' edges, or a byte before or after them: where a reader changes what it expects."""
    shifts = rng.choice(((0,), (-1,), (1,), (-1, 0, 1)))
    return sorted({edge + shift for edge in edges for shift in shifts})


CHUNKINGS = (_chunk_whole, _chunk_bytewise, _chunk_small, _chunk_large, _chunk_at_edges, _chunk_at_edges)


def generate(target: Target, seed: int, index: int) -> Input:
    """Input C{index} of C{target} under C{seed}: a seed, mutated (or not), and how it is chunked."""
    rng = random.Random(f"{seed}:{target.name}:{index}")
    frames = list(rng.choice(target.seeds).frames)
    measure = rng.random() < MEASURED
    for _ in range(rng.choice((0, 0, 1, 1, 2))):
        mutation = rng.choice(target.frame_mutations)
        mutation(rng, frames, target)
        measure = measure or mutation is _dense_record
    edges = list(itertools.accumulate(len(frame) for frame in frames))
    data = bytearray(b"".join(frames))
    for _ in range(rng.choice((0, 1, 1, 2, 3))):
        if data:
            rng.choice(BYTE_MUTATIONS)(rng, data, target)
        else:
            _insert(rng, data, target)
    cuts = [cut for cut in rng.choice(CHUNKINGS)(rng, len(data), edges) if 0 < cut < len(data)]
    return Input(bytes(data), tuple(cuts), eof=rng.random() < 0.9, measure=measure)


# --- running ------------------------------------------------------------------------


class Hang(Exception):
    """An input ran past the per-input time limit."""


@attrs.frozen
class Find:
    """An outcome that is not a named error: what, where in the code, and how to replay it."""

    target: str
    index: int
    error: str
    where: str
    size: int


@attrs.define
class Tally:
    """One target's results."""

    inputs: int = 0
    refused: int = 0
    #: Refusal messages with numbers and quoted names folded: how much of the codec the inputs reach.
    reasons: set[str] = attrs.Factory(set)
    finds: list[Find] = attrs.Factory(list)
    seconds: float = 0.0


_FOLD = re.compile(r"\b(?:0x[0-9a-fA-F]+|\d+)\b|'[^']*'|\"[^\"]*\"|b'[^']*'")


def _where(error: BaseException) -> str:
    """The innermost frame of C{error}'s traceback, as C{file:line (function)}."""
    last = traceback.extract_tb(error.__traceback__)[-1]
    return f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno} ({last.name})"


def attempt(target: Target, case: Input, tally: Tally, index: int, timeout: float) -> None:
    """Feed C{case} once; count the outcome in C{tally}, a find included."""
    tally.inputs += 1
    size, peak = len(case.data), 0
    if case.measure:
        tracemalloc.start()
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        try:
            target.feed(case)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            if case.measure:
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
    except target.named as error:
        offset = getattr(error, "offset", 0)
        if 0 <= offset <= size:
            tally.refused += 1
            tally.reasons.add(f"{type(error).__name__}: {_FOLD.sub('N', str(error))}")
        else:
            text = f"{type(error).__name__} outside the {size}-byte input: {error}"
            tally.finds.append(Find(target.name, index, text, _where(error), size))
    except Exception as error:  # noqa: BLE001 - anything but a named error is exactly what is sought
        text = f"{type(error).__name__}: {error}"[:300]
        tally.finds.append(Find(target.name, index, text, _where(error), size))
    if peak > AMPLIFICATION * size + SLACK:
        text = f"Amplification: {peak} bytes allocated at once for a {size}-byte input"
        tally.finds.append(Find(target.name, index, text, "(memory)", size))


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise Hang("the input ran past the time limit")


@contextlib.contextmanager
def alarms() -> Iterator[None]:
    """Meanwhile, L{attempt}'s timer raises L{Hang} (main thread only): how a hang is cut off."""
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        yield
    finally:
        signal.signal(signal.SIGALRM, previous)


def run(
    targets: Sequence[Target], count: int, seed: int = 0, seconds: float | None = None, timeout: float = 5.0,
    progress: Callable[[int, dict[str, Tally]], None] | None = None,
) -> dict[str, Tally]:
    """
    Up to C{count} inputs, the targets taking turns, stopping early after
    C{seconds}; input I of a target is L{generate}'s I.  Main thread only
    (L{alarms}).
    """
    tallies = {target.name: Tally() for target in targets}
    started = time.monotonic()
    with alarms():
        for n in range(count):
            target = targets[n % len(targets)]
            index = n // len(targets)
            case = generate(target, seed, index)
            tally = tallies[target.name]
            begun = time.perf_counter()
            attempt(target, case, tally, index, timeout)
            tally.seconds += time.perf_counter() - begun
            if n % 1000 == 999:
                if progress is not None:
                    progress(n + 1, tallies)
                if seconds is not None and time.monotonic() - started > seconds:
                    break
    return tallies


# --- the command --------------------------------------------------------------------


def _report(tallies: dict[str, Tally], elapsed: float, seed: int, drawn: int, shown: int) -> None:
    print(f"{'target':<18} {'inputs':>9} {'refused':>9} {'distinct':>8} {'finds':>6} {'cpu s':>7}")
    for name, tally in tallies.items():
        print(f"{name:<18} {tally.inputs:>9} {tally.refused:>9} {len(tally.reasons):>8} "
              f"{len(tally.finds):>6} {tally.seconds:>7.1f}")
    total = sum(t.inputs for t in tallies.values())
    finds = [find for tally in tallies.values() for find in tally.finds]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'total':<18} {total:>9} {sum(t.refused for t in tallies.values()):>9} {'':>8} "
          f"{len(finds):>6} {elapsed:>7.1f}")
    print(f"{total} inputs in {elapsed:.0f} s (seed {seed}, {drawn} drawn), {len(finds)} finds, "
          f"peak RSS {peak:.0f} MiB")
    kinds: dict[tuple[str, str, str], list[Find]] = {}
    for find in finds:
        kinds.setdefault((find.target, find.error.split(":", 1)[0], find.where), []).append(find)
    for (target, _, where), same in list(kinds.items())[:shown]:
        first = same[0]
        print(f"FIND {target} x{len(same)}: {first.error} at {where}, a {first.size}-byte input; replay: "
              f"python -m tests.fuzz --seed {seed} --drawn {drawn} --replay {target} {first.index}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="inputs in all (default 1000000)")
    parser.add_argument("--seconds", type=float, help="stop after this long, whatever the count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--drawn", type=int, default=DEFAULT_DRAWN,
                        help="hypothesis-drawn seeds per channel and helper side")
    parser.add_argument("--target", action="append", help="only these targets (repeatable)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds one input may take")
    parser.add_argument("--memory", type=int, default=4096,
                        help="address-space limit in MiB, so that a runaway allocation is a MemoryError")
    parser.add_argument("--replay", nargs=2, metavar=("TARGET", "INDEX"),
                        help="feed one input and let any error through, traceback and all")
    args = parser.parse_args(argv)

    targets = build_targets(args.seed, args.drawn)
    names = {target.name: target for target in targets}
    if args.replay:
        target = names[args.replay[0]]
        case = generate(target, args.seed, int(args.replay[1]))
        print(f"{len(case.data)} bytes in {len(case.cuts) + 1} chunks, eof {case.eof}: "
              f"{case.data[:256].hex()}")
        target.feed(case)
        print("no error")
        return 0
    unknown = set(args.target or ()) - set(names)
    if unknown:
        parser.error(f"unknown target {', '.join(sorted(unknown))}; known: {', '.join(names)}")
    chosen = [names[name] for name in args.target] if args.target else targets
    limit = args.memory << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    started = time.monotonic()
    last = [started]

    def progress(done: int, tallies: dict[str, Tally]) -> None:
        if time.monotonic() - last[0] >= 30:
            last[0] = time.monotonic()
            finds = sum(len(t.finds) for t in tallies.values())
            print(f"... {done} inputs, {finds} finds, {last[0] - started:.0f} s", file=sys.stderr, flush=True)

    tallies = run(chosen, args.count, args.seed, args.seconds, args.timeout, progress)
    _report(tallies, time.monotonic() - started, args.seed, args.drawn, shown=20)
    return 1 if any(tally.finds for tally in tallies.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
