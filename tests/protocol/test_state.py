"""The transition tables, driven with records only (no bytes)."""

from __future__ import annotations

from colod.protocol import (
    Checkpoint,
    CheckpointEnd,
    CheckpointId,
    CheckpointState,
    DomainHeader,
    End,
    GuestType,
    Heartbeat,
    ImageHeader,
    LibxcContext,
    LibxcEnd,
    PageData,
    ReplicationEnd,
    ReplicationEndReason,
    StaticDataEnd,
    StreamHeader,
    X86PvInfo,
    record_name,
)
from colod.protocol.state import (
    ANYWHERE,
    CLEAN_EOF,
    FINAL,
    HEADER_STATES,
    NAMESPACE,
    TABLES,
    Channel,
    State,
    Tracker,
)

S = State


LIBXC = [StreamHeader(), LibxcContext(), ImageHeader(3), DomainHeader(GuestType.X86_HVM)]
BYE = ReplicationEnd(ReplicationEndReason.SHUTDOWN, "colod stopping")


def walk(channel: Channel, records: list) -> Tracker:
    tracker = Tracker(channel)
    for record in records:
        assert tracker.advance(record) is None, record
    return tracker


def test_every_state_is_reachable_and_described() -> None:
    targets = {new for table in TABLES.values() for moves in table.values() for new in moves.values()}
    reachable = {S.STREAM_HEADER, S.BACK_START} | targets | {new for new in ANYWHERE.values() if new}
    assert reachable == set(State)
    for state in State:
        assert state in NAMESPACE or state in HEADER_STATES or state in FINAL or state is S.ERROR


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


def test_replication_end_wherever_a_heartbeat_may_be() -> None:
    """Legal at every record boundary of either channel, never inside the fixed headers."""
    for channel, records in [
        (Channel.MAIN, [StreamHeader()]),
        (Channel.MAIN, [*LIBXC, StaticDataEnd()]),
        (Channel.MAIN, [*LIBXC, StaticDataEnd(), Checkpoint(), CheckpointEnd()]),
        (Channel.BACK, []),
        (Channel.BACK, [CheckpointState(CheckpointId.SVM_READY)]),
    ]:
        tracker = walk(channel, records)
        assert tracker.advance(BYE) is None
        assert tracker.state is S.ENDED and tracker.state in CLEAN_EOF
    for records in ([], LIBXC[:2], LIBXC[:3]):
        tracker = walk(Channel.MAIN, records)
        assert tracker.refusal(BYE) is not None
        assert tracker.refusal(Heartbeat(0)) is not None


def test_nothing_after_replication_end() -> None:
    refused = " is not allowed after COLOD_REPLICATION_END ended the channel; expected nothing"
    for channel in Channel:
        tracker = walk(channel, [StreamHeader()] if channel is Channel.MAIN else [])
        tracker.advance(BYE)
        for record in (Heartbeat(1), BYE, CheckpointState(CheckpointId.SVM_READY), LibxcContext()):
            reason = tracker.advance(record)
            assert reason.startswith(record_name(record))
            assert reason.endswith(refused)
        assert tracker.state is S.ENDED


def test_end_is_final_too() -> None:
    """After libxl END nothing may come either, not even COLOD_REPLICATION_END."""
    tracker = walk(Channel.MAIN, [StreamHeader(), End()])
    assert tracker.state is S.DONE and tracker.state in FINAL
    assert tracker.refusal(Heartbeat(0)) is not None
    assert tracker.refusal(BYE) is not None
