"""Hypothesis strategies: valid records, and valid record sequences walked from the state table."""

from __future__ import annotations

from collections.abc import Hashable

from hypothesis import strategies as st

from colod.protocol import (
    Channel,
    Checkpoint,
    CheckpointDirtyPfnList,
    CheckpointEnd,
    CheckpointId,
    CheckpointState,
    DomainHeader,
    EmulatorContext,
    EmulatorId,
    EmulatorXenstoreData,
    End,
    GuestType,
    Heartbeat,
    HvmContext,
    HvmParams,
    ImageHeader,
    LibxcContext,
    LibxcEnd,
    PageData,
    PageType,
    Record,
    ReplicationEnd,
    ReplicationEndReason,
    SharedInfo,
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
)
from colod.protocol.state import INITIAL, TRANSITIONS, State, Tracker

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
blob = st.binary(max_size=40)
_no_nul = st.binary(max_size=12).map(lambda b: b.replace(b"\0", b"x"))
_key = _no_nul.map(lambda b: b"k" + b.lstrip(b"/"))


@st.composite
def page_data(draw: st.DrawFn) -> PageData:
    types = draw(st.lists(st.sampled_from(list(PageType)), min_size=1, max_size=5))
    with_data = sum(t not in (PageType.BROKEN, PageType.XALLOC, PageType.XTAB) for t in types)
    fill = draw(st.integers(0, 255))
    pfns = draw(st.lists(st.integers(0, 2**52 - 1), min_size=len(types), max_size=len(types)))
    return PageData(pfns=pfns, types=bytes(types), data=bytes([fill]) * (4096 * with_data))


RECORDS: dict[type, st.SearchStrategy[Record]] = {
    StreamHeader: st.builds(StreamHeader, st.booleans()),
    DomainHeader: st.builds(DomainHeader, st.sampled_from(list(GuestType)), u32, u32),
    End: st.just(End()),
    LibxcContext: st.just(LibxcContext()),
    EmulatorXenstoreData: st.builds(
        EmulatorXenstoreData, st.sampled_from(list(EmulatorId)), u32,
        st.lists(st.tuples(_key, _no_nul), max_size=3).map(tuple),
    ),
    EmulatorContext: st.builds(EmulatorContext, st.sampled_from(list(EmulatorId)), u32, blob),
    CheckpointEnd: st.just(CheckpointEnd()),
    LibxcEnd: st.just(LibxcEnd()),
    PageData: page_data(),
    X86PvInfo: st.builds(X86PvInfo, st.sampled_from([4, 8]), st.sampled_from([3, 4])),
    X86PvP2mFrames: st.builds(X86PvP2mFrames, u32, u32, st.lists(u64, max_size=4)),
    X86PvVcpuBasic: st.builds(X86PvVcpuBasic, u32, blob),
    X86PvVcpuExtended: st.builds(X86PvVcpuExtended, u32, blob),
    X86PvVcpuXsave: st.builds(X86PvVcpuXsave, u32, blob),
    X86PvVcpuMsrs: st.builds(X86PvVcpuMsrs, u32, blob),
    SharedInfo: st.integers(0, 255).map(lambda b: SharedInfo(bytes([b]) * 4096)),
    X86TscInfo: st.builds(X86TscInfo, u32, u32, u64, u32),
    HvmContext: st.builds(HvmContext, st.binary(min_size=1, max_size=40)),
    HvmParams: st.builds(HvmParams, st.lists(st.tuples(u64, u64), max_size=4)),
    Verify: st.just(Verify()),
    Checkpoint: st.just(Checkpoint()),
    CheckpointDirtyPfnList: st.builds(CheckpointDirtyPfnList, st.lists(u64, max_size=6)),
    StaticDataEnd: st.just(StaticDataEnd()),
    X86CpuidPolicy: st.builds(X86CpuidPolicy, st.lists(st.tuples(u32, u32, u32, u32, u32, u32), min_size=1,
                                                       max_size=3)),
    X86MsrPolicy: st.builds(X86MsrPolicy, st.lists(st.tuples(u32, u32, u64), min_size=1, max_size=3)),
    Heartbeat: st.builds(Heartbeat, u64, u64),
    ReplicationEnd: st.builds(
        ReplicationEnd, st.sampled_from(list(ReplicationEndReason)), st.text(max_size=20)
    ),
}


def _strategy(key: Hashable) -> st.SearchStrategy[Record]:
    if isinstance(key, CheckpointId):
        return st.just(CheckpointState(key))
    if isinstance(key, tuple):
        return st.just(ImageHeader(key[1]))
    return RECORDS[key]


@st.composite
def sequences(draw: st.DrawFn, channel: Channel, max_records: int = 25) -> list[Record]:
    """A stream Xen's reader would accept, walked at random through the transition table."""
    tracker = Tracker(channel)
    assert tracker.state is INITIAL[channel]
    records: list[Record] = []
    for _ in range(draw(st.integers(0, max_records))):
        keys = [
            key for key, new in TRANSITIONS[tracker.state].items()
            if new is not State.ERROR and getattr(key, "GUEST", tracker.guest) is tracker.guest
        ]
        options = [_strategy(key) for key in keys]
        if tracker.refusal(Heartbeat(0)) is None:
            options.append(RECORDS[Heartbeat])
        if not options:
            break
        record = draw(st.one_of(options))
        assert tracker.advance(record) is None
        records.append(record)
    # Last, if at all: it ends the channel (drawn here, not above, so that walks stay long).
    if tracker.refusal(Heartbeat(0)) is None and draw(st.booleans()):
        records.append(draw(RECORDS[ReplicationEnd]))
    return records
