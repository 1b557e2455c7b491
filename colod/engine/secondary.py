# -*- test-case-name: tests.engine.test_engines -*-
"""The secondary's checkpoint engine (libxl_colo_restore.c's part of xen-colo-protocol.md §3.4).

One round: read CHECKPOINT_STATE(NEW); suspend the guest, run the devices'
postsuspend, write SVM_SUSPENDED and the guest's dirty pages; buffer the
checkpoint's records up to CHECKPOINT_END; apply them all, disks included
(the devices' preresume empties the overlays), and only then write SVM_READY,
so that the primary's guest never runs ahead of what this side holds; resume
and write SVM_RESUMED.

CHECKPOINT_END is the commit point.  Before it, a checkpoint cut short is
dropped whole; after it, the checkpoint is applied whole even if the primary
vanishes meanwhile.  When the primary is gone (link closed or broken, or
silent for the heartbeat timeout) after a checkpoint was committed, this
side takes over: disk failover with commit, the guest loaded from the last
checkpoint and run; it is then the primary, unprotected.  When the primary
ends replication on purpose (it is stopping, or found an error), or breaks
the protocol, this side stops replicating and does not take over: the
primary's guest may well be running.
"""

from __future__ import annotations

from automat import MethodicalMachine
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from colod.config import DomainConfig
from colod.devices import DeviceGroup
from colod.engine.checkpoint_buffer import CheckpointBuffer
from colod.engine.core import EngineCore, ProtocolViolation, describe
from colod.engine.status import StatusFile
from colod.guest.interfaces import IGuestEngine
from colod.protocol import (
    CheckpointEnd,
    CheckpointId,
    CheckpointState,
    End,
    HandshakeError,
    LibxcEnd,
    PeerEndedReplication,
    Record,
    ReplicationEndReason,
    StreamError,
)
from colod.protocol.peer import PeerLink
from colod.qmp import QMPConnection

#: Reasons the link ended that mean the primary may still run its guest.
_NO_TAKEOVER = (PeerEndedReplication, ProtocolViolation, StreamError, HandshakeError)


class SecondaryEngine(EngineCore):
    """Keeps the standby copy of one domain, and takes over when the primary is gone."""

    role = "secondary"
    _machine = MethodicalMachine()
    setTrace = _machine._setTrace

    def __init__(self, domain: DomainConfig, node: str, guest: IGuestEngine, devices: DeviceGroup,
                 clock: IReactorTime, status: StatusFile, qmp: QMPConnection | None) -> None:
        super().__init__(domain, node, guest, devices, clock, status, qmp)
        # An engine that does not know its guest's size (a Xen guest's pfns are not its size) has none.
        self._buffer = CheckpointBuffer(getattr(guest, "memory_pages", None))
        self._first = True
        self.state = "waiting_for_primary"

    @property
    def is_protected(self) -> bool:
        return self.checkpoints > 0 and self.state in (
            "applying", "resuming", "running", "suspending", "receiving_checkpoint")

    # -- states ----------------------------------------------------------------

    @_machine.state(initial=True)
    def waiting_for_primary(self) -> None:
        """No primary linked, or none has completed a checkpoint: nothing to take over."""

    @_machine.state()
    def receiving_first_checkpoint(self) -> None:
        """The whole guest is arriving; buffered until CHECKPOINT_END."""

    @_machine.state()
    def applying(self) -> None:
        """A complete checkpoint is being applied: memory, device state, disks."""

    @_machine.state()
    def resuming(self) -> None:
        """SVM_READY is sent; the guest resumes (its device model stays stopped), then SVM_RESUMED."""

    @_machine.state()
    def running(self) -> None:
        """Between checkpoints, waiting for CHECKPOINT_STATE(NEW)."""

    @_machine.state()
    def suspending(self) -> None:
        """Suspending the guest, checking the devices, sending SVM_SUSPENDED and the dirty pages."""

    @_machine.state()
    def receiving_checkpoint(self) -> None:
        """A checkpoint is arriving; buffered until CHECKPOINT_END."""

    @_machine.state()
    def failing_over(self) -> None:
        """The primary is gone: disks fail over, the guest is loaded from the last checkpoint."""

    @_machine.state()
    def primary_unprotected(self) -> None:
        """This node took over: it runs the guest, as a primary without a secondary."""

    @_machine.state()
    def failover_failed(self) -> None:
        """Taking over failed; the log says why."""

    @_machine.state()
    def ending(self) -> None:
        """Replication ends without a takeover: devices are torn down."""

    @_machine.state()
    def ended(self) -> None:
        """Replication has ended; the primary keeps the guest."""

    # -- inputs ----------------------------------------------------------------

    @_machine.input()
    def link_ready(self) -> None:
        """A primary is linked."""

    @_machine.input()
    def stream_record(self, record: Record) -> None:
        """A record of the checkpoint being received."""

    @_machine.input()
    def checkpoint_end(self) -> None:
        """CHECKPOINT_END arrived: the checkpoint is complete."""

    @_machine.input()
    def applied(self) -> None:
        """The checkpoint is applied."""

    @_machine.input()
    def resumed(self) -> None:
        """SVM_READY and SVM_RESUMED are sent."""

    @_machine.input()
    def new_checkpoint(self) -> None:
        """CHECKPOINT_STATE(NEW) arrived."""

    @_machine.input()
    def suspended(self) -> None:
        """SVM_SUSPENDED and the dirty pages are sent."""

    @_machine.input()
    def primary_lost(self, reason: Failure) -> None:
        """The link closed or broke, or the primary went silent."""

    @_machine.input()
    def replication_ended(self, reason: Failure) -> None:
        """The primary ended replication, or broke the protocol."""

    @_machine.input()
    def step_failed(self, reason: Failure) -> None:
        """A local step failed."""

    @_machine.input()
    def taken_over(self) -> None:
        """The guest runs here."""

    @_machine.input()
    def torn_down(self) -> None:
        """Replication is torn down."""

    @_machine.input()
    def qemu_lost(self, reason: str) -> None:
        """The QMP connection to this node's QEMU is gone."""

    @_machine.input()
    def stop(self) -> None:
        """colod is stopping."""

    # -- outputs ---------------------------------------------------------------

    @_machine.output()
    def _buffer_record(self, record: Record) -> None:
        self._buffer.add(record)

    @_machine.output()
    def _apply(self) -> None:
        records = self._buffer.take()  # committed now: a loss of the primary from here on does not drop it
        self.run_step(lambda: self._apply_checkpoint(records), self.applied)

    async def _apply_checkpoint(self, records: list[Record]) -> None:
        await self.guest.apply_checkpoint(records)
        if self._first:
            await self.devices.setup()
            self._first = False
        await self.devices.preresume()

    @_machine.output()
    def _resume(self) -> None:
        self.run_step(self._resume_guest, self.resumed)

    async def _resume_guest(self) -> None:
        self._send(CheckpointState(CheckpointId.SVM_READY))
        await self.guest.resume()
        self._send(CheckpointState(CheckpointId.SVM_RESUMED))
        await self.devices.commit()

    @_machine.output()
    def _checkpoint_done(self) -> None:
        self.checkpoints += 1
        if self.checkpoints == 1:
            self.log.info("domain {domain}: standing by: first checkpoint applied", domain=self.domain.name)
        self.publish()

    @_machine.output()
    def _suspend(self) -> None:
        self.run_step(self._suspend_guest, self.suspended)

    async def _suspend_guest(self) -> None:
        await self.guest.suspend()
        await self.devices.postsuspend()
        self._send(CheckpointState(CheckpointId.SVM_SUSPENDED))
        self._send(await self.guest.dirty_pfn_list())

    @_machine.output()
    def _forget_primary(self, reason: Failure) -> None:
        self.log.warn("domain {domain}: the primary left before a checkpoint was complete ({why}); "
                      "nothing to take over, waiting for a primary", domain=self.domain.name,
                      why=describe(reason))
        self.new_epoch()
        self.publish()

    @_machine.output()
    def _take_over(self, reason: Failure) -> None:
        self.error = f"primary lost: {describe(reason)}"
        self.log.error("domain {domain}: {error}; taking over from checkpoint {n}",
                       domain=self.domain.name, error=self.error, n=self.checkpoints)
        self._leave(None)
        self.run_step(self._failover, self.taken_over)

    async def _failover(self) -> None:
        await self.devices.failover()
        await self.guest.take_over()

    @_machine.output()
    def _report_primary(self) -> None:
        self.role = "primary"
        self.log.warn("domain {domain}: FAILOVER done: this node is now the primary, UNPROTECTED; "
                      "the guest runs from checkpoint {n}", domain=self.domain.name, n=self.checkpoints)
        self.publish(failed_over=True)

    @_machine.output()
    def _report_failover_failed(self, reason: Failure) -> None:
        self.error = f"{self.error}; taking over failed: {reason.getErrorMessage()}"
        self.log.error("domain {domain}: {error}", domain=self.domain.name, error=self.error)
        self.publish()

    @_machine.output()
    def _end_replication(self, reason: Failure) -> None:
        self.error = f"replication ended: {describe(reason)}"
        self.log.error("domain {domain}: {error}; not taking over", domain=self.domain.name, error=self.error)
        self._leave(None)
        self.run_step(self.devices.teardown, self.torn_down)

    @_machine.output()
    def _give_up(self, reason: Failure) -> None:
        self.error = f"replication failed here: {reason.getErrorMessage()}"
        self.log.error("domain {domain}: {error}; not taking over", domain=self.domain.name, error=self.error)
        self._leave(ReplicationEndReason.LOCAL_FAILURE)
        self.run_step(self.devices.teardown, self.torn_down)

    @_machine.output()
    def _qemu_gone(self, reason: str) -> None:
        self.error = f"this node's QEMU is gone: {reason}"
        self.log.error("domain {domain}: {error}; replication ends", domain=self.domain.name,
                       error=self.error)
        self._leave(ReplicationEndReason.LOCAL_FAILURE)

    @_machine.output()
    def _teardown_failed(self, reason: Failure) -> None:
        self.cleanup_failed("tearing replication down", reason)

    @_machine.output()
    def _report_ended(self) -> None:
        self.publish()

    @_machine.output()
    def _stop(self) -> None:
        """Tell the primary, which drops this node and keeps its guest; undo replication here."""
        self.error = "colod stopped"
        self.log.info("domain {domain}: colod is stopping: replication ends", domain=self.domain.name)
        self._leave(ReplicationEndReason.SHUTDOWN)
        self.run_step(self.devices.teardown, self.torn_down)

    @_machine.output()
    def _stop_waiting(self) -> None:
        self.error = "colod stopped"
        self._leave(ReplicationEndReason.SHUTDOWN)

    # -- transitions -----------------------------------------------------------

    waiting_for_primary.upon(link_ready, enter=receiving_first_checkpoint, outputs=[])
    receiving_first_checkpoint.upon(stream_record, enter=receiving_first_checkpoint, outputs=[_buffer_record])
    receiving_first_checkpoint.upon(checkpoint_end, enter=applying, outputs=[_apply])
    receiving_first_checkpoint.upon(primary_lost, enter=waiting_for_primary, outputs=[_forget_primary])
    receiving_first_checkpoint.upon(replication_ended, enter=waiting_for_primary, outputs=[_forget_primary])
    applying.upon(applied, enter=resuming, outputs=[_resume])
    resuming.upon(resumed, enter=running, outputs=[_checkpoint_done])
    running.upon(new_checkpoint, enter=suspending, outputs=[_suspend])
    suspending.upon(suspended, enter=receiving_checkpoint, outputs=[])
    receiving_checkpoint.upon(stream_record, enter=receiving_checkpoint, outputs=[_buffer_record])
    receiving_checkpoint.upon(checkpoint_end, enter=applying, outputs=[_apply])

    for _state in (applying, resuming, running, suspending, receiving_checkpoint):
        _state.upon(stop, enter=ending, outputs=[_stop])
        _state.upon(primary_lost, enter=failing_over, outputs=[_take_over])
        _state.upon(replication_ended, enter=ending, outputs=[_end_replication])
        _state.upon(step_failed, enter=ending, outputs=[_give_up])
        _state.upon(qemu_lost, enter=ended, outputs=[_qemu_gone])
    del _state
    for _state in (waiting_for_primary, receiving_first_checkpoint):
        _state.upon(qemu_lost, enter=ended, outputs=[_qemu_gone])
        _state.upon(stop, enter=ended, outputs=[_stop_waiting])
    del _state

    failing_over.upon(taken_over, enter=primary_unprotected, outputs=[_report_primary])
    failing_over.upon(step_failed, enter=failover_failed, outputs=[_report_failover_failed])
    ending.upon(torn_down, enter=ended, outputs=[_report_ended])
    ending.upon(step_failed, enter=ended, outputs=[_teardown_failed, _report_ended])
    for _state in (failing_over, primary_unprotected, failover_failed, ending, ended):
        _state.upon(primary_lost, enter=_state, outputs=[])
        _state.upon(replication_ended, enter=_state, outputs=[])
        _state.upon(qemu_lost, enter=_state, outputs=[])
        _state.upon(stop, enter=_state, outputs=[])
    del _state

    # -- helpers ---------------------------------------------------------------

    def recordReceived(self, link: PeerLink, record: Record) -> None:
        """Refuse a record the checkpoint cannot hold as it arrives, before it waits in the inbox."""
        if link is self.link:
            try:
                self._buffer.arrived(record)
            except ProtocolViolation as error:
                self.violation(error)
                return
        super().recordReceived(link, record)

    def new_epoch(self) -> None:
        super().new_epoch()
        self._buffer.drop()

    def record_input(self, record: Record) -> bool:
        self._buffer.delivered(record)
        if isinstance(record, CheckpointEnd):
            self.checkpoint_end()
        elif isinstance(record, CheckpointState):
            if record.id is not CheckpointId.NEW:
                return False
            self.new_checkpoint()
        elif isinstance(record, LibxcEnd | End):
            return False
        else:
            self.stream_record(record)
        return True

    def lost(self, reason: Failure) -> None:
        if reason.check(*_NO_TAKEOVER):
            self.replication_ended(reason)
        else:
            self.primary_lost(reason)

    def _send(self, record: Record) -> None:
        if self.link is None:
            raise ConnectionError("the link to the primary is gone")
        self.link.sendRecord(record)

    def _leave(self, code: ReplicationEndReason | None) -> None:
        """Forget the primary: tell it why if the link is still up (code), and start a new epoch."""
        link, self.link = self.link, None
        if link is not None:
            if code is None:
                link.close()
            else:
                link.end(code, self.error or "")
        self.new_epoch()
        self.publish()
