# -*- test-case-name: tests.engine.test_transitions, tests.engine.test_engines -*-
"""The secondary's checkpoint engine (libxl_colo_restore.c's part of xen-colo-protocol.md §3.4).

One round: read CHECKPOINT_STATE(NEW); suspend the guest, run the devices'
postsuspend, write SVM_SUSPENDED and the guest's dirty pages; buffer the
checkpoint's records up to CHECKPOINT_END; apply them all, disks included
(the devices' preresume empties the overlays), and only then write SVM_READY,
so that the primary's guest never runs ahead of what this side holds; resume
and write SVM_RESUMED.

CHECKPOINT_END is the commit point.  Before it, a checkpoint cut short is
dropped whole; after it, the checkpoint is applied whole even if the primary
vanishes meanwhile.  How the link ended decides the rest
(colod.engine.link_end.ACTIONS): when the primary ended replication on
purpose, or broke the protocol, it is alive and this side stops replicating
without taking over.  When the link broke or the primary fell silent after a
checkpoint was committed, the primary may be dead or only cut off: the
failover policy (colod.failover.policy) is asked, and only its "yes" (or an
operator's request, when it says no) makes this side take over: disk
failover with commit, the guest loaded from the last checkpoint and run; it
is then the primary, unprotected.  While it waits for an operator it keeps
its copy and says so in its status, and asks again a policy whose "no" may
change (colod.failover.policy.Rechecking).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from colod.config import DomainConfig
from colod.devices import DeviceGroup
from colod.engine.checkpoint_buffer import CheckpointBuffer
from colod.engine.core import EngineCore, EngineInputs, RequestRefused, describe
from colod.engine.generation import Generation, GenerationError
from colod.engine.link_end import Action, LinkEnd, ProtocolViolation, secondary_action
from colod.engine.machine import MachineBuilder, nothing
from colod.engine.status import StatusFile
from colod.failover.policy import OperatorRequest, Rechecking, TakeoverPolicy, Verdict
from colod.guest.interfaces import ISecondaryGuest
from colod.protocol import (
    CheckpointEnd,
    CheckpointId,
    CheckpointState,
    End,
    LibxcEnd,
    Record,
    ReplicationEndReason,
)
from colod.protocol.handshake import Hello
from colod.protocol.peer import PeerLink
from colod.qmp import QMP
from colod.role import Role

#: Seconds between two looks for an operator's request (colod.failover.policy.OperatorRequest).
REQUEST_POLL_INTERVAL = 0.5


class FailoverNotAwaited(RequestRefused):
    """An operator asked for a takeover that this engine is not waiting to decide."""


class SecondaryState(StrEnum):
    """The secondary's states, by the names status.json and the log give them."""

    WAITING_FOR_PRIMARY = "waiting_for_primary"
    RECEIVING_FIRST_CHECKPOINT = "receiving_first_checkpoint"
    APPLYING = "applying"
    RESUMING = "resuming"
    RUNNING = "running"
    SUSPENDING = "suspending"
    RECEIVING_CHECKPOINT = "receiving_checkpoint"
    DECIDING_TAKEOVER = "deciding_takeover"
    AWAITING_OPERATOR = "awaiting_operator"
    FAILING_OVER = "failing_over"
    PRIMARY_UNPROTECTED = "primary_unprotected"
    FAILOVER_FAILED = "failover_failed"
    ENDING = "ending"
    ENDED = "ended"


class SecondaryInputs(EngineInputs, Protocol):
    """What moves the secondary's machine: the primary's records, its steps' ends, and the primary's loss."""

    def stream_record(self, record: Record) -> None:
        """A record of the checkpoint being received."""

    def checkpoint_end(self) -> None:
        """CHECKPOINT_END arrived: the checkpoint is complete."""

    def applied(self) -> None:
        """The checkpoint is applied."""

    def resumed(self) -> None:
        """SVM_READY and SVM_RESUMED are sent."""

    def new_checkpoint(self) -> None:
        """CHECKPOINT_STATE(NEW) arrived."""

    def suspended(self) -> None:
        """SVM_SUSPENDED and the dirty pages are sent."""

    def primary_lost(self, reason: Failure) -> None:
        """The link closed or broke, or the primary went silent."""

    def takeover_allowed(self, why: str) -> None:
        """The failover policy said yes."""

    def takeover_refused(self, why: str) -> None:
        """The failover policy said no: the operator decides."""

    def operator_failover(self, by: str) -> None:
        """An operator asked for the takeover."""

    def replication_ended(self, reason: Failure) -> None:
        """The primary ended replication, or broke the protocol."""

    def taken_over(self) -> None:
        """The guest runs here."""

    def torn_down(self) -> None:
        """Replication is torn down."""


class SecondaryEngine(EngineCore[SecondaryInputs, SecondaryState]):
    """Keeps the standby copy of one domain, and takes over when the primary is gone."""

    role = Role.SECONDARY
    guest: ISecondaryGuest

    def __init__(self, domain: DomainConfig, node: str, guest: ISecondaryGuest, devices: DeviceGroup,
                 clock: IReactorTime, status: StatusFile, qmp: QMP | None, *, generation: Generation,
                 policy: TakeoverPolicy, requests: OperatorRequest) -> None:
        super().__init__(domain, node, guest, devices, clock, status, qmp, generation=generation)
        self.policy = policy
        self.requests = requests
        stale = requests.take()
        if stale is not None:
            self.log.warn("domain {domain}: removed a failover request left from before this start "
                          "({by}): a request counts only while a takeover waits for it",
                          domain=domain.name, by=stale)
        # An engine that does not know its guest's size (a Xen guest's pfns are not its size) has none.
        self._buffer = CheckpointBuffer(guest.memory_pages)
        self._first = True
        self.machine = start_secondary(self)

    # -- EngineCore ------------------------------------------------------------

    def recordReceived(self, link: PeerLink, record: Record) -> None:
        """Refuse a record the checkpoint cannot hold as it arrives, before it waits in the inbox."""
        if link is self.link:
            try:
                self._buffer.arrived(record)
            except ProtocolViolation as error:
                self.violation(error)
                return
        super().recordReceived(link, record)

    def new_session(self) -> None:
        super().new_session()
        self._buffer.drop()

    def record_input(self, record: Record) -> bool:
        self._buffer.delivered(record)
        if isinstance(record, CheckpointEnd):
            self.machine.checkpoint_end()
        elif isinstance(record, CheckpointState):
            if record.id is not CheckpointId.NEW:
                return False
            self.machine.new_checkpoint()
        elif isinstance(record, LibxcEnd | End):
            return False
        else:
            self.machine.stream_record(record)
        return True

    def admit(self, peer: Hello) -> str | None:
        """A primary older than this node was taken over from: never link it.  A newer one is adopted
        (on disk) before its first record, so that a takeover here starts the generation after it."""
        if peer.generation < self.generation.value:
            return (f"{peer.node} is at generation {peer.generation}, older than this node's "
                    f"{self.generation.value}: the domain was taken over from it, it must not run the guest")
        if peer.generation > self.generation.value:
            try:
                self.generation.advance(peer.generation)
            except GenerationError as e:
                return f"cannot adopt the primary's generation {peer.generation}: {e}"
        return None

    def lost(self, end: LinkEnd) -> None:
        if secondary_action(end) is Action.END_REPLICATION:
            self.machine.replication_ended(end.reason)
        else:
            self.machine.primary_lost(end.reason)

    def holds_the_newest_data(self) -> None:
        """A checkpoint is committed here: a mark that this node was once taken over from no longer holds."""
        if self.generation.superseded is not None:
            try:
                self.generation.unmark()
            except GenerationError as e:
                self.log.error("domain {domain}: {error}", domain=self.domain.name, error=e)
            else:
                self.log.info("domain {domain}: this node holds the newest data again: the mark that it was "
                              "taken over from is removed", domain=self.domain.name)

    def request_failover(self, by: str) -> None:
        """An operator's "take over now" (``by``: who, for the log), as a request the engine takes up at
        its next look, the way ``colod failover``'s is: under the etcd policy only once a claim won.

        @raise FailoverNotAwaited: this engine is not waiting for one.
        """
        if self.state is not SecondaryState.AWAITING_OPERATOR:
            raise FailoverNotAwaited(f"domain {self.domain.name} is not waiting for a failover decision "
                                     f"(it is {self.doing})")
        self.requests.write(by)

    # -- steps -----------------------------------------------------------------

    async def _apply_checkpoint(self, records: list[Record]) -> None:
        await self.guest.apply_checkpoint(records)
        if self._first:
            await self.devices.setup()
            self._first = False
        await self.devices.preresume()

    async def _resume_guest(self) -> None:
        self._send(CheckpointState(CheckpointId.SVM_READY))
        await self.guest.resume()
        self._send(CheckpointState(CheckpointId.SVM_RESUMED))
        await self.devices.commit()

    async def _suspend_guest(self) -> None:
        await self.guest.suspend()
        await self.devices.postsuspend()
        self._send(CheckpointState(CheckpointId.SVM_SUSPENDED))
        self._send(await self.guest.dirty_pfn_list())

    def _decide(self) -> None:
        """Ask the policy; its verdict counts only if nothing else happened meanwhile (same session)."""
        session = self._session

        def verdict(verdict: Verdict) -> None:
            if session == self._session:
                if verdict.allowed:
                    self.machine.takeover_allowed(verdict.why)
                else:
                    self.machine.takeover_refused(verdict.why)

        self.policy.decide().addCallback(verdict).addErrback(
            lambda failure: self.log.failure("domain {domain}: the failover policy failed", failure,
                                             domain=self.domain.name))

    async def _failover(self) -> None:
        """A new generation on disk first: once the guest may run here, no older node may run it."""
        self.generation.advance(self.generation.value + 1)
        self.log.info("domain {domain}: generation {n} begins here", domain=self.domain.name,
                      n=self.generation.value)
        await self.devices.failover()
        await self.guest.take_over()

    # -- helpers ---------------------------------------------------------------

    def _send(self, record: Record) -> None:
        if self.link is None:
            raise ConnectionError("the link to the primary is gone")
        self.link.sendRecord(record)

    def _leave(self, code: ReplicationEndReason | None) -> None:
        """Leave protection and forget the primary: tell it why if the link is still up (code),
        and start a new session."""
        self.protected = False
        link, self.link = self.link, None
        if link is not None:
            if code is None:
                link.close()
            else:
                link.end(code, self.error or "")
        self.new_session()
        self.publish()


# -- the machine ------------------------------------------------------------------
#
# Each behaviour below is named for its situation and serves the transitions
# decorated on it; the states' names are SecondaryState's.

_I, _S = SecondaryInputs, SecondaryState
_machine: MachineBuilder[SecondaryInputs, SecondaryEngine, SecondaryState] = MachineBuilder(
    _I, SecondaryEngine)


def _watch_requests(machine: SecondaryInputs, engine: SecondaryEngine, why: str) -> list[LoopingCall]:
    """While an operator decides (the policy said no, ``why``): look for a request now and then
    (colod failover writes one), and ask a policy whose no may change again, one question at a time."""
    def look() -> None:
        by = engine.requests.take()
        if by is not None:
            machine.operator_failover(by)

    watches = [LoopingCall(look)]
    policy = engine.policy
    if isinstance(policy, Rechecking):
        said = why

        def answered(verdict: Verdict) -> None:
            nonlocal said
            if verdict.allowed:
                machine.takeover_allowed(verdict.why)
            elif verdict.why != said:
                said = verdict.why
                engine.log.warn("domain {domain}: still not taking over: {why}", domain=engine.domain.name,
                                why=verdict.why)

        def recheck() -> Deferred[None]:
            # A yes heard after this state was left (an operator's request won first) changes nothing.
            return policy.recheck().addCallback(answered)

        watches.append(LoopingCall(recheck))
        watches[-1].clock = engine.clock
        watches[-1].start(policy.recheck_interval, now=False)
    watches[0].clock = engine.clock
    watches[0].start(REQUEST_POLL_INTERVAL, now=False)
    return watches


def _stop_watching(watches: list[LoopingCall]) -> None:
    for watch in watches:
        watch.stop()


WaitingForPrimary = _machine.state(_S.WAITING_FOR_PRIMARY)
ReceivingFirstCheckpoint = _machine.state(_S.RECEIVING_FIRST_CHECKPOINT)
Applying = _machine.state(_S.APPLYING)
Resuming = _machine.state(_S.RESUMING)
Running = _machine.state(_S.RUNNING)
Suspending = _machine.state(_S.SUSPENDING)
ReceivingCheckpoint = _machine.state(_S.RECEIVING_CHECKPOINT)
DecidingTakeover = _machine.state(_S.DECIDING_TAKEOVER)
AwaitingOperator = _machine.state(_S.AWAITING_OPERATOR, _watch_requests, _stop_watching)
FailingOver = _machine.state(_S.FAILING_OVER)
PrimaryUnprotected = _machine.state(_S.PRIMARY_UNPROTECTED)
FailoverFailed = _machine.state(_S.FAILOVER_FAILED)
Ending = _machine.state(_S.ENDING)
Ended = _machine.state(_S.ENDED)

#: A checkpoint was committed here and the primary is still there: its loss means a takeover.
_STANDING_BY = (Applying, Resuming, Running, Suspending, ReceivingCheckpoint)
#: No checkpoint committed yet: nothing to take over.
_UNCOMMITTED = (WaitingForPrimary, ReceivingFirstCheckpoint)
#: The primary is lost and this node has not taken over: a decision is awaited.
_UNDECIDED = (DecidingTakeover, AwaitingOperator)
#: Replication is over here, or about to be: nothing more to do on any news.
_OVER = (FailingOver, PrimaryUnprotected, FailoverFailed, Ending, Ended)

# Behaviour-less transitions.
_machine.upon(WaitingForPrimary, _I.link_ready, ReceivingFirstCheckpoint)(nothing)
_machine.upon(Suspending, _I.suspended, ReceivingCheckpoint)(nothing)
for _input in (_I.primary_lost, _I.replication_ended, _I.qemu_lost, _I.stop, _I.takeover_allowed,
               _I.takeover_refused):
    _machine.upon(_OVER, _input)(nothing)
for _input in (_I.primary_lost, _I.replication_ended):
    _machine.upon(_UNDECIDED, _input)(nothing)  # the link was let go already: a late report of its end
del _input



@_machine.upon((ReceivingFirstCheckpoint, ReceivingCheckpoint), _I.stream_record)
def _buffer_record(machine: SecondaryInputs, engine: SecondaryEngine, record: Record) -> None:
    engine._buffer.add(record)


@_machine.upon((ReceivingFirstCheckpoint, ReceivingCheckpoint), _I.checkpoint_end, Applying)
def _apply(machine: SecondaryInputs, engine: SecondaryEngine) -> None:
    records = engine._buffer.take()  # committed now: a loss of the primary from here on does not drop it
    engine.run_step(lambda: engine._apply_checkpoint(records), machine.applied)


@_machine.upon(ReceivingFirstCheckpoint, _I.primary_lost, WaitingForPrimary)
@_machine.upon(ReceivingFirstCheckpoint, _I.replication_ended, WaitingForPrimary)
def _forget_primary(machine: SecondaryInputs, engine: SecondaryEngine, reason: Failure) -> None:
    engine.log.warn("domain {domain}: the primary left before a checkpoint was complete ({why}); "
                    "nothing to take over, waiting for a primary", domain=engine.domain.name,
                    why=describe(reason))
    engine.new_session()
    engine.publish()


@_machine.upon(Applying, _I.applied, Resuming)
def _resume(machine: SecondaryInputs, engine: SecondaryEngine) -> None:
    engine.run_step(engine._resume_guest, machine.resumed)


@_machine.upon(Resuming, _I.resumed, Running)
def _checkpoint_done(machine: SecondaryInputs, engine: SecondaryEngine) -> None:
    engine.checkpoints += 1
    engine.protected = True
    if engine.checkpoints == 1:
        engine.log.info("domain {domain}: standing by: first checkpoint applied", domain=engine.domain.name)
        engine.holds_the_newest_data()
    engine.publish()


@_machine.upon(Running, _I.new_checkpoint, Suspending)
def _suspend(machine: SecondaryInputs, engine: SecondaryEngine) -> None:
    engine.run_step(engine._suspend_guest, machine.suspended)


@_machine.upon(_STANDING_BY, _I.primary_lost, DecidingTakeover)
def _ask_policy(machine: SecondaryInputs, engine: SecondaryEngine, reason: Failure) -> None:
    engine.error = f"primary lost: {describe(reason)}"
    engine.log.error("domain {domain}: {error}; asking the failover policy ({policy}) before taking over "
                     "from checkpoint {n}", domain=engine.domain.name, error=engine.error,
                     policy=engine.policy.name.value, n=engine.checkpoints)
    engine._leave(None)
    engine._decide()


@_machine.upon(DecidingTakeover, _I.takeover_allowed, FailingOver)
@_machine.upon(AwaitingOperator, _I.takeover_allowed, FailingOver)
def _take_over(machine: SecondaryInputs, engine: SecondaryEngine, why: str) -> None:
    _fail_over(machine, engine, why)


@_machine.upon(AwaitingOperator, _I.operator_failover, FailingOver)
def _take_over_on_request(machine: SecondaryInputs, engine: SecondaryEngine, by: str) -> None:
    _fail_over(machine, engine, f"the operator asked for it ({by})")


def _fail_over(machine: SecondaryInputs, engine: SecondaryEngine, why: str) -> None:
    engine.log.warn("domain {domain}: taking over from checkpoint {n}: {why}", domain=engine.domain.name,
                    n=engine.checkpoints, why=why)
    engine.run_step(engine._failover, machine.taken_over)


@_machine.upon(DecidingTakeover, _I.takeover_refused, AwaitingOperator)
def _await_operator(machine: SecondaryInputs, engine: SecondaryEngine, why: str) -> None:
    engine.error = f"{engine.error}; not taking over: {why}"
    engine.log.error("domain {domain}: {error}. The copy of checkpoint {n} is kept: once the primary is "
                     "known to be down, `colod failover {domain}` takes over", domain=engine.domain.name,
                     error=engine.error, n=engine.checkpoints)
    engine.publish()


@_machine.upon(_UNDECIDED, _I.stop, Ending)
def _stop_undecided(machine: SecondaryInputs, engine: SecondaryEngine) -> None:
    engine.log.info("domain {domain}: colod is stopping while a takeover was undecided: replication ends, "
                    "nothing taken over", domain=engine.domain.name)
    engine.run_step(engine.devices.teardown, machine.torn_down)


@_machine.upon(FailingOver, _I.taken_over, PrimaryUnprotected)
def _report_primary(machine: SecondaryInputs, engine: SecondaryEngine) -> None:
    engine.role = Role.PRIMARY
    engine.log.warn("domain {domain}: FAILOVER done: this node is now the primary, UNPROTECTED; "
                    "the guest runs from checkpoint {n}", domain=engine.domain.name, n=engine.checkpoints)
    engine.publish(failed_over=True)


@_machine.upon(FailingOver, _I.step_failed, FailoverFailed)
def _report_failover_failed(machine: SecondaryInputs, engine: SecondaryEngine, reason: Failure) -> None:
    engine.error = f"{engine.error}; taking over failed: {reason.getErrorMessage()}"
    engine.log.error("domain {domain}: {error}", domain=engine.domain.name, error=engine.error)
    engine.publish()


@_machine.upon(_STANDING_BY, _I.replication_ended, Ending)
def _end_replication(machine: SecondaryInputs, engine: SecondaryEngine, reason: Failure) -> None:
    _end_without_takeover(machine, engine, f"replication ended: {describe(reason)}", None)


@_machine.upon(_STANDING_BY, _I.drop_requested, Ending)
def _drop_on_request(machine: SecondaryInputs, engine: SecondaryEngine, reason: str) -> None:
    _end_without_takeover(machine, engine, reason, ReplicationEndReason.SHUTDOWN, LogLevel.warn)


@_machine.upon(_STANDING_BY, _I.step_failed, Ending)
def _give_up(machine: SecondaryInputs, engine: SecondaryEngine, reason: Failure) -> None:
    _end_without_takeover(machine, engine, f"replication failed here: {reason.getErrorMessage()}",
                          ReplicationEndReason.LOCAL_FAILURE)


def _end_without_takeover(machine: SecondaryInputs, engine: SecondaryEngine, error: str,
                          code: ReplicationEndReason | None, level: LogLevel = LogLevel.error) -> None:
    """The primary may well run its guest: forget it (telling it ``code``), and tear replication down."""
    engine.error = error
    engine.log.emit(level, "domain {domain}: {error}; not taking over", domain=engine.domain.name,
                    error=error)
    engine._leave(code)
    engine.run_step(engine.devices.teardown, machine.torn_down)


@_machine.upon((*_UNCOMMITTED, *_STANDING_BY, *_UNDECIDED), _I.qemu_lost, Ended)
def _qemu_gone(machine: SecondaryInputs, engine: SecondaryEngine, reason: str) -> None:
    engine.error = f"this node's QEMU is gone: {reason}"
    engine.log.error("domain {domain}: {error}; replication ends", domain=engine.domain.name,
                     error=engine.error)
    engine._leave(ReplicationEndReason.LOCAL_FAILURE)


@_machine.upon(Ending, _I.torn_down, Ended)
def _report_ended(machine: SecondaryInputs, engine: SecondaryEngine) -> None:
    engine.publish()


@_machine.upon(Ending, _I.step_failed, Ended)
def _teardown_failed(machine: SecondaryInputs, engine: SecondaryEngine, reason: Failure) -> None:
    engine.cleanup_failed("tearing replication down", reason)
    engine.publish()


@_machine.upon(_STANDING_BY, _I.stop, Ending)
def _stop(machine: SecondaryInputs, engine: SecondaryEngine) -> None:
    """Tell the primary, which drops this node and keeps its guest; undo replication here."""
    engine.error = "colod stopped"
    engine.log.info("domain {domain}: colod is stopping: replication ends", domain=engine.domain.name)
    engine._leave(ReplicationEndReason.SHUTDOWN)
    engine.run_step(engine.devices.teardown, machine.torn_down)


@_machine.upon(_UNCOMMITTED, _I.stop, Ended)
def _stop_waiting(machine: SecondaryInputs, engine: SecondaryEngine) -> None:
    engine.error = "colod stopped"
    engine._leave(ReplicationEndReason.SHUTDOWN)


#: Starts the secondary's machine for an engine.
start_secondary = _machine.build()
#: Every transition of the secondary's machine.
TRANSITIONS = frozenset(_machine.transitions)
