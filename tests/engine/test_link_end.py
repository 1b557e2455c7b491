"""How each link end is classified, and what each side's table does with it."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from colod.engine.checkpoint_buffer import CheckpointTooLarge
from colod.engine.link_end import (
    ACTIONS,
    Action,
    LinkEnd,
    LinkEndKind,
    PeerSilent,
    ProtocolViolation,
    secondary_action,
)
from colod.protocol import (
    LocalEndedReplication,
    PeerEndedReplication,
    ReplicationEndReason,
    StreamCutShort,
    StreamError,
)
from colod.protocol.handshake import CertificateMismatch, HandshakeTimeout

#: An error of each kind, as the link or the engine raises it.
EXAMPLES: list[tuple[BaseException, LinkEndKind]] = [
    (PeerEndedReplication(ReplicationEndReason.SHUTDOWN, "stopping"), LinkEndKind.PEER_ENDED),
    (LocalEndedReplication(ReplicationEndReason.LOCAL_FAILURE, "failed"), LinkEndKind.LOCAL_END),
    (HandshakeTimeout("no hello"), LinkEndKind.HANDSHAKE_ERROR),
    (CertificateMismatch("mallory"), LinkEndKind.HANDSHAKE_ERROR),
    (StreamError(12, "bad record"), LinkEndKind.PROTOCOL_ERROR),
    (ProtocolViolation("SVM_READY not allowed"), LinkEndKind.PROTOCOL_ERROR),
    (CheckpointTooLarge("too many pages"), LinkEndKind.PROTOCOL_ERROR),
    (PeerSilent("nothing heard for 3 s"), LinkEndKind.SILENCE),
    (ConnectionDone(), LinkEndKind.CONNECTION_LOST),
    (ConnectionLost(), LinkEndKind.CONNECTION_LOST),
    (StreamCutShort("in the middle of a record"), LinkEndKind.CONNECTION_LOST),
    (RuntimeError("something else"), LinkEndKind.UNKNOWN),
]


class LinkEndTests(SynchronousTestCase):
    def test_each_error_has_its_kind(self) -> None:
        for error, kind in EXAMPLES:
            end = LinkEnd.of(Failure(error))
            self.assertEqual((end.kind, end.reason.value), (kind, error), repr(error))

    def test_every_kind_but_unknown_is_in_the_table(self) -> None:
        self.assertEqual(set(ACTIONS), set(LinkEndKind) - {LinkEndKind.UNKNOWN})

    def test_the_primary_drops_its_secondary_whatever_the_end(self) -> None:
        self.assertEqual({primary for primary, _ in ACTIONS.values()}, {Action.DROP_SECONDARY})

    def test_the_secondary_asks_its_policy_only_when_the_primary_may_be_dead(self) -> None:
        """Only a broken connection, silence, or an end nobody named may be a dead primary; an end the
        primary made on purpose, or a protocol it broke, shows it alive: no takeover."""
        asks = {kind for kind in LinkEndKind
                if secondary_action(LinkEnd.of(Failure(_error_of(kind)))) is Action.ASK_POLICY}
        self.assertEqual(asks, {LinkEndKind.CONNECTION_LOST, LinkEndKind.SILENCE, LinkEndKind.UNKNOWN})

    def test_no_end_takes_over_without_the_policy(self) -> None:
        self.assertNotIn("take over", " ".join(action.value for pair in ACTIONS.values() for action in pair))


def _error_of(kind: LinkEndKind) -> BaseException:
    return next(error for error, each in EXAMPLES if each is kind)
