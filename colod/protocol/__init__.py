# -*- test-case-name: tests.protocol -*-
"""
The checkpoint stream between two colods: a sans-IO codec for Xen's libxl /
libxc migration-v2 format (main and back channel), and the Twisted peer link
that carries both channels over one TCP connection.  See docs/protocol.md.
"""

from .decoder import CLOSED, NEED_DATA, Decoder, Frame
from .encoder import Encoder
from .errors import (
    LocalEndedReplication,
    PeerEndedReplication,
    ReplicationEnded,
    StreamCutShort,
    StreamError,
)
from .handshake import HandshakeError
from .records import (
    Buffer,
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
    Record,
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
from .state import Channel, Checkpointed
from .wire import CheckpointId, EmulatorId, GuestType, Namespace, PageType, ReplicationEndReason

__all__ = [
    "CLOSED", "NEED_DATA", "Buffer", "Channel", "Checkpoint", "CheckpointDirtyPfnList", "CheckpointEnd",
    "Checkpointed", "CheckpointId", "CheckpointState", "Decoder", "DomainHeader", "EmulatorContext",
    "EmulatorId",
    "EmulatorXenstoreData", "Encoder", "End", "Frame", "GuestType", "HandshakeError", "Heartbeat",
    "HvmContext", "HvmParams", "ImageHeader", "LibxcContext", "LibxcEnd", "LocalEndedReplication",
    "Namespace", "PageData", "PageType", "PeerEndedReplication", "Record", "ReplicationEnd",
    "ReplicationEndReason", "ReplicationEnded", "SharedInfo", "SkippedRecord", "StaticDataEnd",
    "StreamCutShort", "StreamError", "StreamHeader", "Verify", "X86CpuidPolicy", "X86MsrPolicy", "X86PvInfo",
    "X86PvP2mFrames", "X86PvVcpuBasic", "X86PvVcpuExtended", "X86PvVcpuMsrs", "X86PvVcpuXsave",
    "X86TscInfo", "record_name", "type_name",
]
