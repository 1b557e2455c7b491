# -*- test-case-name: tests.protocol.test_state -*-
"""
What may follow what in the two channels, and which namespace each position
reads record types in.

Rule 1: everything that decides whether a record is legal where it appears
lives in the tables below; the decoder and the encoder only look things up.

Rule 2: this module knows nothing of bytes.  It is fed records (or their
classes) and answers with states.

Theory of operation.  Xen nests two streams in the main channel: libxl
records, and inside them a libxc stream whose type numbers overlap libxl's
(type 5 is CHECKPOINT_STATE in one and X86_PV_VCPU_EXTENDED in the other).
A reader therefore has to track, exactly as libxl_stream_read.c and
xg_sr_restore.c do between them, whose records come next:

  STREAM_HEADER, then libxl records until LIBXC_CONTEXT;
  IMAGE_HEADER and DOMAIN_HEADER (first LIBXC_CONTEXT only), then libxc
  records.  A libxc END hands the fd back to libxl for good (plain stream:
  emulator records, then libxl END).  A libxc CHECKPOINT hands it back for
  one checkpoint: emulator records up to CHECKPOINT_END.  In a COLO stream
  libxl then reads exactly one CHECKPOINT_STATE(NEW) inside libxc's
  wait_checkpoint callback, and libxc resumes with the next checkpoint's
  records.  After the first checkpoint a libxc END means "failover": libxc
  stops reading and so does the stream.

That is the COLO checkpointed stream (L{Checkpointed.COLO}, the only kind
colods exchange).  Xen's Remus (C{xl remus}) writes the same stream without
CHECKPOINT_STATE: after CHECKPOINT_END libxc reads the next checkpoint's
records straight away (L{Checkpointed.REMUS}).  The two tables differ only in
where CHECKPOINT_END leads (L{AFTER_CHECKPOINT_END}).  A reader of a file may
not know which it has (L{Checkpointed.AUTO}): then the first CHECKPOINT_END
leads to UNDECIDED, and the header of the next record decides (L{classify}:
libxl CHECKPOINT_STATE is type 5 with a 4-byte body; libxc type 5 is
X86_PV_VCPU_EXTENDED, never 4 bytes long).  From then on the stream is held
to that mode: the header after every later CHECKPOINT_END is classified the
same way, and one of the other mode is refused.  Refusals in a REMUS stream
or a decided AUTO one name the mode; in COLO, the peer link's mode, they are
the table's own, as before.  Deciding and that check are the one rule read
from a record header rather than a record (L{Tracker.header}); the decoder
only calls it.

The back channel has no header and carries, in lock step, SVM_READY and
SVM_RESUMED after the first checkpoint, then for every later one
SVM_SUSPENDED, CHECKPOINT_DIRTY_PFN_LIST, SVM_READY, SVM_RESUMED.

colod's HEARTBEAT and unknown optional libxc records (which Xen skips) are
legal at any record boundary of their namespace and never change the state;
headers are not record boundaries.  colod's COLOD_REPLICATION_END is legal at
the same places and ends its channel: nothing may follow it.

Transitions are keyed by record class, except CHECKPOINT_STATE (keyed by its
control id) and the image header (keyed by its version, because a v3 stream
must end its static data with STATIC_DATA_END before any PAGE_DATA while a v2
stream has neither).
"""

from __future__ import annotations

import enum
from collections.abc import Hashable

from .records import (
    Checkpoint,
    CheckpointDirtyPfnList,
    CheckpointEnd,
    CheckpointState,
    DomainHeader,
    EmulatorContext,
    EmulatorXenstoreData,
    End,
    Heartbeat,
    HvmContext,
    HvmParams,
    ImageHeader,
    LibxcContext,
    LibxcEnd,
    PageData,
    ReplicationEnd,
    SharedInfo,
    SkippedRecord,
    StaticDataEnd,
    StreamHeader,
    Verify,
    X86CpuidPolicy,
    X86MsrPolicy,
    X86PvInfo,
    X86PvP2mFrames,
    X86PvVcpuBasic,
    X86PvVcpuExtended,
    X86PvVcpuMsrs,
    X86PvVcpuXsave,
    X86TscInfo,
    record_name,
    type_name,
)
from .wire import CheckpointId, ColodType, GuestType, LibxlType, Namespace


class Channel(enum.Enum):
    MAIN = "main"  # primary to secondary, with the libxl stream header
    BACK = "back"  # secondary to primary, header-less


class Checkpointed(enum.Enum):
    """What a checkpointed main stream does between checkpoints."""

    COLO = "colo"  # CHECKPOINT_STATE(NEW) after each CHECKPOINT_END
    REMUS = "remus"  # the next checkpoint's libxc records right after CHECKPOINT_END
    AUTO = "auto"  # decided by the record after the first CHECKPOINT_END (decoder only)


class State(enum.Enum):
    # main channel
    STREAM_HEADER = "expecting the libxl stream header"
    LIBXL = "in the libxl stream, before its libxc stream"
    IMAGE_HEADER = "expecting the libxc image header"
    DOMAIN_HEADER_V2 = "expecting the libxc domain header (v2 image)"
    DOMAIN_HEADER_V3 = "expecting the libxc domain header"
    LIBXC_STATIC = "in libxc static data, before STATIC_DATA_END"
    LIBXC = "in the libxc stream"
    LIBXL_TAIL = "in the libxl stream, after its libxc stream ended"
    FIRST_CHECKPOINT = "in the libxl part of the first checkpoint"
    CHECKPOINT = "in the libxl part of a checkpoint"
    AWAIT_NEW = "between checkpoints, expecting CHECKPOINT_STATE(NEW)"
    LIBXC_CHECKPOINTED = "in the libxc part of a checkpoint"
    UNDECIDED = "after the first checkpoint, before the stream shows whether it is COLO or Remus"
    DONE = "after the end of the stream"
    # back channel
    BACK_START = "expecting the first SVM_READY"
    SVM_READY = "after SVM_READY"
    SVM_RESUMED = "after SVM_RESUMED"
    SVM_SUSPENDED = "after SVM_SUSPENDED"
    DIRTY_PFN_LIST = "after CHECKPOINT_DIRTY_PFN_LIST"
    # both
    ENDED = "after COLOD_REPLICATION_END ended the channel"
    ERROR = "after an error"


S = State

INITIAL = {Channel.MAIN: S.STREAM_HEADER, Channel.BACK: S.BACK_START}

#: Records libxc accepts anywhere in its stream, per guest type checks aside.
_LIBXC_BODY = (
    PageData, X86PvInfo, X86PvP2mFrames, X86PvVcpuBasic, X86PvVcpuExtended, X86PvVcpuXsave,
    X86PvVcpuMsrs, SharedInfo, X86TscInfo, HvmContext, HvmParams, Verify,
)
_EMULATOR = (EmulatorXenstoreData, EmulatorContext)


def _stay(state: State, kinds: tuple[type, ...]) -> dict[Hashable, State]:
    return {kind: state for kind in kinds}


TRANSITIONS: dict[State, dict[Hashable, State]] = {
    S.STREAM_HEADER: {StreamHeader: S.LIBXL},
    S.LIBXL: {LibxcContext: S.IMAGE_HEADER, **_stay(S.LIBXL, _EMULATOR), End: S.DONE},
    S.IMAGE_HEADER: {(ImageHeader, 2): S.DOMAIN_HEADER_V2, (ImageHeader, 3): S.DOMAIN_HEADER_V3},
    S.DOMAIN_HEADER_V2: {DomainHeader: S.LIBXC},
    S.DOMAIN_HEADER_V3: {DomainHeader: S.LIBXC_STATIC},
    S.LIBXC_STATIC: {
        **_stay(S.LIBXC_STATIC, (X86CpuidPolicy, X86MsrPolicy, *_LIBXC_BODY)),
        PageData: S.ERROR,  # Xen: "No STATIC_DATA_END seen"
        StaticDataEnd: S.LIBXC,
    },
    S.LIBXC: {**_stay(S.LIBXC, _LIBXC_BODY), LibxcEnd: S.LIBXL_TAIL, Checkpoint: S.FIRST_CHECKPOINT},
    S.LIBXL_TAIL: {**_stay(S.LIBXL_TAIL, _EMULATOR), End: S.DONE},
    S.FIRST_CHECKPOINT: {**_stay(S.FIRST_CHECKPOINT, _EMULATOR), CheckpointEnd: S.AWAIT_NEW},
    S.CHECKPOINT: {**_stay(S.CHECKPOINT, _EMULATOR), CheckpointEnd: S.AWAIT_NEW},
    S.AWAIT_NEW: {CheckpointId.NEW: S.LIBXC_CHECKPOINTED},
    S.LIBXC_CHECKPOINTED: {
        **_stay(S.LIBXC_CHECKPOINTED, _LIBXC_BODY),
        Checkpoint: S.CHECKPOINT,
        LibxcEnd: S.DONE,
    },
    S.UNDECIDED: {},  # the next record header decides the mode first (Tracker.header)
    S.DONE: {},
    S.BACK_START: {CheckpointId.SVM_READY: S.SVM_READY},
    S.SVM_READY: {CheckpointId.SVM_RESUMED: S.SVM_RESUMED},
    S.SVM_RESUMED: {CheckpointId.SVM_SUSPENDED: S.SVM_SUSPENDED},
    S.SVM_SUSPENDED: {CheckpointDirtyPfnList: S.DIRTY_PFN_LIST},
    S.DIRTY_PFN_LIST: {CheckpointId.SVM_READY: S.SVM_READY},
    S.ENDED: {},
    S.ERROR: {},
}

#: Where CHECKPOINT_END leads in each mode: the only moves the tables differ in.
AFTER_CHECKPOINT_END: dict[Checkpointed, State] = {
    Checkpointed.COLO: S.AWAIT_NEW,
    Checkpointed.REMUS: S.LIBXC_CHECKPOINTED,
    Checkpointed.AUTO: S.UNDECIDED,
}


def _checkpoint_end_to(new: State) -> dict[State, dict[Hashable, State]]:
    return {
        **TRANSITIONS,
        **{state: {**TRANSITIONS[state], CheckpointEnd: new} for state in (S.FIRST_CHECKPOINT, S.CHECKPOINT)},
    }


#: The transition table of each mode (L{TRANSITIONS} is COLO's).
TABLES: dict[Checkpointed, dict[State, dict[Hashable, State]]] = {
    mode: _checkpoint_end_to(new) for mode, new in AFTER_CHECKPOINT_END.items()
}

#: Records legal at every record boundary (every state in L{NAMESPACE}), in
#: either namespace, and the state each leads to (None: the state stays).
ANYWHERE: dict[type, State | None] = {Heartbeat: None, SkippedRecord: None, ReplicationEnd: S.ENDED}

#: How a record type number is read in each state that reads records (the
#: record boundaries).
NAMESPACE: dict[State, Namespace] = {
    S.LIBXL: Namespace.LIBXL,
    S.LIBXC_STATIC: Namespace.LIBXC,
    S.LIBXC: Namespace.LIBXC,
    S.LIBXL_TAIL: Namespace.LIBXL,
    S.FIRST_CHECKPOINT: Namespace.LIBXL,
    S.CHECKPOINT: Namespace.LIBXL,
    S.AWAIT_NEW: Namespace.LIBXL,
    S.LIBXC_CHECKPOINTED: Namespace.LIBXC,
    S.UNDECIDED: Namespace.LIBXL,  # only colod's records are read here: any other header decides
    S.BACK_START: Namespace.LIBXL,
    S.SVM_READY: Namespace.LIBXL,
    S.SVM_RESUMED: Namespace.LIBXL,
    S.SVM_SUSPENDED: Namespace.LIBXC,
    S.DIRTY_PFN_LIST: Namespace.LIBXL,
}

#: States that read a fixed-size header rather than a framed record.
HEADER_STATES: dict[State, type] = {
    S.STREAM_HEADER: StreamHeader,
    S.IMAGE_HEADER: ImageHeader,
    S.DOMAIN_HEADER_V2: DomainHeader,
    S.DOMAIN_HEADER_V3: DomainHeader,
}

#: States after which not a byte more may come.
FINAL = frozenset({S.DONE, S.ENDED})

#: Where the peer may close its side cleanly: after END, after a libxc END
#: that ended a checkpointed stream, or anywhere between records once one
#: checkpoint is complete (Xen's secondary then fails over to the last
#: complete checkpoint; Xen's Remus receiver does the same, also right after a
#: CHECKPOINT_END, where a Remus stream is in LIBXC_CHECKPOINTED and an AUTO
#: one in UNDECIDED).  The back channel may stop at any record boundary.
#: Either channel may stop after COLOD_REPLICATION_END.
CLEAN_EOF = frozenset({
    S.DONE, S.ENDED, S.AWAIT_NEW, S.LIBXC_CHECKPOINTED, S.CHECKPOINT, S.UNDECIDED,
    S.BACK_START, S.SVM_READY, S.SVM_RESUMED, S.SVM_SUSPENDED, S.DIRTY_PFN_LIST,
})

#: Reasons for moves the table sends to ERROR instead of leaving out.
_EXPLAINED = {
    (S.LIBXC_STATIC, PageData): "PAGE_DATA before STATIC_DATA_END in a v3 libxc stream",
}


def event_key(record: object) -> Hashable:
    """The key a record is looked up by in L{TRANSITIONS}."""
    if isinstance(record, CheckpointState):
        return record.id
    if isinstance(record, ImageHeader):
        return (ImageHeader, record.version)
    return type(record)


_COLOD_TYPES = frozenset(ColodType)


def classify(rtype: int, length: int) -> Checkpointed | None:
    """
    Which mode a record header right after CHECKPOINT_END belongs to: COLO
    for libxl CHECKPOINT_STATE (type 5, 4-byte body), REMUS for anything
    else (libxc records), None for colod's own records, which decide nothing.
    """
    if rtype in _COLOD_TYPES:
        return None
    if rtype == LibxlType.CHECKPOINT_STATE and length == 4:
        return Checkpointed.COLO
    return Checkpointed.REMUS


def next_state(state: State, record: object, mode: Checkpointed = Checkpointed.COLO) -> State | str:
    """
    The state after C{record} is read (or written) in C{state} in a stream
    of C{mode}, or the reason it may not appear there.
    """
    if state in NAMESPACE and type(record) in ANYWHERE:
        return ANYWHERE[type(record)] or state
    key = event_key(record)
    new = TABLES[mode][state].get(key)
    if new is None or new is S.ERROR:
        subject = record_name(record) if isinstance(record, SkippedRecord) else _describe(key)
        return _EXPLAINED.get((state, key)) or (
            f"{subject} is not allowed {state.value}; expected {expected(state, mode)}"
        )
    return new


class Tracker:
    """
    One channel's position: its state, its checkpointed mode and, from the
    domain header on, the guest type (PV-only records are refused in HVM
    streams and vice versa, as Xen's restore code does).

    @ivar mode: the mode the stream is read in; AUTO until decided.
    @ivar chosen: the mode asked for.
    """

    def __init__(self, channel: Channel, mode: Checkpointed = Checkpointed.COLO) -> None:
        self.state = INITIAL[channel]
        self.guest: GuestType | None = None
        self.mode = self.chosen = mode
        self._after_checkpoint_end = False

    def header(self, rtype: int, length: int) -> str | None:
        """
        Look at a framed record's header before its body is read.  Right
        after a CHECKPOINT_END it decides an AUTO stream's mode, or refuses
        one of the other mode (unless the mode was given as COLO).
        """
        if not self._after_checkpoint_end:
            return None
        kind = classify(rtype, length)
        if kind is None:
            return None
        if self.mode is Checkpointed.AUTO:
            self.mode = kind
            self.state = AFTER_CHECKPOINT_END[kind]
            return None
        if kind is self.mode or self.chosen is Checkpointed.COLO:
            return None
        if kind is Checkpointed.COLO:
            found = "CHECKPOINT_STATE (libxl type 5, 4 bytes) after CHECKPOINT_END, as in a COLO stream"
        else:
            found = (f"record type {rtype:#x} ({length} bytes) after CHECKPOINT_END where a COLO stream "
                     "has CHECKPOINT_STATE(NEW), as in a Remus stream")
        return self._note(found)

    def refusal(self, record: object) -> str | None:
        """Why C{record} may not come next, or None if it may."""
        new = next_state(self.state, record, self.mode)
        if isinstance(new, str):
            return self._note(new)
        guest = getattr(record, "GUEST", None)
        if guest is not None and guest is not self.guest:
            this = self.guest.name if self.guest is not None else "not known yet"
            return f"{type_name(type(record))} belongs to {guest.name} streams, this is {this}"
        return None

    def advance(self, record: object) -> str | None:
        """Move past C{record}, or return why it may not come next (and stay)."""
        reason = self.refusal(record)
        if reason is None:
            self.state = next_state(self.state, record, self.mode)
            if isinstance(record, DomainHeader):
                self.guest = record.guest_type
            if type(record) not in ANYWHERE:
                self._after_checkpoint_end = isinstance(record, CheckpointEnd)
        return reason

    def end_of_file(self) -> str | None:
        """Why the stream may not end here, or None if it may."""
        if self.state in CLEAN_EOF:
            return None
        return self._note(f"stream ends {self.state.value}; expected {expected(self.state, self.mode)}")

    def _note(self, reason: str) -> str:
        """C{reason}, naming the mode unless it is the peer link's COLO or not decided yet."""
        return reason + mode_note(self.chosen, self.mode)


def mode_note(chosen: Checkpointed, mode: Checkpointed) -> str:
    """How refusals name the mode a stream is read in (chosen, then decided)."""
    if mode is Checkpointed.AUTO or (chosen, mode) == (Checkpointed.COLO, Checkpointed.COLO):
        return ""
    name = "a Remus" if mode is Checkpointed.REMUS else "a COLO"
    decided = ", as decided after its first checkpoint" if chosen is Checkpointed.AUTO else ""
    return f" (read as {name} stream{decided})"


def expected(state: State, mode: Checkpointed = Checkpointed.COLO) -> str:
    """What may come next in C{state}, for error messages."""
    keys = [key for key, new in TABLES[mode][state].items() if new is not S.ERROR]
    return ", ".join(_describe(key) for key in keys) or "nothing"


def _describe(key: Hashable) -> str:
    if isinstance(key, CheckpointId):
        return f"CHECKPOINT_STATE({key.name})"
    if isinstance(key, tuple):
        return f"{type_name(key[0])} v{key[1]}"
    return type_name(key)
