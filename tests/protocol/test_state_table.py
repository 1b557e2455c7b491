"""
The stream state table, checked move by move against expectations written by hand.

Why this module exists: the property tests build their record sequences by
walking L{colod.protocol.state.TRANSITIONS}, so a wrong entry in that table (a
move libxl or libxc would refuse, or a missing one) yields sequences that agree
with it, and they pass.  Here every legal move is written out by hand from what
Xen accepts (libxl_stream_read.c and libxl_colo_restore.c / libxl_colo_save.c
for libxl records and CHECKPOINT_STATE, xg_sr_restore.c for libxc records; see
xen-colo-protocol.md and state.py's docstring).  Nothing here is derived from
TRANSITIONS, ANYWHERE, NAMESPACE, HEADER_STATES, FINAL or CLEAN_EOF: they are
only compared with the hand-written expectations.

Every State is asked about every key the codec can produce (each record class,
each CHECKPOINT_STATE id, each image-header version and an unsupported one).
A legal move must lead to exactly the expected state; an illegal one must be
refused with exactly the expected words, whose "expected ..." list is computed
from the hand-written table, so a table that gains a move also changes the
reasons of every refusal in that state.  The order of that list is the order
the moves are written in below (it is what operators read).

The same is done for the Remus mode (xl remus: no CHECKPOINT_STATE, the next
checkpoint's libxc records right after CHECKPOINT_END) and for the AUTO mode
before its first checkpoint decides it; their moves are written by hand too,
below LEGAL.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Hashable

import attrs
import pytest

from colod.protocol import CLOSED, NEED_DATA, Decoder, Encoder, StreamError, records
from colod.protocol.readers import COLOD_READERS, LIBXC_READERS, LIBXL_READERS
from colod.protocol.records import (
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
    type_name,
)
from colod.protocol.state import (
    CLEAN_EOF,
    FINAL,
    HEADER_STATES,
    NAMESPACE,
    Channel,
    Checkpointed,
    State,
    Tracker,
    event_key,
    expected,
    next_state,
)
from colod.protocol.wire import (
    IHDR_VERSIONS,
    RECORD_HEADER,
    CheckpointId,
    GuestType,
    LibxcType,
    Namespace,
    ReplicationEndReason,
)
from colod.protocol.writers import write_record

S = State
NEW, SVM_SUSPENDED, SVM_READY, SVM_RESUMED = (
    CheckpointId.NEW, CheckpointId.SVM_SUSPENDED, CheckpointId.SVM_READY, CheckpointId.SVM_RESUMED,
)
LIBXL, LIBXC = Namespace.LIBXL, Namespace.LIBXC
PV, HVM = GuestType.X86_PV, GuestType.X86_HVM

# --- what Xen accepts, by hand -----------------------------------------------

#: For each state, every key that may come next (besides the records legal at
#: any record boundary, below) and the state it leads to.
LEGAL: dict[State, dict[Hashable, State]] = {
    # libxl_stream_read.c: the stream header, then libxl records.
    S.STREAM_HEADER: {StreamHeader: S.LIBXL},
    # process_record(): END, LIBXC_CONTEXT and the two emulator records;
    # CHECKPOINT_END / CHECKPOINT_STATE only inside a checkpoint / wait.
    S.LIBXL: {
        LibxcContext: S.IMAGE_HEADER,
        EmulatorXenstoreData: S.LIBXL,
        EmulatorContext: S.LIBXL,
        End: S.DONE,
    },
    # xg_sr_restore.c read_headers(): 2 <= version <= 3, then the domain header.
    S.IMAGE_HEADER: {(ImageHeader, 2): S.DOMAIN_HEADER_V2, (ImageHeader, 3): S.DOMAIN_HEADER_V3},
    S.DOMAIN_HEADER_V2: {DomainHeader: S.LIBXC},
    S.DOMAIN_HEADER_V3: {DomainHeader: S.LIBXC_STATIC},
    # v3: static data (CPU policy) and the per-checkpoint records, then
    # STATIC_DATA_END; PAGE_DATA first is "No STATIC_DATA_END seen".
    S.LIBXC_STATIC: {
        X86CpuidPolicy: S.LIBXC_STATIC,
        X86MsrPolicy: S.LIBXC_STATIC,
        X86PvInfo: S.LIBXC_STATIC,
        X86PvP2mFrames: S.LIBXC_STATIC,
        X86PvVcpuBasic: S.LIBXC_STATIC,
        X86PvVcpuExtended: S.LIBXC_STATIC,
        X86PvVcpuXsave: S.LIBXC_STATIC,
        X86PvVcpuMsrs: S.LIBXC_STATIC,
        SharedInfo: S.LIBXC_STATIC,
        X86TscInfo: S.LIBXC_STATIC,
        HvmContext: S.LIBXC_STATIC,
        HvmParams: S.LIBXC_STATIC,
        Verify: S.LIBXC_STATIC,
        StaticDataEnd: S.LIBXC,
    },
    # The body of the libxc stream; END hands the fd back to libxl for good,
    # CHECKPOINT for the first checkpoint's libxl records.
    S.LIBXC: {
        PageData: S.LIBXC,
        X86PvInfo: S.LIBXC,
        X86PvP2mFrames: S.LIBXC,
        X86PvVcpuBasic: S.LIBXC,
        X86PvVcpuExtended: S.LIBXC,
        X86PvVcpuXsave: S.LIBXC,
        X86PvVcpuMsrs: S.LIBXC,
        SharedInfo: S.LIBXC,
        X86TscInfo: S.LIBXC,
        HvmContext: S.LIBXC,
        HvmParams: S.LIBXC,
        Verify: S.LIBXC,
        LibxcEnd: S.LIBXL_TAIL,
        Checkpoint: S.FIRST_CHECKPOINT,
    },
    # Plain stream after libxc END: emulator records, then libxl END (a second
    # LIBXC_CONTEXT would start a second restore helper on the domain).
    S.LIBXL_TAIL: {EmulatorXenstoreData: S.LIBXL_TAIL, EmulatorContext: S.LIBXL_TAIL, End: S.DONE},
    # libxl__stream_read_start_checkpoint: libxl records up to CHECKPOINT_END;
    # END here hits assert(rc) in stream_complete(), CHECKPOINT_STATE is
    # "Unexpected".
    S.FIRST_CHECKPOINT: {
        EmulatorXenstoreData: S.FIRST_CHECKPOINT,
        EmulatorContext: S.FIRST_CHECKPOINT,
        CheckpointEnd: S.AWAIT_NEW,
    },
    S.CHECKPOINT: {
        EmulatorXenstoreData: S.CHECKPOINT,
        EmulatorContext: S.CHECKPOINT,
        CheckpointEnd: S.AWAIT_NEW,
    },
    # libxl_colo_restore.c wait_checkpoint: exactly one CHECKPOINT_STATE, id NEW.
    S.AWAIT_NEW: {NEW: S.LIBXC_CHECKPOINTED},
    # xg_sr_restore.c with buffer_all_records: the next checkpoint's records,
    # then CHECKPOINT; END after the first checkpoint means failover.  No
    # second STATIC_DATA_END ("Multiple STATIC_DATA_END records found").
    S.LIBXC_CHECKPOINTED: {
        PageData: S.LIBXC_CHECKPOINTED,
        X86PvInfo: S.LIBXC_CHECKPOINTED,
        X86PvP2mFrames: S.LIBXC_CHECKPOINTED,
        X86PvVcpuBasic: S.LIBXC_CHECKPOINTED,
        X86PvVcpuExtended: S.LIBXC_CHECKPOINTED,
        X86PvVcpuXsave: S.LIBXC_CHECKPOINTED,
        X86PvVcpuMsrs: S.LIBXC_CHECKPOINTED,
        SharedInfo: S.LIBXC_CHECKPOINTED,
        X86TscInfo: S.LIBXC_CHECKPOINTED,
        HvmContext: S.LIBXC_CHECKPOINTED,
        HvmParams: S.LIBXC_CHECKPOINTED,
        Verify: S.LIBXC_CHECKPOINTED,
        Checkpoint: S.CHECKPOINT,
        LibxcEnd: S.DONE,
    },
    # AUTO only (unreachable in COLO): after the first CHECKPOINT_END the
    # next record's header decides COLO or Remus before anything is read.
    S.UNDECIDED: {},
    S.DONE: {},
    # Back channel (libxl_colo_save.c reads, libxl_colo_restore.c writes):
    # READY, RESUMED after the first checkpoint; then SUSPENDED, the libxc
    # DIRTY_PFN_LIST (xg_sr_save.c colo_merge_secondary_dirty_bitmap), READY,
    # RESUMED for every later one.
    S.BACK_START: {SVM_READY: S.SVM_READY},
    S.SVM_READY: {SVM_RESUMED: S.SVM_RESUMED},
    S.SVM_RESUMED: {SVM_SUSPENDED: S.SVM_SUSPENDED},
    S.SVM_SUSPENDED: {CheckpointDirtyPfnList: S.DIRTY_PFN_LIST},
    S.DIRTY_PFN_LIST: {SVM_READY: S.SVM_READY},
    S.ENDED: {},
    S.ERROR: {},
}

COLO, REMUS, AUTO = Checkpointed.COLO, Checkpointed.REMUS, Checkpointed.AUTO

#: Xen's Remus (libxl checkpointed_stream REMUS; xen-colo-protocol.md 11.1):
#: nothing waits for a CHECKPOINT_STATE, libxc reads the next checkpoint's
#: records right after CHECKPOINT_END.  Every other state moves as in LEGAL.
REMUS_LEGAL: dict[State, dict[Hashable, State]] = {
    **LEGAL,
    S.FIRST_CHECKPOINT: {
        EmulatorXenstoreData: S.FIRST_CHECKPOINT,
        EmulatorContext: S.FIRST_CHECKPOINT,
        CheckpointEnd: S.LIBXC_CHECKPOINTED,
    },
    S.CHECKPOINT: {
        EmulatorXenstoreData: S.CHECKPOINT,
        EmulatorContext: S.CHECKPOINT,
        CheckpointEnd: S.LIBXC_CHECKPOINTED,
    },
}

#: AUTO: as COLO until the first CHECKPOINT_END, which leads to UNDECIDED.
AUTO_LEGAL: dict[State, dict[Hashable, State]] = {
    **LEGAL,
    S.FIRST_CHECKPOINT: {
        EmulatorXenstoreData: S.FIRST_CHECKPOINT,
        EmulatorContext: S.FIRST_CHECKPOINT,
        CheckpointEnd: S.UNDECIDED,
    },
    S.CHECKPOINT: {
        EmulatorXenstoreData: S.CHECKPOINT,
        EmulatorContext: S.CHECKPOINT,
        CheckpointEnd: S.UNDECIDED,
    },
}

LEGAL_IN: dict[Checkpointed, dict[State, dict[Hashable, State]]] = {
    COLO: LEGAL, REMUS: REMUS_LEGAL, AUTO: AUTO_LEGAL,
}

#: What a tracker adds to its refusals in each mode (as given; AUTO: while undecided).
NOTE = {COLO: "", REMUS: " (read as a Remus stream)", AUTO: ""}
DECIDED_NOTE = {
    COLO: " (read as a COLO stream, as decided after its first checkpoint)",
    REMUS: " (read as a Remus stream, as decided after its first checkpoint)",
}

#: Moves refused with their own explanation rather than the generic one.
EXPLAINED: dict[tuple[State, Hashable], str] = {
    (S.LIBXC_STATIC, PageData): "PAGE_DATA before STATIC_DATA_END in a v3 libxc stream",
}

#: The record boundaries, and whose type numbers are read there.
BOUNDARY_NAMESPACE: dict[State, Namespace] = {
    S.LIBXL: LIBXL,
    S.LIBXC_STATIC: LIBXC,
    S.LIBXC: LIBXC,
    S.LIBXL_TAIL: LIBXL,
    S.FIRST_CHECKPOINT: LIBXL,
    S.CHECKPOINT: LIBXL,
    S.AWAIT_NEW: LIBXL,  # libxl reads CHECKPOINT_STATE inside libxc's callback
    S.LIBXC_CHECKPOINTED: LIBXC,
    S.UNDECIDED: LIBXL,  # only colod's records get this far: any other header decides first
    S.BACK_START: LIBXL,
    S.SVM_READY: LIBXL,
    S.SVM_RESUMED: LIBXL,
    S.SVM_SUSPENDED: LIBXC,  # the DIRTY_PFN_LIST is read by libxc
    S.DIRTY_PFN_LIST: LIBXL,
}

#: colod's records and skipped optional libxc records: legal at every record
#: boundary; None means the state stays.
AT_ANY_BOUNDARY: dict[type, State | None] = {Heartbeat: None, SkippedRecord: None, ReplicationEnd: S.ENDED}

#: States that read a fixed header instead of a framed record, and which one.
HEADERS: dict[State, type] = {
    S.STREAM_HEADER: StreamHeader,
    S.IMAGE_HEADER: ImageHeader,
    S.DOMAIN_HEADER_V2: DomainHeader,
    S.DOMAIN_HEADER_V3: DomainHeader,
}

#: Not a byte more: after libxl END / failover END, and after COLOD_REPLICATION_END.
FINAL_STATES = {S.DONE, S.ENDED}

#: Where the peer may close cleanly: at the end, once a checkpoint is complete
#: on the main channel (not inside the first one: there is nothing to fail
#: over to; Xen's Remus receiver fails over at EOF too, also right after a
#: CHECKPOINT_END), anywhere on the back channel.
CLEAN_EOF_STATES = {
    S.DONE, S.ENDED, S.AWAIT_NEW, S.LIBXC_CHECKPOINTED, S.CHECKPOINT, S.UNDECIDED,
    S.BACK_START, S.SVM_READY, S.SVM_RESUMED, S.SVM_SUSPENDED, S.DIRTY_PFN_LIST,
}

BACK_STATES = {S.BACK_START, S.SVM_READY, S.SVM_RESUMED, S.SVM_SUSPENDED, S.DIRTY_PFN_LIST}

#: Records that Xen's restore code accepts for one guest type only.
GUEST_ONLY: dict[type, GuestType] = {
    X86PvInfo: PV, X86PvP2mFrames: PV, X86PvVcpuBasic: PV, X86PvVcpuExtended: PV,
    X86PvVcpuXsave: PV, X86PvVcpuMsrs: PV, SharedInfo: PV, HvmContext: HVM, HvmParams: HVM,
}

# --- every key the codec knows ------------------------------------------------


def record_classes() -> set[type]:
    """Every public record class defined in colod.protocol.records."""
    return {
        cls for name, cls in inspect.getmembers(records, inspect.isclass)
        if cls.__module__ == records.__name__ and attrs.has(cls) and not name.startswith("_")
    }


UNSUPPORTED_IMAGE_VERSION = 4
IMAGE_VERSIONS = (2, 3, UNSUPPORTED_IMAGE_VERSION)

KEYS: list[Hashable] = [
    *sorted((cls for cls in record_classes() if cls not in (CheckpointState, ImageHeader)),
            key=lambda cls: cls.__name__),
    *CheckpointId,
    *((ImageHeader, version) for version in IMAGE_VERSIONS),
]

#: One record per class, as the codec would hand it over.
SAMPLES: dict[type, object] = {
    StreamHeader: StreamHeader(),
    DomainHeader: DomainHeader(HVM, 4, 17),
    End: End(),
    LibxcContext: LibxcContext(),
    EmulatorXenstoreData: EmulatorXenstoreData(entries=((b"physmap/1/start_addr", b"f0000000"),)),
    EmulatorContext: EmulatorContext(blob=b"QEVM device state"),
    CheckpointEnd: CheckpointEnd(),
    LibxcEnd: LibxcEnd(),
    PageData: PageData(pfns=[0x100], types=bytes(1), data=bytes(4096)),
    X86PvInfo: X86PvInfo(guest_width=8, pt_levels=4),
    X86PvP2mFrames: X86PvP2mFrames(0, 0x3FF, [0x1234]),
    X86PvVcpuBasic: X86PvVcpuBasic(vcpu_id=0, context=b"regs"),
    X86PvVcpuExtended: X86PvVcpuExtended(vcpu_id=1, context=b"ext"),
    X86PvVcpuXsave: X86PvVcpuXsave(vcpu_id=2, context=b"xsave"),
    X86PvVcpuMsrs: X86PvVcpuMsrs(vcpu_id=3, context=b"msrs"),
    SharedInfo: SharedInfo(page=bytes(4096)),
    X86TscInfo: X86TscInfo(mode=0, khz=2_000_000, nsec=123456789, incarnation=1),
    HvmContext: HvmContext(b"hvm context"),
    HvmParams: HvmParams([(2, 0xFEFFF)]),
    Verify: Verify(),
    Checkpoint: Checkpoint(),
    CheckpointDirtyPfnList: CheckpointDirtyPfnList([1, 0x101]),
    StaticDataEnd: StaticDataEnd(),
    X86CpuidPolicy: X86CpuidPolicy([(0, 0, 0xD, 0x756E6547, 0x6C65746E, 0x49656E69)]),
    X86MsrPolicy: X86MsrPolicy([(0xCE, 0, 0x80000000)]),
    SkippedRecord: SkippedRecord(type=0x80001234, length=0),
    Heartbeat: Heartbeat(sequence=7, sent_at_ns=123),
    ReplicationEnd: ReplicationEnd(ReplicationEndReason.SHUTDOWN, "colod stopping"),
}


def sample(key: Hashable) -> object:
    if isinstance(key, CheckpointId):
        return CheckpointState(key)
    if isinstance(key, tuple):
        return ImageHeader(version=key[1])
    return SAMPLES[key]


def key_class(key: Hashable) -> type:
    if isinstance(key, CheckpointId):
        return CheckpointState
    if isinstance(key, tuple):
        return key[0]
    return key


def key_id(key: Hashable) -> str:
    """Test-id name of a key (class names: type_name says END for two classes)."""
    if isinstance(key, CheckpointId):
        return f"CheckpointState({key.name})"
    if isinstance(key, tuple):
        return f"ImageHeader_v{key[1]}"
    return key.__name__


# --- expectations from the hand-written tables --------------------------------


def describe(key: Hashable) -> str:
    """How refusals name a key (an unknown optional record by the sample's type number)."""
    if key is SkippedRecord:
        return "OPTIONAL_0x80001234"
    if isinstance(key, CheckpointId):
        return f"CHECKPOINT_STATE({key.name})"
    if isinstance(key, tuple):
        return f"{type_name(key[0])} v{key[1]}"
    return type_name(key)


def expected_text(state: State, mode: Checkpointed = COLO) -> str:
    return ", ".join(describe(key) for key in LEGAL_IN[mode][state]) or "nothing"


def moves(state: State, mode: Checkpointed = COLO) -> dict[Hashable, State]:
    """Every legal key in C{state} and where it leads."""
    out = dict(LEGAL_IN[mode][state])
    if state in BOUNDARY_NAMESPACE:
        out.update({kind: new or state for kind, new in AT_ANY_BOUNDARY.items()})
    return out


def outcome(state: State, key: Hashable, mode: Checkpointed = COLO) -> State | str:
    """The state C{key} leads to in C{state}, or the exact reason it is refused (without NOTE)."""
    legal = moves(state, mode)
    if key in legal:
        return legal[key]
    if (state, key) in EXPLAINED:
        return EXPLAINED[state, key]
    return f"{describe(key)} is not allowed {state.value}; expected {expected_text(state, mode)}"


def channel_of(state: State) -> Channel:
    return Channel.BACK if state in BACK_STATES else Channel.MAIN


def mode_for(state: State) -> Checkpointed:
    """The mode L{path_to} walks in: UNDECIDED is reached in AUTO only."""
    return AUTO if state is S.UNDECIDED else COLO


def path_to(state: State, guest: GuestType = HVM) -> list[object]:
    """Records that lead from the channel's first state to C{state} (not ERROR)."""
    v3 = [StreamHeader(), LibxcContext(), ImageHeader(3)]
    static = [*v3, DomainHeader(guest, 4, 17)]
    body = [*static, StaticDataEnd()]
    tail = [*body, LibxcEnd()]
    first = [*body, Checkpoint()]
    await_new = [*first, CheckpointEnd()]
    checkpointed = [*await_new, CheckpointState(NEW)]
    ready, resumed = [CheckpointState(SVM_READY)], [CheckpointState(SVM_READY), CheckpointState(SVM_RESUMED)]
    suspended = [*resumed, CheckpointState(SVM_SUSPENDED)]
    paths: dict[State, list[object]] = {
        S.STREAM_HEADER: [],
        S.LIBXL: [StreamHeader()],
        S.IMAGE_HEADER: [StreamHeader(), LibxcContext()],
        S.DOMAIN_HEADER_V2: [StreamHeader(), LibxcContext(), ImageHeader(2)],
        S.DOMAIN_HEADER_V3: v3,
        S.LIBXC_STATIC: static,
        S.LIBXC: body,
        S.LIBXL_TAIL: tail,
        S.FIRST_CHECKPOINT: first,
        S.AWAIT_NEW: await_new,
        S.LIBXC_CHECKPOINTED: checkpointed,
        S.CHECKPOINT: [*checkpointed, Checkpoint()],
        S.UNDECIDED: await_new,  # in AUTO
        S.DONE: [*tail, End()],
        S.ENDED: [StreamHeader(), SAMPLES[ReplicationEnd]],
        S.BACK_START: [],
        S.SVM_READY: ready,
        S.SVM_RESUMED: resumed,
        S.SVM_SUSPENDED: suspended,
        S.DIRTY_PFN_LIST: [*suspended, CheckpointDirtyPfnList([5])],
    }
    return paths[state]


REACHABLE = [state for state in State if state is not S.ERROR]

# --- the hand-written tables are complete -------------------------------------


def test_record_classes_are_all_known() -> None:
    """The classes enumerated here are the codec's: the Record union, and one per wire type."""
    classes = record_classes()
    assert classes == set(typing.get_args(records.Record))
    framed = {cls for cls in classes if getattr(cls, "TYPE", None) is not None}
    assert classes - framed == {StreamHeader, ImageHeader, DomainHeader, SkippedRecord}
    wire = (
        {(LIBXL, number) for number in LIBXL_READERS}
        | {(LIBXC, number) for number in LIBXC_READERS if number != LibxcType.TOOLSTACK}
        | {(None, number) for number in COLOD_READERS}
    )
    pairs = [(cls.NAMESPACE, cls.TYPE) for cls in framed]
    assert len(set(pairs)) == len(pairs)  # one class per wire type
    assert set(pairs) == wire
    assert set(SAMPLES) == classes - {CheckpointState, ImageHeader}
    assert IHDR_VERSIONS == {2, 3}
    assert set(KEYS) >= set(CheckpointId)


def test_hand_tables_cover_every_state() -> None:
    assert set(LEGAL) == set(State)
    kinds = [set(BOUNDARY_NAMESPACE), set(HEADERS), FINAL_STATES, {S.ERROR}]
    assert set().union(*kinds) == set(State)
    assert sum(len(kind) for kind in kinds) == len(State)  # each state is exactly one kind
    assert set(REACHABLE) | {S.ERROR} == set(State)


@pytest.mark.parametrize("key", KEYS, ids=key_id)
def test_samples_have_their_keys(key: Hashable) -> None:
    assert event_key(sample(key)) == key


def test_guest_only_records() -> None:
    assert {cls: cls.GUEST for cls in record_classes() if hasattr(cls, "GUEST")} == GUEST_ONLY


# --- every state, every key -----------------------------------------------------


MOVES = [
    pytest.param(state, key, id=f"{state.name}-{key_id(key)}")
    for state in State for key in KEYS
]


@pytest.mark.parametrize(("state", "key"), MOVES)
def test_move(state: State, key: Hashable) -> None:
    """next_state and Tracker.advance agree with the hand-written table."""
    record = sample(key)
    want = outcome(state, key)
    got = next_state(state, record)
    if isinstance(want, State):
        assert got is want
    else:
        assert got == want

    tracker = Tracker(channel_of(state))
    tracker.state = state
    tracker.guest = getattr(record, "GUEST", HVM)  # guest checks are test_guest_type's business
    reason = tracker.advance(record)
    if isinstance(want, State):
        assert reason is None
        assert tracker.state is want
        if isinstance(record, DomainHeader):
            assert tracker.guest is record.guest_type
    else:
        assert reason == want
        assert tracker.state is state


@pytest.mark.parametrize("state", list(State), ids=lambda state: state.name)
def test_expected_list(state: State) -> None:
    assert expected(state) == expected_text(state)


# --- positions: namespace, headers, final, clean end of file ------------------

STATES = pytest.mark.parametrize("state", list(State), ids=lambda state: state.name)


@STATES
def test_namespace(state: State) -> None:
    assert NAMESPACE.get(state) is BOUNDARY_NAMESPACE.get(state)


@STATES
def test_header_state(state: State) -> None:
    assert HEADER_STATES.get(state) is HEADERS.get(state)


@STATES
def test_final(state: State) -> None:
    assert (state in FINAL) is (state in FINAL_STATES)


@STATES
def test_clean_eof(state: State) -> None:
    assert (state in CLEAN_EOF) is (state in CLEAN_EOF_STATES)


@pytest.mark.parametrize("state", REACHABLE, ids=lambda state: state.name)
def test_path(state: State) -> None:
    """The hand-written path reaches its state, from the channel's initial state."""
    tracker = Tracker(channel_of(state), mode_for(state))
    assert tracker.state is (S.BACK_START if channel_of(state) is Channel.BACK else S.STREAM_HEADER)
    assert tracker.guest is None
    for record in path_to(state):
        assert tracker.advance(record) is None, record
    assert tracker.state is state


# --- guest types --------------------------------------------------------------


@pytest.mark.parametrize("guest", [PV, HVM], ids=lambda guest: guest.name)
@pytest.mark.parametrize("state", [S.LIBXC_STATIC, S.LIBXC, S.LIBXC_CHECKPOINTED], ids=lambda s: s.name)
def test_guest_type(state: State, guest: GuestType) -> None:
    """Records of the other guest type are refused where the table would take them."""
    tracker = Tracker(Channel.MAIN)
    for record in path_to(state, guest):
        assert tracker.advance(record) is None, record
    assert tracker.guest is guest
    checked = 0
    for kind, new in LEGAL[state].items():
        if not isinstance(kind, type):
            continue
        record = SAMPLES[kind]
        reason = tracker.refusal(record)
        only = GUEST_ONLY.get(kind)
        if only is None or only is guest:
            assert reason is None, kind
            assert next_state(state, record) is new
        else:
            assert reason == f"{type_name(kind)} belongs to {only.name} streams, this is {guest.name}"
            checked += 1
    assert checked == (2 if guest is PV else 7)


# --- the real decoder agrees ---------------------------------------------------


def wire(record: object) -> bytes:
    if isinstance(record, SkippedRecord):
        return RECORD_HEADER.pack(record.type, record.length)
    return b"".join(write_record(record))


def encoded_path(state: State, guest: GuestType) -> bytes:
    encoder = Encoder(channel_of(state))  # COLO: the path to UNDECIDED is a COLO stream's too
    return b"".join(encoder.send(record) for record in path_to(state, guest))


def _decodable(state: State, key: Hashable) -> bool:
    """Whether the bytes of C{key}'s record are read as that record in C{state}."""
    cls = key_class(key)
    if state in HEADERS:
        return cls is HEADERS[state] and key != (ImageHeader, UNSUPPORTED_IMAGE_VERSION)
    if state not in BOUNDARY_NAMESPACE or cls in (StreamHeader, ImageHeader, DomainHeader):
        return False
    if cls is SkippedRecord:
        return BOUNDARY_NAMESPACE[state] is LIBXC
    return cls.NAMESPACE in (BOUNDARY_NAMESPACE[state], None)


DECODER_MOVES = [
    pytest.param(state, key, id=f"{state.name}-{key_id(key)}")
    for state in REACHABLE for key in KEYS if _decodable(state, key) and state is not S.UNDECIDED
]  # in UNDECIDED a header decides the mode before the table is asked: test_auto_decides


def _check_eof(decoder: Decoder, state: State) -> None:
    decoder.receive_data(b"")
    if state in CLEAN_EOF_STATES:
        assert decoder.next_record() is CLOSED
    else:
        with pytest.raises(StreamError) as caught:
            decoder.next_record()
        assert caught.value.reason == f"stream ends {state.value}; expected {expected_text(state)}"


@pytest.mark.parametrize(("state", "key"), DECODER_MOVES)
def test_decoder_move(state: State, key: Hashable) -> None:
    """Bytes of the record after a path to C{state}: decoded, or refused with the same reason."""
    record = sample(key)
    prefix = encoded_path(state, getattr(record, "GUEST", HVM))
    decoder = Decoder(channel_of(state))
    decoder.receive_data(prefix + wire(record))
    for _ in path_to(state):
        assert decoder.next_record() not in (NEED_DATA, CLOSED)
    want = outcome(state, key)
    if isinstance(want, State):
        assert decoder.next_record() == record
        assert decoder.last_frame.offset == len(prefix)
        assert decoder.next_record() is NEED_DATA
        _check_eof(decoder, want)
    else:
        with pytest.raises(StreamError) as caught:
            decoder.next_record()
        assert caught.value.reason == want
        assert caught.value.offset == len(prefix)


@pytest.mark.parametrize("state", REACHABLE, ids=lambda state: state.name)
def test_decoder_end_of_file(state: State) -> None:
    decoder = Decoder(channel_of(state), mode_for(state))
    decoder.receive_data(encoded_path(state, HVM))
    for _ in path_to(state):
        assert decoder.next_record() not in (NEED_DATA, CLOSED)
    _check_eof(decoder, state)


@pytest.mark.parametrize("state", sorted(FINAL_STATES, key=lambda s: s.name), ids=lambda s: s.name)
def test_decoder_nothing_after_final(state: State) -> None:
    heartbeat = wire(SAMPLES[Heartbeat])
    decoder = Decoder(channel_of(state))
    decoder.receive_data(encoded_path(state, HVM) + heartbeat)
    for _ in path_to(state):
        assert decoder.next_record() not in (NEED_DATA, CLOSED)
    with pytest.raises(StreamError) as caught:
        decoder.next_record()
    assert caught.value.reason == f"data {state.value}"


# --- Remus and AUTO: every state, every key --------------------------------------


def remus_path_to(state: State, guest: GuestType = HVM) -> list[object]:
    """Records that lead to C{state} in a Remus stream (where it is reachable)."""
    first = [StreamHeader(), LibxcContext(), ImageHeader(3), DomainHeader(guest, 4, 17), StaticDataEnd(),
             Checkpoint()]
    checkpointed = [*first, CheckpointEnd()]
    paths: dict[State, list[object]] = {
        S.FIRST_CHECKPOINT: first,
        S.LIBXC_CHECKPOINTED: checkpointed,
        S.CHECKPOINT: [*checkpointed, Checkpoint()],
        S.DONE: [*checkpointed, LibxcEnd()],
    }
    return paths.get(state, path_to(state, guest))


#: Not reachable in a Remus stream: nothing waits for CHECKPOINT_STATE, nothing is undecided.
REMUS_REACHABLE = [state for state in REACHABLE if state not in (S.AWAIT_NEW, S.UNDECIDED)]

MODE_MOVES = [
    pytest.param(mode, state, key, id=f"{mode.name}-{state.name}-{key_id(key)}")
    for mode in (REMUS, AUTO) for state in State for key in KEYS
]


@pytest.mark.parametrize(("mode", "state", "key"), MODE_MOVES)
def test_move_in_mode(mode: Checkpointed, state: State, key: Hashable) -> None:
    """As test_move, in a Remus stream and in an AUTO one before it is decided."""
    record = sample(key)
    want = outcome(state, key, mode)
    got = next_state(state, record, mode)
    if isinstance(want, State):
        assert got is want
    else:
        assert got == want

    tracker = Tracker(channel_of(state), mode)
    tracker.state = state
    tracker.guest = getattr(record, "GUEST", HVM)
    reason = tracker.advance(record)
    if isinstance(want, State):
        assert reason is None
        assert tracker.state is want
    else:
        assert reason == want + NOTE[mode]
        assert tracker.state is state


def test_remus_moves_differ_from_colo_only_at_checkpoint_end() -> None:
    """The hand tables agree with each other where Xen's code is the same."""
    for mode in (REMUS, AUTO):
        differ = {state for state in State if LEGAL_IN[mode][state] != LEGAL[state]}
        assert differ == {S.FIRST_CHECKPOINT, S.CHECKPOINT}


@pytest.mark.parametrize("mode", [REMUS, AUTO], ids=lambda mode: mode.name)
@pytest.mark.parametrize("state", list(State), ids=lambda state: state.name)
def test_expected_list_in_mode(mode: Checkpointed, state: State) -> None:
    assert expected(state, mode) == expected_text(state, mode)


@pytest.mark.parametrize("state", REMUS_REACHABLE, ids=lambda state: state.name)
def test_remus_path(state: State) -> None:
    tracker = Tracker(channel_of(state), REMUS)
    for record in remus_path_to(state):
        assert tracker.advance(record) is None, record
    assert tracker.state is state


def encoded_remus_path(state: State, guest: GuestType) -> bytes:
    encoder = Encoder(channel_of(state), REMUS)
    return b"".join(encoder.send(record) for record in remus_path_to(state, guest))


REMUS_DECODER_MOVES = [
    pytest.param(state, key, id=f"{state.name}-{key_id(key)}")
    for state in REMUS_REACHABLE for key in KEYS if _decodable(state, key)
]


@pytest.mark.parametrize(("state", "key"), REMUS_DECODER_MOVES)
def test_remus_decoder_move(state: State, key: Hashable) -> None:
    """A REMUS decoder: decoded, or refused with the hand-written reason naming the mode."""
    record = sample(key)
    prefix = encoded_remus_path(state, getattr(record, "GUEST", HVM))
    decoder = Decoder(channel_of(state), REMUS)
    decoder.receive_data(prefix + wire(record))
    for _ in remus_path_to(state):
        assert decoder.next_record() not in (NEED_DATA, CLOSED)
    want = outcome(state, key, REMUS)
    if isinstance(want, State):
        assert decoder.next_record() == record
        assert decoder.next_record() is NEED_DATA
        decoder.receive_data(b"")
        if want in CLEAN_EOF_STATES:
            assert decoder.next_record() is CLOSED
        else:
            with pytest.raises(StreamError) as caught:
                decoder.next_record()
            assert caught.value.reason == (
                f"stream ends {want.value}; expected {expected_text(want, REMUS)}{NOTE[REMUS]}")
    else:
        with pytest.raises(StreamError) as caught:
            decoder.next_record()
        assert caught.value.reason == want + NOTE[REMUS]
        assert caught.value.offset == len(prefix)


@pytest.mark.parametrize("state", REMUS_REACHABLE, ids=lambda state: state.name)
def test_remus_decoder_end_of_file(state: State) -> None:
    decoder = Decoder(channel_of(state), REMUS)
    decoder.receive_data(encoded_remus_path(state, HVM))
    for _ in remus_path_to(state):
        assert decoder.next_record() not in (NEED_DATA, CLOSED)
    decoder.receive_data(b"")
    if state in CLEAN_EOF_STATES:
        assert decoder.next_record() is CLOSED
    else:
        with pytest.raises(StreamError) as caught:
            decoder.next_record()
        assert caught.value.reason == (
            f"stream ends {state.value}; expected {expected_text(state, REMUS)}{NOTE[REMUS]}")


# --- AUTO: the header after the first CHECKPOINT_END decides ----------------------

#: The record after the first CHECKPOINT_END: the mode it decides (None: not
#: decided) and the state it leads to, or the refusal without its note.
AUTO_DECISIONS: list[tuple[Hashable, Checkpointed | None, State | str]] = [
    (NEW, COLO, S.LIBXC_CHECKPOINTED),
    (SVM_READY, COLO, "CHECKPOINT_STATE(SVM_READY) is not allowed between checkpoints, expecting "
                      "CHECKPOINT_STATE(NEW); expected CHECKPOINT_STATE(NEW)"),
    (SVM_SUSPENDED, COLO, "CHECKPOINT_STATE(SVM_SUSPENDED) is not allowed between checkpoints, expecting "
                          "CHECKPOINT_STATE(NEW); expected CHECKPOINT_STATE(NEW)"),
    (PageData, REMUS, S.LIBXC_CHECKPOINTED),
    (X86TscInfo, REMUS, S.LIBXC_CHECKPOINTED),
    (HvmContext, REMUS, S.LIBXC_CHECKPOINTED),
    (HvmParams, REMUS, S.LIBXC_CHECKPOINTED),
    (Verify, REMUS, S.LIBXC_CHECKPOINTED),
    (SkippedRecord, REMUS, S.LIBXC_CHECKPOINTED),
    (Checkpoint, REMUS, S.CHECKPOINT),  # an empty checkpoint
    (LibxcEnd, REMUS, S.DONE),  # failover
    (StaticDataEnd, REMUS, "STATIC_DATA_END is not allowed in the libxc part of a checkpoint; expected "
                           "PAGE_DATA, X86_PV_INFO, X86_PV_P2M_FRAMES, X86_PV_VCPU_BASIC, "
                           "X86_PV_VCPU_EXTENDED, X86_PV_VCPU_XSAVE, X86_PV_VCPU_MSRS, SHARED_INFO, "
                           "X86_TSC_INFO, HVM_CONTEXT, HVM_PARAMS, VERIFY, CHECKPOINT, END"),
    (Heartbeat, None, S.UNDECIDED),
    (ReplicationEnd, None, S.ENDED),
]


@pytest.mark.parametrize(
    ("key", "mode", "want"), AUTO_DECISIONS, ids=[key_id(key) for key, _, _ in AUTO_DECISIONS]
)
def test_auto_decides(key: Hashable, mode: Checkpointed | None, want: State | str) -> None:
    record = sample(key)
    prefix = encoded_path(S.UNDECIDED, HVM)
    decoder = Decoder(Channel.MAIN, AUTO)
    decoder.receive_data(prefix + wire(record))
    for _ in path_to(S.UNDECIDED):
        assert decoder.next_record() not in (NEED_DATA, CLOSED)
    assert decoder.checkpointed is AUTO
    if isinstance(want, State):
        assert decoder.next_record() == record
        assert decoder.checkpointed is (mode or AUTO)
        assert decoder.next_record() is NEED_DATA
        decoder.receive_data(b"")
        if want in CLEAN_EOF_STATES:
            assert decoder.next_record() is CLOSED
    else:
        assert mode is not None
        with pytest.raises(StreamError) as caught:
            decoder.next_record()
        assert caught.value.reason == want + DECIDED_NOTE[mode]
        assert caught.value.offset == len(prefix)
