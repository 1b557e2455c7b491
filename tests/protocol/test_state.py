"""The transition tables, driven with records only (no bytes)."""

from __future__ import annotations

from colod.protocol import (
    Checkpoint,
    CheckpointEnd,
    CheckpointId,
    CheckpointState,
    DomainHeader,
    GuestType,
    Heartbeat,
    ImageHeader,
    LibxcContext,
    LibxcEnd,
    PageData,
    StaticDataEnd,
    StreamHeader,
    X86PvInfo,
)
from colod.protocol.state import CLEAN_EOF, HEADER_STATES, NAMESPACE, TRANSITIONS, Channel, State, Tracker

S = State


LIBXC = [StreamHeader(), LibxcContext(), ImageHeader(3), DomainHeader(GuestType.X86_HVM)]


def walk(channel: Channel, records: list) -> Tracker:
    tracker = Tracker(channel)
    for record in records:
        assert tracker.advance(record) is None, record
    return tracker


def test_every_state_is_reachable_and_described() -> None:
    targets = {new for moves in TRANSITIONS.values() for new in moves.values()}
    reachable = {S.STREAM_HEADER, S.BACK_START} | targets
    assert reachable == set(State)
    for state in State:
        assert state in NAMESPACE or state in HEADER_STATES or state is S.ERROR


def test_colo_main_sequence() -> None:
    tracker = walk(Channel.MAIN, [*LIBXC, StaticDataEnd(), Checkpoint(), CheckpointEnd()])
    assert tracker.state is S.AWAIT_NEW
    walk_on = [CheckpointState(CheckpointId.NEW), Heartbeat(1), Checkpoint(), CheckpointEnd()]
    for record in walk_on:
        assert tracker.advance(record) is None
    assert tracker.state is S.AWAIT_NEW
    assert tracker.advance(LibxcEnd()) is not None  # libxc record while libxl expects CHECKPOINT_STATE


def test_v2_image_has_no_static_data_end() -> None:
    tracker = walk(Channel.MAIN, [StreamHeader(), LibxcContext(), ImageHeader(2), DomainHeader()])
    assert tracker.state is S.LIBXC
    assert "STATIC_DATA_END is not allowed" in tracker.advance(StaticDataEnd())


def test_page_data_needs_static_data_end_in_v3() -> None:
    tracker = walk(Channel.MAIN, LIBXC)
    reason = tracker.advance(PageData([1], b"\x0f", b""))
    assert reason == "PAGE_DATA before STATIC_DATA_END in a v3 libxc stream"


def test_guest_type() -> None:
    tracker = walk(Channel.MAIN, LIBXC)
    assert "belongs to X86_PV" in tracker.advance(X86PvInfo(8, 4))


def test_heartbeats_never_inside_headers() -> None:
    tracker = walk(Channel.MAIN, [StreamHeader(), LibxcContext()])
    assert tracker.refusal(Heartbeat(0)) is not None
    assert Tracker(Channel.MAIN).refusal(Heartbeat(0)) is not None
    assert Tracker(Channel.BACK).refusal(Heartbeat(0)) is None


def test_back_channel_cycle() -> None:
    ids = [CheckpointId.SVM_READY, CheckpointId.SVM_RESUMED]
    tracker = walk(Channel.BACK, [CheckpointState(i) for i in ids])
    assert tracker.state is S.SVM_RESUMED and tracker.state in CLEAN_EOF
    assert "SVM_READY" in tracker.advance(CheckpointState(CheckpointId.SVM_READY))
