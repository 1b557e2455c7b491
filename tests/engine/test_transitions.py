"""Every transition of both engines' machines, on a task.Clock, with fakes for guest, devices and link.

Each transition gets one test, made from the machine's own list
(colod.engine.primary.TRANSITIONS, colod.engine.secondary.TRANSITIONS): it
drives the engine from its start to the transition's old state (PATHS), makes
the world produce the input as it would (APPLY: a record arrives, a step ends
or fails, the link goes, time passes), checks the new state and what the
transition did (CHECKS), then stops the engine and checks that no timer is
left.  test_every_transition_is_checked fails for a transition without its
check, so a new transition cannot go untested.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from colod.engine import primary, secondary
from colod.engine.core import EngineCore, RequestRefused
from colod.engine.generation import Generation
from colod.engine.link_end import LinkEnd
from colod.engine.machine import Transition
from colod.engine.primary import CheckpointRefused, PrimaryEngine, PrimaryState
from colod.engine.secondary import SecondaryEngine, SecondaryState
from colod.failover.policy import Verdict
from colod.protocol import (
    Checkpoint,
    CheckpointDirtyPfnList,
    CheckpointEnd,
    CheckpointId,
    CheckpointState,
    LibxcContext,
    PeerEndedReplication,
    Record,
    ReplicationEndReason,
)
from colod.protocol.handshake import Hello, Role
from tests.engine.fakes import (
    FakeDevices,
    FakeDomain,
    FakeGuest,
    FakeLink,
    FakePolicy,
    FakeQMP,
    FakeRecheckingPolicy,
    FakeRequests,
    FakeStatus,
    World,
)

INTERVAL = 5.0
#: Where each harness keeps its generation (a takeover writes one): one directory for the whole run.
_SCRATCH = tempfile.TemporaryDirectory(prefix="colod-transitions-")
_GENERATION_DIRS = (Path(_SCRATCH.name) / str(n) for n in itertools.count())
TIMEOUT = 60.0


class Harness:
    """One engine and its fake world; ``answers`` keeps what request_checkpoint's Deferreds fired with."""

    def __init__(self, role: Role, policy: type[FakePolicy] = FakePolicy) -> None:
        self.clock = Clock()
        self.world = World()
        self.link = FakeLink()
        self.status = FakeStatus()
        self.answers: list[object] = []
        self.policy = policy(self.world)
        self.requests = FakeRequests()
        common: tuple[Any, ...] = (FakeDomain(), role.value, FakeGuest(self.world), FakeDevices(self.world),
                                   self.clock, self.status, FakeQMP())
        self.generation = Generation(next(_GENERATION_DIRS))
        self.engine: EngineCore[Any, Any]
        if role is Role.PRIMARY:
            self.peer = Hello(Role.SECONDARY, "guest", "secondary")
            self.engine = PrimaryEngine(*common, generation=self.generation, interval=INTERVAL,
                                        checkpoint_timeout=TIMEOUT,
                                        on_stopped_for_good=lambda: self.world.calls.append("let go"))
        else:
            self.peer = Hello(Role.PRIMARY, "guest", "primary")
            self.engine = SecondaryEngine(*common, generation=self.generation, policy=self.policy,
                                          requests=self.requests)

    def receive(self, record: Record) -> None:
        self.engine.recordReceived(self.link, record)  # type: ignore[arg-type]

    def lose(self, reason: Failure) -> None:
        """The link is lost, if the engine still holds it; else the loss reaches the machine as it may
        in a race (a verdict reached while the link was being let go)."""
        if self.engine.link is self.link:
            self.engine.linkLost(self.link, reason)  # type: ignore[arg-type]
        else:
            self.engine.lost(LinkEnd.of(reason))

    def step_ends(self) -> None:
        """The step under way ends: its calls are answered until the machine moves (not the next step's)."""
        state = self.engine.state
        while self.world.pending and self.engine.state is state:
            self.world.answer()

    def step_fails(self) -> None:
        """The step under way fails (what it does after the failure, such as a resume in a finally,
        is answered); with none under way, the machine hears of one all the same."""
        if self.world.pending:
            state = self.engine.state
            self.world.fail()
            while self.world.pending and self.engine.state is state:
                self.world.answer()
        else:
            self.engine.machine.step_failed(Failure(RuntimeError("a step failed")))

    def verdict(self, allowed: bool) -> None:
        """The policy answers; with no decision under way, the machine hears one all the same."""
        self.policy.verdict = Verdict(allowed, "the fake fence " + ("exited 0" if allowed else "exited 1"))
        if self.world.pending and self.world.pending[0][0] == "policy.decide":
            self.world.answer()
        elif allowed:
            self.engine.machine.takeover_allowed(self.policy.verdict.why)
        else:
            self.engine.machine.takeover_refused(self.policy.verdict.why)

    def operator_asks(self) -> None:
        """An operator's request is there; the engine finds it at its next look."""
        self.requests.waiting.append("an operator")
        if self.engine.state is SecondaryState.AWAITING_OPERATOR:
            self.clock.advance(secondary.REQUEST_POLL_INTERVAL)
        else:
            self.engine.machine.operator_failover("an operator")

    def newer_peer_links(self) -> None:
        """A secondary of a newer generation than this primary's links (on a link of its own)."""
        newer = attrs.evolve(self.peer, generation=self.generation.value + 1)
        self.engine.linkReady(FakeLink(), newer)  # type: ignore[arg-type]

    def request(self) -> Deferred[int]:
        assert isinstance(self.engine, PrimaryEngine)
        d = self.engine.request_checkpoint()
        d.addBoth(self.answers.append)
        return d


def _link(h: Harness) -> None:
    h.engine.linkReady(h.link, h.peer)  # type: ignore[arg-type]


def _state(id: CheckpointId) -> Callable[[Harness], None]:
    return lambda h: h.receive(CheckpointState(id))


#: How the world makes each input, by its name.
APPLY: dict[str, Callable[[Harness], None]] = {
    "link_ready": _link,
    "first_copy_sent": Harness.step_ends,
    "resumed": Harness.step_ends,
    "suspended": Harness.step_ends,
    "checkpoint_sent": Harness.step_ends,
    "dropped": Harness.step_ends,
    "stop_done": Harness.step_ends,
    "applied": Harness.step_ends,
    "taken_over": Harness.step_ends,
    "torn_down": Harness.step_ends,
    "svm_ready": _state(CheckpointId.SVM_READY),
    "svm_resumed": _state(CheckpointId.SVM_RESUMED),
    "svm_suspended": _state(CheckpointId.SVM_SUSPENDED),
    "new_checkpoint": _state(CheckpointId.NEW),
    "dirty_pfn_list": lambda h: h.receive(CheckpointDirtyPfnList()),
    "stream_record": lambda h: h.receive(Checkpoint()),
    "checkpoint_end": lambda h: h.receive(CheckpointEnd()),
    "checkpoint_due": lambda h: h.clock.advance(INTERVAL),
    "checkpoint_requested": lambda h: h.request() and None,
    "secondary_lost": lambda h: h.lose(Failure(ConnectionDone())),
    "primary_lost": lambda h: h.lose(Failure(ConnectionDone())),
    "replication_ended": lambda h: h.lose(Failure(PeerEndedReplication(ReplicationEndReason.SHUTDOWN, ""))),
    "step_failed": Harness.step_fails,
    "qemu_lost": lambda h: h.engine.qemu_lost("QEMU exited"),
    "stop": lambda h: h.engine.shutdown() and None,
    "takeover_allowed": lambda h: h.verdict(True),
    "takeover_refused": lambda h: h.verdict(False),
    "operator_failover": Harness.operator_asks,
    "superseded": Harness.newer_peer_links,
    "fenced": lambda h: h.engine.fence("the etcd lease may lapse"),  # type: ignore[attr-defined]
    "halted": Harness.step_ends,
    "drop_requested": lambda h: h.engine.drop(),
}

_P = PrimaryState
_FIRST_ROUND = ["link_ready", "first_copy_sent", "svm_ready", "resumed", "svm_resumed"]
_ROUND = [*_FIRST_ROUND, "checkpoint_due", "suspended", "svm_suspended", "dirty_pfn_list"]
#: The inputs that bring a new primary to each state.
PRIMARY_PATHS: dict[PrimaryState, list[str]] = {
    _P.WAITING_FOR_SECONDARY: [],
    _P.SENDING_FIRST_COPY: _FIRST_ROUND[:1],
    _P.AWAITING_SVM_READY: _FIRST_ROUND[:2],
    _P.RESUMING: _FIRST_ROUND[:3],
    _P.AWAITING_SVM_RESUMED: _FIRST_ROUND[:4],
    _P.PROTECTED: _FIRST_ROUND,
    _P.SUSPENDING: _ROUND[:6],
    _P.AWAITING_SVM_SUSPENDED: _ROUND[:7],
    _P.AWAITING_DIRTY_PFNS: _ROUND[:8],
    _P.SENDING_CHECKPOINT: _ROUND,
    _P.DROPPING_SECONDARY: [*_FIRST_ROUND, "secondary_lost"],
    _P.UNPROTECTED: [*_FIRST_ROUND, "secondary_lost", "dropped"],
    _P.GUEST_LOST: ["qemu_lost"],
    _P.SUPERSEDED: ["superseded"],
    _P.FENCED: ["fenced"],
    _P.STOPPING: [*_FIRST_ROUND, "stop"],
    _P.STOPPED: ["stop", "stop_done"],
}

#: The inputs of a round after its suspend.
_REST_OF_ROUND = ["suspended", "svm_suspended", "dirty_pfn_list", "checkpoint_sent", "svm_ready", "resumed",
                  "svm_resumed"]

_S = SecondaryState
_STANDBY = ["link_ready", "checkpoint_end", "applied", "resumed", "new_checkpoint", "suspended"]
#: The inputs that bring a new secondary to each state.
SECONDARY_PATHS: dict[SecondaryState, list[str]] = {
    _S.WAITING_FOR_PRIMARY: [],
    _S.RECEIVING_FIRST_CHECKPOINT: _STANDBY[:1],
    _S.APPLYING: _STANDBY[:2],
    _S.RESUMING: _STANDBY[:3],
    _S.RUNNING: _STANDBY[:4],
    _S.SUSPENDING: _STANDBY[:5],
    _S.RECEIVING_CHECKPOINT: _STANDBY,
    _S.DECIDING_TAKEOVER: [*_STANDBY[:4], "primary_lost"],
    _S.AWAITING_OPERATOR: [*_STANDBY[:4], "primary_lost", "takeover_refused"],
    _S.FAILING_OVER: [*_STANDBY[:4], "primary_lost", "takeover_allowed"],
    _S.PRIMARY_UNPROTECTED: [*_STANDBY[:4], "primary_lost", "takeover_allowed", "taken_over"],
    _S.FAILOVER_FAILED: [*_STANDBY[:4], "primary_lost", "takeover_allowed", "step_failed"],
    _S.ENDING: [*_STANDBY[:4], "stop"],
    _S.ENDED: [*_STANDBY[:4], "stop", "torn_down"],
}


# -- what each transition must have done (besides entering its new state) --------------------------

Check = Callable[["TransitionTests", Harness], None]


def _nothing_more(case: TransitionTests, h: Harness) -> None:
    """Only the state's name may change: no call, no record, no end of the link."""
    case.assertEqual((h.world.calls, h.link.sent, h.link.ended), case.before)


def _sent(*records: Record) -> Check:
    def check(case: TransitionTests, h: Harness) -> None:
        case.assertEqual(h.link.sent[-len(records):], list(records))
    return check


def _called(name: str) -> Check:
    def check(case: TransitionTests, h: Harness) -> None:
        case.assertEqual(h.world.calls[-1], name)
    return check


def _ended(how: str | ReplicationEndReason | None, error: str) -> Check:
    """The link was ended ``how`` (None: it was already gone), the error says why, nothing is protected."""
    def check(case: TransitionTests, h: Harness) -> None:
        case.assertEqual(h.link.ended, how)
        case.assertIn(error, h.engine.error or "")
        case.assertFalse(h.engine.protected)
    return check


def _published(**fields: object) -> Check:
    def check(case: TransitionTests, h: Harness) -> None:
        last = h.status.written[-1]
        case.assertEqual({key: last[key] for key in fields}, fields)
    return check


def _request_waits(case: TransitionTests, h: Harness) -> None:
    case.assertEqual(h.answers, [])
    case.assertNotIn(CheckpointState(CheckpointId.NEW), h.link.sent[len(case.before[1]):])


def _request_refused(case: TransitionTests, h: Harness) -> None:
    [failure] = h.answers
    case.assertIsInstance(failure, Failure)
    failure.trap(CheckpointRefused)  # type: ignore[union-attr]


def _checkpoint_begins(case: TransitionTests, h: Harness) -> None:
    case.assertEqual((h.link.sent[-1], h.world.calls[-1]), (CheckpointState(CheckpointId.NEW), "suspend"))


def _first_checkpoint_done(case: TransitionTests, h: Harness) -> None:
    case.assertEqual((h.engine.checkpoints, h.engine.protected), (1, True))
    _published(protected=True, checkpoints=1)(case, h)


def _runs(name: str) -> Check:
    """``name`` is called, once the step under way (if any) has ended."""
    def check(case: TransitionTests, h: Harness) -> None:
        h.world.finish()
        case.assertIn(name, h.world.calls[len(case.before[0]):])
    return check


def _all(*checks: Check) -> Check:
    def check(case: TransitionTests, h: Harness) -> None:
        for each in checks:
            each(case, h)
    return check


def _halts_for_good(case: TransitionTests, h: Harness) -> None:
    """Superseded: the guest stopped (once any step before is done), never resumed, the reason said."""
    case.assertIn("SUPERSEDED: secondary is at generation 1, this node at 0: the domain was taken over "
                  "from this node", h.engine.error or "")
    _published(state="superseded", protected=False, generation=0)(case, h)
    case.assertEqual(Generation(h.generation.path.parent).superseded, "generation 1, taken over by secondary")
    h.world.finish()
    case.assertEqual(h.world.calls[-2:], ["halt", "let go"])


def _fences_for_good(link_ended: str | None) -> Check:
    """Fenced: the link closed with no end record (the secondary asks its policy; ``link_ended`` None: there
    was none), the guest stopped (once any step before is done), never resumed, the reason said."""
    def check(case: TransitionTests, h: Harness) -> None:
        case.assertIn("FENCED: the etcd lease may lapse; the guest here is stopped for good",
                      h.engine.error or "")
        case.assertEqual((h.link.ended, h.engine.link), (link_ended, None))
        _published(state="fenced", protected=False)(case, h)
        h.world.finish()
        case.assertEqual(h.world.calls[-2:], ["halt", "let go"])
        case.assertNotIn("resume", h.world.calls[h.world.calls.index("halt"):])
    return check


def _holds_on(case: TransitionTests, h: Harness) -> None:
    """The guest may still run: the domain is not let go."""
    case.assertNotIn("let go", h.world.calls)


def _primary_checks() -> dict[tuple[str, str], Check]:
    replicating = [_P.SENDING_FIRST_COPY, _P.AWAITING_SVM_READY, _P.RESUMING, _P.AWAITING_SVM_RESUMED,
                   _P.PROTECTED, _P.SUSPENDING, _P.AWAITING_SVM_SUSPENDED, _P.AWAITING_DIRTY_PFNS,
                   _P.SENDING_CHECKPOINT]
    waiting_turn = [_P.WAITING_FOR_SECONDARY, *(s for s in replicating if s is not _P.PROTECTED)]
    past = [_P.DROPPING_SECONDARY, _P.UNPROTECTED, _P.GUEST_LOST, _P.SUPERSEDED, _P.FENCED, _P.STOPPING,
            _P.STOPPED]
    checks: dict[tuple[str, str], Check] = {
        (_P.WAITING_FOR_SECONDARY, "link_ready"): _all(_called("copy_live"), _sent(LibxcContext())),
        (_P.SENDING_FIRST_COPY, "first_copy_sent"): _sent(Checkpoint(), CheckpointEnd()),
        (_P.AWAITING_SVM_READY, "svm_ready"): _called("devices.setup"),
        (_P.RESUMING, "resumed"): lambda case, h: case.assertEqual(
            (h.world.calls[-2:], len(h.engine.pauses.recent)), (["resume", "devices.commit"], 1)),
        (_P.AWAITING_SVM_RESUMED, "svm_resumed"): _first_checkpoint_done,
        (_P.PROTECTED, "checkpoint_due"): _checkpoint_begins,
        (_P.PROTECTED, "checkpoint_requested"): _all(_checkpoint_begins, lambda case, h: case.assertEqual(
            h.answers, [])),
        (_P.SUSPENDING, "suspended"): _called("devices.postsuspend"),
        (_P.AWAITING_SVM_SUSPENDED, "svm_suspended"): _nothing_more,
        (_P.AWAITING_DIRTY_PFNS, "dirty_pfn_list"): _called("checkpoint_records"),
        (_P.SENDING_CHECKPOINT, "checkpoint_sent"): _sent(Checkpoint(), CheckpointEnd()),
        (_P.DROPPING_SECONDARY, "dropped"): _published(state="unprotected", protected=False),
        (_P.DROPPING_SECONDARY, "step_failed"): _all(
            _ended(None, "detaching the secondary's replication failed"), _published(state="unprotected")),
        (_P.FENCED, "superseded"): _nothing_more,
        (_P.GUEST_LOST, "secondary_lost"): _nothing_more,
        (_P.GUEST_LOST, "qemu_lost"): _nothing_more,
        (_P.GUEST_LOST, "stop"): _published(state="stopped"),
        (_P.STOPPING, "secondary_lost"): _nothing_more,
        (_P.STOPPING, "qemu_lost"): _nothing_more,
        (_P.STOPPING, "stop_done"): _published(state="stopped"),
        (_P.STOPPING, "step_failed"): _all(_ended(ReplicationEndReason.SHUTDOWN, "detaching replication at "
                                                  "stop failed"), _published(state="stopped")),
        (_P.WAITING_FOR_SECONDARY, "qemu_lost"): _ended(None, "the guest's QEMU is gone"),
        (_P.WAITING_FOR_SECONDARY, "stop"): _all(_ended(None, "colod stopped"), _called("devices.teardown")),
    }
    for state in replicating:
        checks[state, "secondary_lost"] = _ended(None, "replication ended: the peer closed the link")
        checks[state, "step_failed"] = _ended(ReplicationEndReason.LOCAL_FAILURE, "replication failed here")
        checks[state, "qemu_lost"] = _ended("closed", "the guest's QEMU is gone")
        checks[state, "stop"] = _ended(ReplicationEndReason.SHUTDOWN, "colod stopped")
        checks[state, "drop_requested"] = _all(_ended(ReplicationEndReason.SHUTDOWN, "dropped on request"),
                                               _runs("devices.drop_secondary"))
    for state in (_P.DROPPING_SECONDARY, _P.UNPROTECTED):
        checks[state, "secondary_lost"] = _nothing_more
        checks[state, "qemu_lost"] = _ended(None, "the guest's QEMU is gone")
        checks[state, "stop"] = _ended(None, "colod stopped")
    for state in (_P.WAITING_FOR_SECONDARY, _P.DROPPING_SECONDARY, _P.UNPROTECTED):
        checks[state, "superseded"] = _halts_for_good
    for state in replicating:
        checks[state, "fenced"] = _fences_for_good("closed")
    for state in (_P.WAITING_FOR_SECONDARY, _P.DROPPING_SECONDARY, _P.UNPROTECTED):
        checks[state, "fenced"] = _fences_for_good(None)
    for state in (_P.SUPERSEDED, _P.FENCED):
        for name in ("secondary_lost", "qemu_lost", "stop", "fenced"):
            checks[state, name] = _nothing_more
        checks[state, "halted"] = _called("let go")
        checks[state, "step_failed"] = _all(_ended(None, "stopping the guest for good failed"), _holds_on)
    for state in (_P.GUEST_LOST, _P.STOPPING, _P.STOPPED):
        checks[state, "fenced"] = _nothing_more
    for state in waiting_turn:
        checks[state, "checkpoint_requested"] = _request_waits
    for state in past:
        checks[state, "checkpoint_requested"] = _request_refused
    return checks


def _asks_policy(case: TransitionTests, h: Harness) -> None:
    """The link let go, nothing run yet: the policy's decision is all that is under way."""
    case.assertEqual((h.link.ended, h.engine.protected, h.world.calls[-1]), (None, False, "policy.decide"))
    case.assertIn("primary lost: the peer closed the link", h.engine.error or "")
    _published(state="deciding_takeover", protected=False)(case, h)


def _takes_over(case: TransitionTests, h: Harness) -> None:
    h.world.finish()
    case.assertEqual(h.world.calls[-2:], ["devices.failover", "take_over"])


def _awaits_operator(case: TransitionTests, h: Harness) -> None:
    """No takeover, the copy kept (no teardown), the reason in the status."""
    case.assertNotIn("devices.teardown", h.world.calls)
    case.assertNotIn("take_over", h.world.calls)
    case.assertIn("not taking over: the fake fence exited 1", h.engine.error or "")
    _published(state="awaiting_operator", protected=False)(case, h)


def _secondary_checks() -> dict[tuple[str, str], Check]:
    standing_by = [_S.APPLYING, _S.RESUMING, _S.RUNNING, _S.SUSPENDING, _S.RECEIVING_CHECKPOINT]
    uncommitted = [_S.WAITING_FOR_PRIMARY, _S.RECEIVING_FIRST_CHECKPOINT]
    over = [_S.FAILING_OVER, _S.PRIMARY_UNPROTECTED, _S.FAILOVER_FAILED, _S.ENDING, _S.ENDED]
    undecided = [_S.DECIDING_TAKEOVER, _S.AWAITING_OPERATOR]
    forgotten = _all(_nothing_more, _published(state="waiting_for_primary", protected=False))
    checks: dict[tuple[str, str], Check] = {
        (_S.WAITING_FOR_PRIMARY, "link_ready"): _nothing_more,
        (_S.RECEIVING_FIRST_CHECKPOINT, "stream_record"): _nothing_more,
        (_S.RECEIVING_CHECKPOINT, "stream_record"): _nothing_more,
        (_S.RECEIVING_FIRST_CHECKPOINT, "checkpoint_end"): _called("apply_checkpoint"),
        (_S.RECEIVING_CHECKPOINT, "checkpoint_end"): _called("apply_checkpoint"),
        (_S.RECEIVING_FIRST_CHECKPOINT, "primary_lost"): forgotten,
        (_S.RECEIVING_FIRST_CHECKPOINT, "replication_ended"): forgotten,
        (_S.APPLYING, "applied"): _all(_sent(CheckpointState(CheckpointId.SVM_READY)), _called("resume")),
        (_S.RESUMING, "resumed"): _all(_sent(CheckpointState(CheckpointId.SVM_RESUMED)),
                                       _first_checkpoint_done),
        (_S.RUNNING, "new_checkpoint"): _called("suspend"),
        (_S.SUSPENDING, "suspended"): _sent(CheckpointState(CheckpointId.SVM_SUSPENDED),
                                            CheckpointDirtyPfnList()),
        (_S.DECIDING_TAKEOVER, "takeover_allowed"): _takes_over,
        (_S.DECIDING_TAKEOVER, "takeover_refused"): _awaits_operator,
        (_S.AWAITING_OPERATOR, "operator_failover"): _takes_over,
        (_S.AWAITING_OPERATOR, "takeover_allowed"): _takes_over,
        (_S.FAILING_OVER, "taken_over"): _published(role="primary", state="primary_unprotected",
                                                    failed_over=True),
        (_S.FAILING_OVER, "step_failed"): _ended(None, "taking over failed"),
        (_S.ENDING, "torn_down"): _published(state="ended"),
        (_S.ENDING, "step_failed"): _all(_ended(ReplicationEndReason.SHUTDOWN, "tearing replication down "
                                                "failed"), _published(state="ended")),
    }
    for state in standing_by:
        checks[state, "primary_lost"] = _asks_policy
        checks[state, "replication_ended"] = _ended(None, "replication ended: the peer ended replication")
        checks[state, "step_failed"] = _ended(ReplicationEndReason.LOCAL_FAILURE, "replication failed here")
        checks[state, "qemu_lost"] = _ended(ReplicationEndReason.LOCAL_FAILURE, "this node's QEMU is gone")
        checks[state, "stop"] = _ended(ReplicationEndReason.SHUTDOWN, "colod stopped")
        checks[state, "drop_requested"] = _all(_ended(ReplicationEndReason.SHUTDOWN, "dropped on request"),
                                               _runs("devices.teardown"))
    for state in uncommitted:
        link_end = None if state is _S.WAITING_FOR_PRIMARY else ReplicationEndReason.LOCAL_FAILURE
        checks[state, "qemu_lost"] = _ended(link_end, "this node's QEMU is gone")
        link_end = None if state is _S.WAITING_FOR_PRIMARY else ReplicationEndReason.SHUTDOWN
        checks[state, "stop"] = _ended(link_end, "colod stopped")
    for state in over:
        for input in ("primary_lost", "replication_ended", "qemu_lost", "stop", "takeover_allowed",
                      "takeover_refused"):
            checks[state, input] = _nothing_more
    for state in undecided:
        checks[state, "stop"] = _all(_called("devices.teardown"), _ended(None, "primary lost"))
        checks[state, "qemu_lost"] = _ended(None, "this node's QEMU is gone")
        checks[state, "primary_lost"] = _nothing_more
        checks[state, "replication_ended"] = _nothing_more
    return checks


#: By engine: its transitions, the paths to its states, and each transition's check.
ENGINES: dict[Role, tuple[frozenset[Transition], dict[Any, list[str]], dict[tuple[str, str], Check]]] = {
    Role.PRIMARY: (primary.TRANSITIONS, PRIMARY_PATHS, _primary_checks()),
    Role.SECONDARY: (secondary.TRANSITIONS, SECONDARY_PATHS, _secondary_checks()),
}
#: The states from which the secondary has run (or runs) its guest here.
_TOOK_OVER = {_S.FAILING_OVER, _S.PRIMARY_UNPROTECTED, _S.FAILOVER_FAILED}


class TransitionTests(SynchronousTestCase):
    """One test per transition of each machine (added below), and the checks that they are all there."""

    #: What the world looked like before the input: calls, records sent, how the link ended.
    before: tuple[list[str], list[Record], object]

    def run_transition(self, role: Role, transition: Transition) -> None:
        _, paths, checks = ENGINES[role]
        h = Harness(role)
        for input in paths[transition.old]:  # type: ignore[index]
            APPLY[input](h)
        self.assertEqual(h.engine.state, transition.old, "the path leads elsewhere")
        self.before = (list(h.world.calls), list(h.link.sent), h.link.ended)
        APPLY[transition.input](h)
        self.assertEqual(h.engine.state, transition.new)
        checks[transition.old, transition.input](self, h)
        self.assert_takeover_only_after_primary_lost(h, transition)
        self.assert_stops_clean(h)

    def assert_takeover_only_after_primary_lost(self, h: Harness, transition: Transition) -> None:
        """The secondary takes over (its disks fail over, then its guest runs) only on entering
        FAILING_OVER (on the policy's yes, or an operator's request), and once: a decision still under
        way here is a no."""
        h.policy.verdict = Verdict(False, "the fake fence exited 1")
        h.world.finish()
        self.assertEqual(h.world.calls.count("devices.failover"), int(role_of(h) is Role.SECONDARY and (
            transition.old in _TOOK_OVER or transition.new is _S.FAILING_OVER)))

    def harness(self, role: Role, policy: type[FakePolicy] = FakePolicy) -> Harness:
        """A harness that is stopped clean after the test: a step left waiting would otherwise be
        closed by the garbage collector, which cannot run the awaits in its finally."""
        h = Harness(role, policy)
        self.addCleanup(self.assert_stops_clean, h)
        return h

    def assert_stops_clean(self, h: Harness) -> None:
        """Stopped and its steps done, the engine leaves no timer behind and no request unanswered."""
        h.engine.shutdown()
        h.world.finish()
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertEqual(h.world.pending, [])

    def test_every_transition_is_checked(self) -> None:
        """Each transition of each machine has a check, and each check a transition."""
        for role, (transitions, paths, checks) in ENGINES.items():
            self.assertEqual(set(checks), {(t.old, t.input) for t in transitions}, role)
            self.assertEqual(set(paths), {t.old for t in transitions} | {t.new for t in transitions}, role)
            self.assertLessEqual({t.input for t in transitions}, set(APPLY), role)

    def test_records_wait_for_the_step(self) -> None:
        """A record that arrives while a step runs is fed to the machine once the step is done."""
        h = self.harness(Role.PRIMARY)
        for input in PRIMARY_PATHS[_P.SUSPENDING]:
            APPLY[input](h)
        h.receive(CheckpointState(CheckpointId.SVM_SUSPENDED))
        self.assertIs(h.engine.state, _P.SUSPENDING)
        h.world.finish()
        self.assertIs(h.engine.state, _P.AWAITING_DIRTY_PFNS)

    def test_record_not_allowed_names_it_and_the_state(self) -> None:
        """A record the state has no transition for is a protocol error, told to the peer."""
        h = self.harness(Role.PRIMARY)
        for input in PRIMARY_PATHS[_P.PROTECTED]:
            APPLY[input](h)
        h.receive(CheckpointState(CheckpointId.SVM_SUSPENDED))
        self.assertEqual((h.engine.state, h.link.ended),
                         (_P.DROPPING_SECONDARY, ReplicationEndReason.PROTOCOL_ERROR))
        self.assertEqual(h.engine.error, "replication ended: protocol error: CHECKPOINT_STATE(SVM_SUSPENDED) "
                                         "is not allowed while protected")

    def test_link_refused_by_name_of_state(self) -> None:
        """A link the machine cannot take is refused, naming the state."""
        h = self.harness(Role.PRIMARY)
        h.engine.qemu_lost("QEMU exited")
        _link(h)
        self.assertEqual((h.link.ended, h.engine.link), ("refused: domain guest is guest lost", None))

    def test_step_ending_at_once(self) -> None:
        """A step that ends inside the transition that started it is fed on the clock's next turn."""
        h = self.harness(Role.SECONDARY)
        h.engine.devices.teardown = lambda: succeed(None)  # type: ignore[method-assign]
        for input in SECONDARY_PATHS[_S.RUNNING]:
            APPLY[input](h)
        h.engine.shutdown()
        self.assertIs(h.engine.state, _S.ENDING)
        h.clock.advance(0)
        self.assertIs(h.engine.state, _S.ENDED)

    def test_requested_checkpoint_answered(self) -> None:
        """A checkpoint requested mid-round is the next one, started at once, and answered with its number."""
        h = self.harness(Role.PRIMARY)
        for input in PRIMARY_PATHS[_P.SUSPENDING]:
            APPLY[input](h)
        h.request()
        for input in _REST_OF_ROUND:
            APPLY[input](h)
        self.assertEqual((h.engine.state, h.answers), (_P.PROTECTED, []))
        h.clock.advance(0)
        for input in _REST_OF_ROUND:
            APPLY[input](h)
        self.assertEqual(h.answers, [3])
        self.assert_stops_clean(h)

    def test_checkpoint_overdue_drops_the_secondary(self) -> None:
        """A checkpoint not complete after the checkpoint timeout drops the secondary; the guest resumes."""
        h = self.harness(Role.PRIMARY)
        for input in PRIMARY_PATHS[_P.AWAITING_SVM_SUSPENDED]:
            APPLY[input](h)
        h.clock.advance(TIMEOUT)
        self.assertIs(h.engine.state, _P.DROPPING_SECONDARY)
        self.assertIn("checkpoint 2 not complete after 60 s", h.engine.error or "")
        h.world.finish()
        self.assertEqual((h.engine.state, h.world.calls[-3:]),
                         (_P.UNPROTECTED, ["devices.drop_secondary", "detach", "resume"]))

    def test_replication_ends_before_the_suspended_guest_resumes(self) -> None:
        """A secondary dropped while the guest is suspended: the guest's replication is detached first
        (the Xen engine's save helper ends its dirty tracking with the guest still suspended, as
        libxl's order is), then the guest resumes, also when detaching fails."""
        for detach_fails in (False, True):
            with self.subTest(detach_fails=detach_fails):
                h = self.harness(Role.PRIMARY)
                for input in PRIMARY_PATHS[_P.AWAITING_SVM_SUSPENDED]:
                    APPLY[input](h)
                h.clock.advance(TIMEOUT)
                while h.world.pending and h.world.pending[0][0] != "detach":
                    h.world.answer()
                self.assertNotIn("resume", h.world.calls[-2:], "resumed before the replication was detached")
                (h.world.fail if detach_fails else h.world.answer)()
                h.world.finish()
                self.assertEqual((h.engine.state, h.world.calls[-3:]),
                                 (_P.UNPROTECTED, ["devices.drop_secondary", "detach", "resume"]))

    def test_paused_checkpoints_wait_for_a_request_or_resume(self) -> None:
        """Paused, the interval starts no checkpoint; a request still does, and resuming starts one now."""
        h = self.harness(Role.PRIMARY)
        for input in PRIMARY_PATHS[_P.PROTECTED]:
            APPLY[input](h)
        assert isinstance(h.engine, PrimaryEngine)
        h.engine.pause_checkpoints()
        self.assertTrue(h.status.written[-1]["checkpoints_paused"])
        h.clock.advance(INTERVAL * 3)
        self.assertIs(h.engine.state, _P.PROTECTED)
        h.request()
        for input in _REST_OF_ROUND:
            APPLY[input](h)
        h.clock.advance(INTERVAL * 3)
        self.assertEqual((h.engine.state, h.answers, h.engine.checkpoints), (_P.PROTECTED, [2], 2))
        h.engine.resume_checkpoints()
        self.assertIs(h.engine.state, _P.SUSPENDING)
        for input in _REST_OF_ROUND:
            APPLY[input](h)
        self.assertEqual(dict(h.engine.triggers), {"first": 1, "request": 2})
        h.clock.advance(INTERVAL)
        self.assertIs(h.engine.state, _P.SUSPENDING)
        self.assert_stops_clean(h)

    def test_an_operators_request_is_taken_at_the_next_look(self) -> None:
        """colodctl's failover is a request like colod failover's (its policy's requests may claim
        first): taken up at the engine's next look, not at once."""
        h = self.harness(Role.SECONDARY)
        for input in SECONDARY_PATHS[_S.AWAITING_OPERATOR]:
            APPLY[input](h)
        h.engine.request_failover("colodctl")
        self.assertEqual((h.engine.state, h.requests.waiting), (_S.AWAITING_OPERATOR, ["colodctl"]))
        h.clock.advance(secondary.REQUEST_POLL_INTERVAL)
        self.assertIs(h.engine.state, _S.FAILING_OVER)
        self.assert_stops_clean(h)

    def test_a_policy_whose_no_may_change_is_asked_again(self) -> None:
        """Awaiting the operator under a policy whose no may change (etcd), the secondary asks it again every
        recheck_interval, one question at a time: a no keeps the copy and waits on; a yes
        takes over.  A policy whose no stands (fence, manual) is not asked again."""
        h = self.harness(Role.SECONDARY, FakeRecheckingPolicy)
        for input in SECONDARY_PATHS[_S.AWAITING_OPERATOR]:
            APPLY[input](h)
        h.clock.advance(FakeRecheckingPolicy.recheck_interval * 3)
        self.assertEqual(h.world.calls.count("policy.recheck"), 1,
                         "a second question before the first's answer")
        h.policy.verdict = Verdict(False, "etcd did not answer the claim")
        h.world.answer()
        self.assertIs(h.engine.state, _S.AWAITING_OPERATOR)
        h.clock.advance(FakeRecheckingPolicy.recheck_interval)
        h.policy.verdict = Verdict(True, "this node owns guest in etcd now, epoch 1")
        h.world.answer()
        self.assertIs(h.engine.state, _S.FAILING_OVER)
        h.world.finish()
        self.assertEqual(h.world.calls[-2:], ["devices.failover", "take_over"])
        self.assert_stops_clean(h)

        plain = self.harness(Role.SECONDARY)
        for input in SECONDARY_PATHS[_S.AWAITING_OPERATOR]:
            APPLY[input](plain)
        plain.clock.advance(FakeRecheckingPolicy.recheck_interval * 3)
        self.assertEqual((plain.engine.state, plain.world.pending), (_S.AWAITING_OPERATOR, []))

    def test_a_late_yes_after_an_operators_takeover_changes_nothing(self) -> None:
        """A recheck's yes that comes after the operator's request took the secondary over is not a second
        takeover."""
        h = self.harness(Role.SECONDARY, FakeRecheckingPolicy)
        for input in SECONDARY_PATHS[_S.AWAITING_OPERATOR]:
            APPLY[input](h)
        h.clock.advance(FakeRecheckingPolicy.recheck_interval)
        h.requests.waiting.append("an operator")
        h.clock.advance(secondary.REQUEST_POLL_INTERVAL)
        self.assertIs(h.engine.state, _S.FAILING_OVER)
        h.world.finish()
        self.assertEqual((h.engine.state, h.world.calls.count("devices.failover")),
                         (_S.PRIMARY_UNPROTECTED, 1))
        self.assert_stops_clean(h)

    def test_a_secondarys_first_checkpoint_removes_the_superseded_mark(self) -> None:
        """A node once taken over from holds the newest data again with its first checkpoint as a secondary:
        its mark goes then, not at the link."""
        h = self.harness(Role.SECONDARY)
        h.generation.supersede("primary", 1)
        for input in SECONDARY_PATHS[_S.RESUMING]:
            APPLY[input](h)
        self.assertIsNotNone(Generation(h.generation.path.parent).superseded)
        APPLY["resumed"](h)
        self.assertIs(h.engine.state, _S.RUNNING)
        self.assertIsNone(Generation(h.generation.path.parent).superseded)

    def test_what_the_secondary_refuses(self) -> None:
        """Checkpoints are the primary's to start, pause and resume; a failover on request only while the
        secondary waits for the operator's decision."""
        h = self.harness(Role.SECONDARY)
        for request in (h.engine.pause_checkpoints, h.engine.resume_checkpoints):
            self.assertRaises(RequestRefused, request)
        self.assertRaisesRegex(RequestRefused, "domain guest is not waiting for a failover decision \\(it is "
                               "waiting for primary\\)", h.engine.request_failover, "a test")
        self.failureResultOf(h.engine.request_checkpoint(), RequestRefused)
        self.assertRaisesRegex(RequestRefused, "domain guest is waiting for primary: no replication to drop",
                               h.engine.drop)


def role_of(h: Harness) -> Role:
    return Role.PRIMARY if isinstance(h.engine, PrimaryEngine) else Role.SECONDARY


def _add_transition_tests() -> None:
    for role, (transitions, _, _) in ENGINES.items():
        for transition in transitions:
            def test(self: TransitionTests, role: Role = role, transition: Transition = transition) -> None:
                self.run_transition(role, transition)
            name = f"test_{role.value}_{transition.old}_{transition.input}"
            test.__name__ = name
            test.__doc__ = f"{role.value}: {transition.old} --{transition.input}--> {transition.new}"
            setattr(TransitionTests, name, test)


_add_transition_tests()
