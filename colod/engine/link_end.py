# -*- test-case-name: tests.engine.test_link_end -*-
"""Why a peer link ended, as one typed value, and what each side does about it.

A link can end in a handful of ways, and only some of them say anything about
whether the peer's guest still runs: a peer that ended replication on purpose
or broke the protocol is alive; a connection that broke, or a peer that fell
silent, may be a dead host, or a partition, or a stalled process.  The engine
core turns each end into a L{LinkEnd} where the link reports it (the one
place that knows), and each side looks its kind up in L{ACTIONS}: one table,
read nowhere else.  A kind the table lacks is a loss that still needs the
failover policy (colod.failover.policy): never a takeover without one.
"""

from __future__ import annotations

import enum

import attrs
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.python.failure import Failure

from colod.protocol import HandshakeError, LocalEndedReplication, PeerEndedReplication, StreamError


class PeerSilent(ConnectionError):
    """Nothing was heard from the peer for the heartbeat timeout."""


class ProtocolViolation(Exception):
    """The peer sent a record the protocol does not allow at this step."""


class LinkEndKind(enum.StrEnum):
    """How a link ended, decided where it ended."""

    PEER_ENDED = "peer ended"
    LOCAL_END = "local end"
    PROTOCOL_ERROR = "protocol error"
    HANDSHAKE_ERROR = "handshake error"
    CONNECTION_LOST = "connection lost"
    SILENCE = "silence"
    UNKNOWN = "unknown"


class Action(enum.StrEnum):
    """What a side does when its link ends."""

    #: Primary: detach the secondary, the guest runs on unprotected.
    DROP_SECONDARY = "drop the secondary"
    #: Secondary: the primary is alive and may run its guest; stop replicating, never take over.
    END_REPLICATION = "end replication"
    #: Secondary: the primary may be dead, or only cut off; the failover policy decides.
    ASK_POLICY = "ask the failover policy"


@attrs.frozen
class LinkEnd:
    """One link's end: its kind, and the failure it came with (for the log's words)."""

    kind: LinkEndKind
    reason: Failure

    @classmethod
    def of(cls, reason: Failure) -> LinkEnd:
        """Classify ``reason``; the order matters where one error class derives from another."""
        error = reason.value
        kinds: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], LinkEndKind], ...] = (
            (PeerEndedReplication, LinkEndKind.PEER_ENDED),
            (LocalEndedReplication, LinkEndKind.LOCAL_END),
            (HandshakeError, LinkEndKind.HANDSHAKE_ERROR),
            ((StreamError, ProtocolViolation), LinkEndKind.PROTOCOL_ERROR),
            (PeerSilent, LinkEndKind.SILENCE),
            ((ConnectionDone, ConnectionLost), LinkEndKind.CONNECTION_LOST),
        )
        for types, kind in kinds:
            if isinstance(error, types):
                return cls(kind, reason)
        return cls(LinkEndKind.UNKNOWN, reason)


#: Each kind of end, and what (primary, secondary) do about it.  The primary
#: keeps its guest whatever happened; the secondary takes over only through
#: its failover policy, and never when the primary showed it is alive.
ACTIONS: dict[LinkEndKind, tuple[Action, Action]] = {
    LinkEndKind.PEER_ENDED: (Action.DROP_SECONDARY, Action.END_REPLICATION),
    LinkEndKind.LOCAL_END: (Action.DROP_SECONDARY, Action.END_REPLICATION),
    LinkEndKind.PROTOCOL_ERROR: (Action.DROP_SECONDARY, Action.END_REPLICATION),
    LinkEndKind.HANDSHAKE_ERROR: (Action.DROP_SECONDARY, Action.END_REPLICATION),
    LinkEndKind.CONNECTION_LOST: (Action.DROP_SECONDARY, Action.ASK_POLICY),
    LinkEndKind.SILENCE: (Action.DROP_SECONDARY, Action.ASK_POLICY),
}


def secondary_action(end: LinkEnd) -> Action:
    """The secondary's action for ``end``: a kind not in the table asks the policy."""
    return ACTIONS.get(end.kind, (Action.DROP_SECONDARY, Action.ASK_POLICY))[1]
