# -*- test-case-name: tests.engine.test_transitions, tests.engine.test_engines -*-
"""The primary's checkpoint engine (libxl_colo_save.c's part of xen-colo-protocol.md §3.4).

One round: wait for a reason to checkpoint (the interval, or a request);
write CHECKPOINT_STATE(NEW); suspend the guest and run the devices'
postsuspend; read SVM_SUSPENDED and the secondary's dirty pages from the back
channel; send the pages, CHECKPOINT, the device model's state and
CHECKPOINT_END; read SVM_READY; run the devices' preresume and resume the
guest; read SVM_RESUMED.  The first round sends every page instead (those
the guest engine can copy while the guest runs, then the rest), and
starts the devices' replication once the secondary is READY (its NBD server
is up by then).

The secondary's SVM_READY means it has applied the whole checkpoint, disks
included, so the guest never runs ahead of what the secondary can fail over
to.  Losing the secondary, or a protocol error, drops it: replication is
detached, the guest resumes if it was suspended, and runs on unprotected.

Two things stop the guest for good: a peer of a newer generation (superseded:
the domain was taken over from this node) and, under the etcd policy, a lease
this node can no longer count on (fenced: colod.failover.etcd_policy), which
the secondary may win once it has lapsed.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Protocol

from automat import NoTransition
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from colod.config import DomainConfig
from colod.devices import DeviceGroup
from colod.engine.core import EngineCore, EngineInputs, describe
from colod.engine.generation import Generation, GenerationError
from colod.engine.link_end import LinkEnd
from colod.engine.machine import MachineBuilder, nothing
from colod.engine.status import Pause, StatusFile
from colod.guest.interfaces import IPrimaryGuest
from colod.protocol import (
    Checkpoint,
    CheckpointDirtyPfnList,
    CheckpointEnd,
    CheckpointId,
    CheckpointState,
    LibxcContext,
    PageData,
    Record,
    ReplicationEndReason,
)
from colod.protocol.handshake import Hello
from colod.qmp import QMP
from colod.role import Role


class PrimaryState(StrEnum):
    """The primary's states, by the names status.json and the log give them."""

    WAITING_FOR_SECONDARY = "waiting_for_secondary"
    SENDING_FIRST_COPY = "sending_first_copy"
    AWAITING_SVM_READY = "awaiting_svm_ready"
    RESUMING = "resuming"
    AWAITING_SVM_RESUMED = "awaiting_svm_resumed"
    PROTECTED = "protected"
    SUSPENDING = "suspending"
    AWAITING_SVM_SUSPENDED = "awaiting_svm_suspended"
    AWAITING_DIRTY_PFNS = "awaiting_dirty_pfns"
    SENDING_CHECKPOINT = "sending_checkpoint"
    DROPPING_SECONDARY = "dropping_secondary"
    UNPROTECTED = "unprotected"
    GUEST_LOST = "guest_lost"
    SUPERSEDED = "superseded"
    FENCED = "fenced"
    STOPPING = "stopping"
    STOPPED = "stopped"


class PrimaryInputs(EngineInputs, Protocol):
    """What moves the primary's machine: the secondary's records, its steps' ends, time and requests."""

    def first_copy_sent(self) -> None:
        """The first round's checkpoint is written."""

    def svm_ready(self) -> None:
        """CHECKPOINT_STATE(SVM_READY) arrived."""

    def resumed(self) -> None:
        """The guest runs again."""

    def svm_resumed(self) -> None:
        """CHECKPOINT_STATE(SVM_RESUMED) arrived."""

    def checkpoint_due(self) -> None:
        """The interval passed since the last checkpoint ended."""

    def checkpoint_requested(self, waiter: Deferred[int]) -> None:
        """Someone asked for a checkpoint (L{PrimaryEngine.request_checkpoint})."""

    def suspended(self) -> None:
        """The guest is suspended and the devices were checked."""

    def svm_suspended(self) -> None:
        """CHECKPOINT_STATE(SVM_SUSPENDED) arrived."""

    def dirty_pfn_list(self, record: CheckpointDirtyPfnList) -> None:
        """CHECKPOINT_DIRTY_PFN_LIST arrived."""

    def checkpoint_sent(self) -> None:
        """A later round's checkpoint is written."""

    def secondary_lost(self, reason: Failure) -> None:
        """The link ended, the secondary went silent, ended replication or broke the protocol."""

    def dropped(self) -> None:
        """Replication is detached and the guest runs."""

    def superseded(self, why: str) -> None:
        """A peer of a newer generation linked: another node runs the guest now."""

    def fenced(self, why: str) -> None:
        """This node may lose the domain to its secondary any moment (its etcd lease may lapse)."""

    def halted(self) -> None:
        """The guest is stopped for good."""

    def stop_done(self) -> None:
        """The stop's cleanup finished."""


_BACK_CHANNEL_INPUTS: dict[CheckpointId, Callable[[PrimaryInputs], None]] = {
    CheckpointId.SVM_SUSPENDED: lambda machine: machine.svm_suspended(),
    CheckpointId.SVM_READY: lambda machine: machine.svm_ready(),
    CheckpointId.SVM_RESUMED: lambda machine: machine.svm_resumed(),
}


class CheckpointOverdue(Exception):
    """A checkpoint took longer than the checkpoint timeout: the secondary hangs."""


class CheckpointRefused(Exception):
    """A requested checkpoint cannot happen: the domain is not protected."""


class PrimaryEngine(EngineCore[PrimaryInputs, PrimaryState]):
    """Checkpoints one domain's guest to the secondary until one of them is gone."""

    role = Role.PRIMARY
    qmp: QMP
    guest: IPrimaryGuest

    def __init__(self, domain: DomainConfig, node: str, guest: IPrimaryGuest, devices: DeviceGroup,
                 clock: IReactorTime, status: StatusFile, qmp: QMP, *, generation: Generation,
                 interval: float, checkpoint_timeout: float,
                 on_stopped_for_good: Callable[[], object] = lambda: None) -> None:
        super().__init__(domain, node, guest, devices, clock, status, qmp, generation=generation)
        self.interval = interval
        #: Called once the guest is stopped for good (fenced or superseded): the domain may be let go.
        self.on_stopped_for_good = on_stopped_for_good
        #: The longest a checkpoint may take, NEW to SVM_RESUMED: a secondary that
        #: heartbeats but never answers must not keep the guest suspended.
        self.checkpoint_timeout = checkpoint_timeout
        self._overdue: IDelayedCall | None = None
        self._requested: list[Deferred[int]] = []
        self._in_flight: list[Deferred[int]] = []
        self._first = True
        self._suspended = False
        self._emulator: Sequence[Record] = ()
        self._pause_began = (0.0, 0.0, 0.0)
        #: The pages, and bytes on the link, of the checkpoint under way.
        self._sent = (0, 0)
        #: Completed checkpoints by what started them: the first, the interval, or a request.
        self.triggers: Counter[str] = Counter()
        #: Whether checkpoints on the interval are paused (colodctl pause); requested ones still run.
        self.paused = False
        self.machine = start_primary(self)

    # -- API -------------------------------------------------------------------

    def request_checkpoint(self) -> Deferred[int]:
        """A checkpoint that begins after now; fires with its number once it is complete.

        For whoever knows the guest's outputs diverged (the network provider,
        the control socket).  Fails with CheckpointRefused once the secondary
        is gone.
        """
        d: Deferred[int] = Deferred()
        self.machine.checkpoint_requested(d)
        return d

    def pause_checkpoints(self) -> None:
        """Start no checkpoint on the interval (one under way finishes) until resume_checkpoints."""
        if not self.paused:
            self.paused = True
            self.log.warn("domain {domain}: checkpoints paused on request: the secondary holds checkpoint "
                          "{n} until they resume", domain=self.domain.name, n=self.checkpoints)
            self.publish()

    def resume_checkpoints(self) -> None:
        """Checkpoint on the interval again, starting with one at once (refused quietly if unprotected)."""
        if self.paused:
            self.paused = False
            self.log.info("domain {domain}: checkpoints resumed", domain=self.domain.name)
            self.request_checkpoint().addErrback(lambda failure: failure.trap(CheckpointRefused))
            self.publish()

    def publish(self, **extra: object) -> None:
        super().publish(checkpoints_paused=self.paused, **extra)

    def fence(self, why: str) -> None:
        """This node may lose the domain any moment (colod.failover.etcd_policy): stop the guest for good."""
        self.machine.fenced(why)

    # -- EngineCore ------------------------------------------------------------

    def record_input(self, record: Record) -> bool:
        if isinstance(record, CheckpointDirtyPfnList):
            self.machine.dirty_pfn_list(record)
        elif isinstance(record, CheckpointState) and record.id in _BACK_CHANNEL_INPUTS:
            _BACK_CHANNEL_INPUTS[record.id](self.machine)
        else:
            return False
        return True

    def admit(self, peer: Hello) -> str | None:
        """A peer of a newer generation took the domain over from this node: stop for good."""
        if peer.generation <= self.generation.value:
            return None  # the same, or an older secondary, which adopts this node's
        why = (f"{peer.node} is at generation {peer.generation}, this node at {self.generation.value}: the "
               "domain was taken over from this node")
        try:
            self.generation.supersede(peer.node, peer.generation)
        except GenerationError as e:
            self.log.critical("domain {domain}: {error}: after a restart this node will not know it was "
                              "taken over from", domain=self.domain.name, error=e)
        try:
            self.machine.superseded(why)
        except NoTransition:
            self.log.critical("domain {domain}: {why}, while {doing}", domain=self.domain.name, why=why,
                              doing=self.doing)
        return why

    def lost(self, end: LinkEnd) -> None:
        self.machine.secondary_lost(end.reason)  # whatever the kind (link_end.ACTIONS): drop it

    # -- steps -----------------------------------------------------------------

    async def _first_copy(self) -> None:
        self._send_live(LibxcContext())
        await self.guest.copy_live(self._send_live)
        if self.link is None:  # lost while the guest was copied: a stale step must not suspend it
            raise ConnectionError("the link closed during the live copy")
        self._begin_pause()  # the live copy has the guest engine's deadline; the pause has its own
        await self._suspend_guest()
        await self._send_checkpoint_records(await self.guest.first_records())

    def _send_live(self, record: Record) -> None:
        """A record of the first copy, sent while the guest runs; if the link is gone, the step
        fails where it sends the rest."""
        if self.link is not None:
            self.link.sendRecord(record)

    async def _resume(self) -> None:
        if self._first:
            await self.devices.setup()
            self._first = False
        await self.devices.preresume()
        await self.guest.resume()
        self._suspended = False
        self._end_pause()
        await self.devices.commit()

    async def _suspend(self) -> None:
        await self._suspend_guest()
        await self.devices.postsuspend()

    async def _checkpoint(self, secondary_dirty: CheckpointDirtyPfnList) -> None:
        records = await self.guest.checkpoint_records(secondary_dirty)
        await self._send_checkpoint_records(records)

    async def _drop(self) -> None:
        try:
            await self.devices.drop_secondary()
        finally:
            await self._detach_and_resume()

    async def _stop_cleanup(self) -> None:
        try:
            await self.devices.teardown()
        finally:
            await self._detach_and_resume()

    async def _detach_and_resume(self) -> None:
        """Whatever else failed, the guest's replication ends, and then a guest this engine
        suspended runs again."""
        try:
            await self.guest.detach()
        finally:
            if self._suspended:
                await self.guest.resume()
                self._suspended = False

    async def _suspend_guest(self) -> None:
        """Suspend and save the device model's state, as Xen's suspend callback does: the
        secondary is suspending meanwhile, so this is off the checkpoint's critical path."""
        self._suspended = True
        await self.guest.suspend()
        self._emulator = await self.guest.emulator_records()

    async def _send_checkpoint_records(self, records: Sequence[Record]) -> None:
        link = self.link
        if link is None:
            raise ConnectionError("the link closed while the checkpoint was being sent")
        sent = link.bytes_sent
        for record in (*records, Checkpoint(), *self._emulator, CheckpointEnd()):
            link.sendRecord(record)
        pages = sum(len(record.pfns) for record in records if isinstance(record, PageData))
        self._sent = (pages, link.bytes_sent - sent)

    # -- helpers ---------------------------------------------------------------

    def _begin_pause(self) -> None:
        self._pause_began = (time.perf_counter(), self.qmp.busy_seconds, self.guest.copy_seconds)
        self._overdue = self.clock.callLater(self.checkpoint_timeout, self._checkpoint_overdue)

    def _checkpoint_overdue(self) -> None:
        self._overdue = None
        self.machine.secondary_lost(Failure(CheckpointOverdue(
            f"checkpoint {self.checkpoints + 1} not complete after {self.checkpoint_timeout:g} s")))

    def _end_pause(self) -> None:
        began, qmp, copy = self._pause_began
        pages, sent = self._sent
        self.pauses.add(Pause(time.perf_counter() - began, self.qmp.busy_seconds - qmp,
                              self.guest.copy_seconds - copy, pages, sent))

    def _cancel_overdue(self) -> None:
        if self._overdue is not None and self._overdue.active():
            self._overdue.cancel()
        self._overdue = None

    def _end(self, error: str, code: ReplicationEndReason, level: LogLevel = LogLevel.error) -> None:
        """Leave protection, tell the secondary (if it can hear) why, and forget it."""
        self.error = error
        self.log.emit(level, "domain {domain}: {error}", domain=self.domain.name, error=self.error)
        self._unprotect()
        link, self.link = self.link, None
        if link is not None:
            link.end(code, self.error)
        self.new_session()

    def _let_go(self) -> None:
        """Unprotected, and the link closed without an end record, so that the secondary asks its
        failover policy; a new session, so that nothing of the old one drives the machine."""
        self._unprotect()
        link, self.link = self.link, None
        if link is not None:
            link.close()
        self.new_session()

    def _unprotect(self) -> None:
        """The guest is no longer protected: no checkpoint is running or will run."""
        self.protected = False
        self._cancel_overdue()
        waiting, self._requested, self._in_flight = self._requested + self._in_flight, [], []
        for d in waiting:
            d.errback(CheckpointRefused(f"domain {self.domain.name}: {self.error}"))


# -- the machine ------------------------------------------------------------------
#
# Each behaviour below is named for its situation and serves the transitions
# decorated on it; the states' names are PrimaryState's.

_I, _S = PrimaryInputs, PrimaryState
_machine: MachineBuilder[PrimaryInputs, PrimaryEngine, PrimaryState] = MachineBuilder(_I, PrimaryEngine)


def _wait_interval(machine: PrimaryInputs, engine: PrimaryEngine) -> IDelayedCall:
    """Protected: the next checkpoint is due after the interval (at once if one was asked for)."""
    return engine.clock.callLater(0 if engine._requested else engine.interval, _interval_passed, machine,
                                  engine)


def _interval_passed(machine: PrimaryInputs, engine: PrimaryEngine) -> None:
    """The next checkpoint is due, unless checkpoints are paused and none was asked for."""
    if engine._requested or not engine.paused:
        machine.checkpoint_due()


def _cancel_call(call: IDelayedCall) -> None:
    if call.active():
        call.cancel()


WaitingForSecondary = _machine.state(_S.WAITING_FOR_SECONDARY)
SendingFirstCopy = _machine.state(_S.SENDING_FIRST_COPY)
AwaitingSvmReady = _machine.state(_S.AWAITING_SVM_READY)
Resuming = _machine.state(_S.RESUMING)
AwaitingSvmResumed = _machine.state(_S.AWAITING_SVM_RESUMED)
Protected = _machine.state(_S.PROTECTED, _wait_interval, _cancel_call)
Suspending = _machine.state(_S.SUSPENDING)
AwaitingSvmSuspended = _machine.state(_S.AWAITING_SVM_SUSPENDED)
AwaitingDirtyPfns = _machine.state(_S.AWAITING_DIRTY_PFNS)
SendingCheckpoint = _machine.state(_S.SENDING_CHECKPOINT)
DroppingSecondary = _machine.state(_S.DROPPING_SECONDARY)
Unprotected = _machine.state(_S.UNPROTECTED)
GuestLost = _machine.state(_S.GUEST_LOST)
Superseded = _machine.state(_S.SUPERSEDED)
Fenced = _machine.state(_S.FENCED)
Stopping = _machine.state(_S.STOPPING)
Stopped = _machine.state(_S.STOPPED)

#: A secondary is linked and a round may be under way: losing it drops it.
_REPLICATING = (SendingFirstCopy, AwaitingSvmReady, Resuming, AwaitingSvmResumed, Protected, Suspending,
                AwaitingSvmSuspended, AwaitingDirtyPfns, SendingCheckpoint)
#: Where a requested checkpoint waits for its turn.
_ROUND_UNDER_WAY = (WaitingForSecondary, *(state for state in _REPLICATING if state is not Protected))
#: Where a requested checkpoint can no longer happen.
_PAST_PROTECTION = (DroppingSecondary, Unprotected, GuestLost, Superseded, Fenced, Stopping, Stopped)
#: Where the guest runs, or may run again, as this node's primary.
_LIVE = (WaitingForSecondary, *_REPLICATING, DroppingSecondary, Unprotected)

# Behaviour-less transitions.
_machine.upon(SendingFirstCopy, _I.first_copy_sent, AwaitingSvmReady)(nothing)
_machine.upon(Resuming, _I.resumed, AwaitingSvmResumed)(nothing)
_machine.upon(Suspending, _I.suspended, AwaitingSvmSuspended)(nothing)
_machine.upon(AwaitingSvmSuspended, _I.svm_suspended, AwaitingDirtyPfns)(nothing)
_machine.upon(SendingCheckpoint, _I.checkpoint_sent, AwaitingSvmReady)(nothing)
_machine.upon(GuestLost, _I.secondary_lost)(nothing)
_machine.upon((GuestLost, Stopping), _I.qemu_lost)(nothing)
_machine.upon(Stopping, _I.secondary_lost)(nothing)


@_machine.upon(WaitingForSecondary, _I.link_ready, SendingFirstCopy)
def _send_first_copy(machine: PrimaryInputs, engine: PrimaryEngine) -> None:
    engine.log.info("domain {domain}: first checkpoint: copying the guest while it runs, then "
                    "suspending it and sending the rest", domain=engine.domain.name)
    engine.run_step(engine._first_copy, machine.first_copy_sent)


@_machine.upon(AwaitingSvmReady, _I.svm_ready, Resuming)
def _resume_guest(machine: PrimaryInputs, engine: PrimaryEngine) -> None:
    engine.run_step(engine._resume, machine.resumed)


@_machine.upon(AwaitingSvmResumed, _I.svm_resumed, Protected)
def _checkpoint_done(machine: PrimaryInputs, engine: PrimaryEngine) -> None:
    engine._cancel_overdue()
    engine.checkpoints += 1
    trigger = "first" if engine.checkpoints == 1 else "request" if engine._in_flight else "interval"
    engine.triggers[trigger] += 1
    engine.protected = True
    if engine.checkpoints == 1:
        engine.log.info("domain {domain}: protected: first checkpoint complete", domain=engine.domain.name)
    engine.publish()
    # Last: a waiter may ask for the next checkpoint right away.
    done, engine._in_flight = engine._in_flight, []
    for d in done:
        d.callback(engine.checkpoints)


@_machine.upon(Protected, _I.checkpoint_due, Suspending)
def _begin_checkpoint(machine: PrimaryInputs, engine: PrimaryEngine) -> None:
    engine._in_flight, engine._requested = engine._requested, []
    engine._begin_pause()
    assert engine.link is not None  # a lost link leaves Protected first
    engine.link.sendRecord(CheckpointState(CheckpointId.NEW))
    engine.run_step(engine._suspend, machine.suspended)


@_machine.upon(Protected, _I.checkpoint_requested, Suspending)
def _checkpoint_at_once(machine: PrimaryInputs, engine: PrimaryEngine, waiter: Deferred[int]) -> None:
    engine._requested.append(waiter)
    _begin_checkpoint(machine, engine)


@_machine.upon(_ROUND_UNDER_WAY, _I.checkpoint_requested)
def _keep_request(machine: PrimaryInputs, engine: PrimaryEngine, waiter: Deferred[int]) -> None:
    engine._requested.append(waiter)


@_machine.upon(_PAST_PROTECTION, _I.checkpoint_requested)
def _refuse_request(machine: PrimaryInputs, engine: PrimaryEngine, waiter: Deferred[int]) -> None:
    waiter.errback(CheckpointRefused(f"domain {engine.domain.name} is not protected ({engine.state})"))


@_machine.upon(AwaitingDirtyPfns, _I.dirty_pfn_list, SendingCheckpoint)
def _send_checkpoint(machine: PrimaryInputs, engine: PrimaryEngine, record: CheckpointDirtyPfnList) -> None:
    engine.run_step(lambda: engine._checkpoint(record), machine.checkpoint_sent)


@_machine.upon(_REPLICATING, _I.secondary_lost, DroppingSecondary)
def _drop_secondary(machine: PrimaryInputs, engine: PrimaryEngine, reason: Failure) -> None:
    engine._end(f"replication ended: {describe(reason)}", ReplicationEndReason.PROTOCOL_ERROR)
    engine.run_step(engine._drop, machine.dropped)


@_machine.upon(_REPLICATING, _I.drop_requested, DroppingSecondary)
def _drop_on_request(machine: PrimaryInputs, engine: PrimaryEngine, reason: str) -> None:
    """As a lost secondary, but the secondary is told: it must not take over."""
    engine._end(reason, ReplicationEndReason.SHUTDOWN, LogLevel.warn)
    engine.run_step(engine._drop, machine.dropped)


@_machine.upon(_REPLICATING, _I.step_failed, DroppingSecondary)
def _give_up(machine: PrimaryInputs, engine: PrimaryEngine, reason: Failure) -> None:
    engine._end(f"replication failed here: {reason.getErrorMessage()}", ReplicationEndReason.LOCAL_FAILURE)
    engine.run_step(engine._drop, machine.dropped)


@_machine.upon(DroppingSecondary, _I.dropped, Unprotected)
def _report_unprotected(machine: PrimaryInputs, engine: PrimaryEngine) -> None:
    engine.log.warn("domain {domain}: running UNPROTECTED after {n} checkpoints: {why}",
                    domain=engine.domain.name, n=engine.checkpoints, why=engine.error)
    engine.publish()


@_machine.upon(DroppingSecondary, _I.step_failed, Unprotected)
def _drop_failed(machine: PrimaryInputs, engine: PrimaryEngine, reason: Failure) -> None:
    engine.cleanup_failed("detaching the secondary's replication", reason)
    _report_unprotected(machine, engine)


@_machine.upon((DroppingSecondary, Unprotected), _I.secondary_lost)
def _ignore_loss(machine: PrimaryInputs, engine: PrimaryEngine, reason: Failure) -> None:
    engine.log.info("domain {domain}: (already unprotected) {why}", domain=engine.domain.name,
                    why=describe(reason))


@_machine.upon(_LIVE, _I.qemu_lost, GuestLost)
def _abandon(machine: PrimaryInputs, engine: PrimaryEngine, reason: str) -> None:
    """The guest is gone: close the link so that the secondary takes over at once."""
    engine.error = f"the guest's QEMU is gone: {reason}"
    engine.log.error("domain {domain}: {error}; closing the link so that the secondary takes over",
                     domain=engine.domain.name, error=engine.error)
    engine._let_go()
    engine.publish()


@_machine.upon(_LIVE, _I.stop, Stopping)
def _begin_stop(machine: PrimaryInputs, engine: PrimaryEngine) -> None:
    engine.error = "colod stopped; the guest runs on unprotected"
    link, engine.link = engine.link, None
    if link is not None:
        link.end(ReplicationEndReason.SHUTDOWN, "colod on the primary is stopping; its guest runs on")
    engine._unprotect()
    engine.new_session()
    engine.run_step(engine._stop_cleanup, machine.stop_done)


@_machine.upon((WaitingForSecondary, DroppingSecondary, Unprotected), _I.superseded, Superseded)
def _halt_superseded(machine: PrimaryInputs, engine: PrimaryEngine, why: str) -> None:
    """Whatever this node was doing with its guest, another runs it: stop it, and never resume it."""
    _halt_for_good(machine, engine, f"SUPERSEDED: {why}")


@_machine.upon(_LIVE, _I.fenced, Fenced)
def _fence(machine: PrimaryInputs, engine: PrimaryEngine, why: str) -> None:
    """The secondary may own the domain soon: stop the guest for good, and close the link without an end
    record, so that the secondary asks its policy (which wins only once this node's lease lapsed)."""
    _halt_for_good(machine, engine, f"FENCED: {why}")


def _halt_for_good(machine: PrimaryInputs, engine: PrimaryEngine, error: str) -> None:
    engine.error = f"{error}; the guest here is stopped for good"
    engine.log.critical("domain {domain}: {error}. Make sure which copy holds the newest data before "
                        "anything else", domain=engine.domain.name, error=engine.error)
    engine._let_go()
    engine.publish()
    engine.run_step(engine.guest.halt, machine.halted)


for _stopped_for_good in (Superseded, Fenced):
    for _input in (_I.secondary_lost, _I.qemu_lost, _I.stop, _I.fenced):
        _machine.upon(_stopped_for_good, _input)(nothing)


@_machine.upon((Superseded, Fenced), _I.halted)
def _let_the_domain_go(machine: PrimaryInputs, engine: PrimaryEngine) -> None:
    """The guest is stopped here for good: whoever holds this node's claim on the domain may let it go."""
    engine.log.warn("domain {domain}: the guest here is stopped", domain=engine.domain.name)
    engine.on_stopped_for_good()


_machine.upon(Fenced, _I.superseded)(nothing)
_machine.upon((GuestLost, Stopping, Stopped), _I.fenced)(nothing)


@_machine.upon((Superseded, Fenced), _I.step_failed)
def _halt_failed(machine: PrimaryInputs, engine: PrimaryEngine, reason: Failure) -> None:
    engine.cleanup_failed("stopping the guest for good", reason)
    engine.publish()


@_machine.upon(GuestLost, _I.stop, Stopped)
@_machine.upon(Stopping, _I.stop_done, Stopped)
def _stopped(machine: PrimaryInputs, engine: PrimaryEngine) -> None:
    engine.publish()


@_machine.upon(Stopping, _I.step_failed, Stopped)
def _stop_failed(machine: PrimaryInputs, engine: PrimaryEngine, reason: Failure) -> None:
    engine.cleanup_failed("detaching replication at stop", reason)
    engine.publish()


#: Starts the primary's machine for an engine.
start_primary = _machine.build()
#: Every transition of the primary's machine.
TRANSITIONS = frozenset(_machine.transitions)
