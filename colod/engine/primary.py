# -*- test-case-name: tests.engine.test_engines -*-
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
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from automat import MethodicalMachine
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from colod.config import DomainConfig
from colod.devices import DeviceGroup
from colod.engine.core import EngineCore, describe
from colod.engine.status import Pause, StatusFile
from colod.guest.interfaces import IGuestEngine
from colod.protocol import (
    Checkpoint,
    CheckpointDirtyPfnList,
    CheckpointEnd,
    CheckpointId,
    CheckpointState,
    LibxcContext,
    Record,
    ReplicationEndReason,
)
from colod.qmp import QMPConnection

_BACK_CHANNEL_INPUTS = {
    CheckpointId.SVM_SUSPENDED: "svm_suspended",
    CheckpointId.SVM_READY: "svm_ready",
    CheckpointId.SVM_RESUMED: "svm_resumed",
}


_PROTECTED = frozenset({
    "protected", "suspending", "awaiting_svm_suspended", "awaiting_dirty_pfns", "sending_checkpoint",
    "awaiting_svm_ready", "resuming", "awaiting_svm_resumed"})


class CheckpointOverdue(Exception):
    """A checkpoint took longer than the checkpoint timeout: the secondary hangs."""


class CheckpointRefused(Exception):
    """A requested checkpoint cannot happen: the domain is not protected."""


class PrimaryEngine(EngineCore):
    """Checkpoints one domain's guest to the secondary until one of them is gone."""

    role = "primary"
    _machine = MethodicalMachine()
    setTrace = _machine._setTrace

    def __init__(self, domain: DomainConfig, node: str, guest: IGuestEngine, devices: DeviceGroup,
                 clock: IReactorTime, status: StatusFile, qmp: QMPConnection, *, interval: float,
                 checkpoint_timeout: float) -> None:
        super().__init__(domain, node, guest, devices, clock, status, qmp)
        self.interval = interval
        #: The longest a checkpoint may take, NEW to SVM_RESUMED: a secondary that
        #: heartbeats but never answers must not keep the guest suspended.
        self.checkpoint_timeout = checkpoint_timeout
        self._overdue: IDelayedCall | None = None
        self._timer: IDelayedCall | None = None
        self._requested: list[Deferred[int]] = []
        self._in_flight: list[Deferred[int]] = []
        self._first = True
        self._suspended = False
        self._secondary_dirty = CheckpointDirtyPfnList()
        self._emulator: Sequence[Record] = ()
        self._pause_began = (0.0, 0.0, 0.0)
        self.state = "waiting_for_secondary"

    # -- API -------------------------------------------------------------------

    def request_checkpoint(self) -> Deferred[int]:
        """A checkpoint that begins after now; fires with its number once it is complete.

        For whoever knows the guest's outputs diverged (the network provider,
        the control socket).  Fails with CheckpointRefused once the secondary
        is gone.
        """
        d: Deferred[int] = Deferred()
        if self.state in ("dropping_secondary", "unprotected", "guest_lost", "stopped"):
            d.errback(CheckpointRefused(f"domain {self.domain.name} is not protected ({self.state})"))
            return d
        self._requested.append(d)
        if self.state == "protected":
            self.checkpoint_due()
        return d

    @property
    def is_protected(self) -> bool:
        return self.checkpoints > 0 and self.state in _PROTECTED

    # -- states ----------------------------------------------------------------

    @_machine.state(initial=True)
    def waiting_for_secondary(self) -> None:
        """No secondary yet: the guest runs unprotected."""

    @_machine.state()
    def sending_first_copy(self) -> None:
        """All of the guest goes to the secondary (the first round): what can be copied while it
        runs, then the rest with the guest suspended."""

    @_machine.state()
    def awaiting_svm_ready(self) -> None:
        """The checkpoint is sent; the secondary is applying it."""

    @_machine.state()
    def resuming(self) -> None:
        """Devices preresume (first: start replication), then the guest resumes."""

    @_machine.state()
    def awaiting_svm_resumed(self) -> None:
        """The guest runs again; the secondary confirms its side."""

    @_machine.state()
    def protected(self) -> None:
        """Between checkpoints: the guest runs, protected up to the last checkpoint."""

    @_machine.state()
    def suspending(self) -> None:
        """NEW is sent; the guest is being suspended and the devices checked."""

    @_machine.state()
    def awaiting_svm_suspended(self) -> None:
        """Waiting for the secondary to suspend its side."""

    @_machine.state()
    def awaiting_dirty_pfns(self) -> None:
        """Waiting for the pages the secondary's guest dirtied."""

    @_machine.state()
    def sending_checkpoint(self) -> None:
        """Pages, CHECKPOINT, device state and CHECKPOINT_END are going out."""

    @_machine.state()
    def dropping_secondary(self) -> None:
        """The secondary is gone: replication is detached and the guest resumes."""

    @_machine.state()
    def unprotected(self) -> None:
        """The guest runs without a secondary."""

    @_machine.state()
    def guest_lost(self) -> None:
        """The guest's QEMU is gone: there is nothing left to protect."""

    @_machine.state()
    def stopping(self) -> None:
        """colod is stopping: the secondary is told, replication detached, the guest kept running."""

    @_machine.state()
    def stopped(self) -> None:
        """colod has stopped protecting the domain; the guest runs on."""

    # -- inputs ----------------------------------------------------------------

    @_machine.input()
    def link_ready(self) -> None:
        """The secondary is linked."""

    @_machine.input()
    def first_copy_sent(self) -> None:
        """The first round's checkpoint is written."""

    @_machine.input()
    def svm_ready(self) -> None:
        """CHECKPOINT_STATE(SVM_READY) arrived."""

    @_machine.input()
    def resumed(self) -> None:
        """The guest runs again."""

    @_machine.input()
    def svm_resumed(self) -> None:
        """CHECKPOINT_STATE(SVM_RESUMED) arrived."""

    @_machine.input()
    def checkpoint_due(self) -> None:
        """The interval passed, or a checkpoint was requested."""

    @_machine.input()
    def suspended(self) -> None:
        """The guest is suspended and the devices were checked."""

    @_machine.input()
    def svm_suspended(self) -> None:
        """CHECKPOINT_STATE(SVM_SUSPENDED) arrived."""

    @_machine.input()
    def dirty_pfn_list(self, record: CheckpointDirtyPfnList) -> None:
        """CHECKPOINT_DIRTY_PFN_LIST arrived."""

    @_machine.input()
    def checkpoint_sent(self) -> None:
        """A later round's checkpoint is written."""

    @_machine.input()
    def secondary_lost(self, reason: Failure) -> None:
        """The link ended, the secondary went silent, ended replication or broke the protocol."""

    @_machine.input()
    def step_failed(self, reason: Failure) -> None:
        """A local step failed (a QMP call, a device, the guest)."""

    @_machine.input()
    def dropped(self) -> None:
        """Replication is detached and the guest runs."""

    @_machine.input()
    def qemu_lost(self, reason: str) -> None:
        """The QMP connection to the guest's QEMU is gone."""

    @_machine.input()
    def stop(self) -> None:
        """colod is stopping."""

    @_machine.input()
    def stop_done(self) -> None:
        """The stop's cleanup finished."""

    # -- outputs ---------------------------------------------------------------

    @_machine.output()
    def _send_first_copy(self) -> None:
        self.log.info("domain {domain}: first checkpoint: copying the guest while it runs, then "
                      "suspending it and sending the rest", domain=self.domain.name)
        self.run_step(self._first_copy, self.first_copy_sent)

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

    @_machine.output()
    def _resume_guest(self) -> None:
        self.run_step(self._resume, self.resumed)

    async def _resume(self) -> None:
        if self._first:
            await self.devices.setup()
            self._first = False
        await self.devices.preresume()
        await self.guest.resume()
        self._suspended = False
        self._end_pause()
        await self.devices.commit()

    @_machine.output()
    def _checkpoint_done(self) -> None:
        if self._overdue is not None and self._overdue.active():
            self._overdue.cancel()
        self._overdue = None
        self.checkpoints += 1
        if self.checkpoints == 1:
            self.log.info("domain {domain}: protected: first checkpoint complete", domain=self.domain.name)
        self.publish()
        self._timer = self.clock.callLater(0 if self._requested else self.interval, self.checkpoint_due)
        # Last: a waiter may ask for the next checkpoint right away.
        done, self._in_flight = self._in_flight, []
        for d in done:
            d.callback(self.checkpoints)

    @_machine.output()
    def _begin_checkpoint(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._in_flight, self._requested = self._requested, []
        self._begin_pause()
        self.link.sendRecord(CheckpointState(CheckpointId.NEW))  # type: ignore[union-attr]
        self.run_step(self._suspend, self.suspended)

    async def _suspend(self) -> None:
        await self._suspend_guest()
        await self.devices.postsuspend()

    @_machine.output()
    def _keep_dirty_pfns(self, record: CheckpointDirtyPfnList) -> None:
        self._secondary_dirty = record

    @_machine.output()
    def _send_checkpoint(self) -> None:
        self.run_step(self._checkpoint, self.checkpoint_sent)

    async def _checkpoint(self) -> None:
        records = await self.guest.checkpoint_records(self._secondary_dirty)
        await self._send_checkpoint_records(records)

    @_machine.output()
    def _drop_secondary(self, reason: Failure) -> None:
        self._end(f"replication ended: {describe(reason)}", ReplicationEndReason.PROTOCOL_ERROR)
        self.run_step(self._drop, self.dropped)

    @_machine.output()
    def _give_up(self, reason: Failure) -> None:
        self._end(f"replication failed here: {reason.getErrorMessage()}", ReplicationEndReason.LOCAL_FAILURE)
        self.run_step(self._drop, self.dropped)

    async def _drop(self) -> None:
        try:
            await self.devices.drop_secondary()
        finally:
            await self._resume_if_suspended()

    @_machine.output()
    def _drop_failed(self, reason: Failure) -> None:
        self.cleanup_failed("detaching the secondary's replication", reason)

    @_machine.output()
    def _stop_failed(self, reason: Failure) -> None:
        self.cleanup_failed("detaching replication at stop", reason)

    @_machine.output()
    def _report_unprotected(self) -> None:
        self.log.warn("domain {domain}: running UNPROTECTED after {n} checkpoints: {why}",
                      domain=self.domain.name, n=self.checkpoints, why=self.error)
        self.publish()

    @_machine.output()
    def _abandon(self, reason: str) -> None:
        """The guest is gone: close the link so that the secondary takes over at once."""
        self.error = f"the guest's QEMU is gone: {reason}"
        self.log.error("domain {domain}: {error}; closing the link so that the secondary takes over",
                       domain=self.domain.name, error=self.error)
        self._cancel()
        link, self.link = self.link, None
        if link is not None:
            link.close()
        self.new_epoch()
        self.publish()

    @_machine.output()
    def _ignore_loss(self, reason: Failure) -> None:
        self.log.info("domain {domain}: (already unprotected) {why}", domain=self.domain.name,
                      why=describe(reason))

    @_machine.output()
    def _begin_stop(self) -> None:
        self.error = "colod stopped; the guest runs on unprotected"
        link, self.link = self.link, None
        if link is not None:
            link.end(ReplicationEndReason.SHUTDOWN, "colod on the primary is stopping; its guest runs on")
        self._cancel()
        self.new_epoch()
        self.run_step(self._stop_cleanup, self.stop_done)

    async def _stop_cleanup(self) -> None:
        try:
            await self.devices.teardown()
        finally:
            await self._resume_if_suspended()

    async def _resume_if_suspended(self) -> None:
        """Whatever else failed, a guest this engine suspended runs again."""
        if self._suspended:
            await self.guest.resume()
            self._suspended = False

    @_machine.output()
    def _stopped(self) -> None:
        self.publish()

    # -- transitions -----------------------------------------------------------

    waiting_for_secondary.upon(link_ready, enter=sending_first_copy, outputs=[_send_first_copy])
    sending_first_copy.upon(first_copy_sent, enter=awaiting_svm_ready, outputs=[])
    awaiting_svm_ready.upon(svm_ready, enter=resuming, outputs=[_resume_guest])
    resuming.upon(resumed, enter=awaiting_svm_resumed, outputs=[])
    awaiting_svm_resumed.upon(svm_resumed, enter=protected, outputs=[_checkpoint_done])
    protected.upon(checkpoint_due, enter=suspending, outputs=[_begin_checkpoint])
    suspending.upon(suspended, enter=awaiting_svm_suspended, outputs=[])
    awaiting_svm_suspended.upon(svm_suspended, enter=awaiting_dirty_pfns, outputs=[])
    awaiting_dirty_pfns.upon(dirty_pfn_list, enter=sending_checkpoint,
                             outputs=[_keep_dirty_pfns, _send_checkpoint])
    sending_checkpoint.upon(checkpoint_sent, enter=awaiting_svm_ready, outputs=[])

    for _state in (sending_first_copy, awaiting_svm_ready, resuming, awaiting_svm_resumed, protected,
                   suspending, awaiting_svm_suspended, awaiting_dirty_pfns, sending_checkpoint):
        _state.upon(secondary_lost, enter=dropping_secondary, outputs=[_drop_secondary])
        _state.upon(step_failed, enter=dropping_secondary, outputs=[_give_up])
        _state.upon(qemu_lost, enter=guest_lost, outputs=[_abandon])
        _state.upon(stop, enter=stopping, outputs=[_begin_stop])

    dropping_secondary.upon(dropped, enter=unprotected, outputs=[_report_unprotected])
    dropping_secondary.upon(step_failed, enter=unprotected, outputs=[_drop_failed, _report_unprotected])
    for _state in (dropping_secondary, unprotected):
        _state.upon(secondary_lost, enter=_state, outputs=[_ignore_loss])
        _state.upon(qemu_lost, enter=guest_lost, outputs=[_abandon])
        _state.upon(stop, enter=stopping, outputs=[_begin_stop])
    del _state
    waiting_for_secondary.upon(qemu_lost, enter=guest_lost, outputs=[_abandon])
    waiting_for_secondary.upon(stop, enter=stopping, outputs=[_begin_stop])
    guest_lost.upon(secondary_lost, enter=guest_lost, outputs=[])
    guest_lost.upon(qemu_lost, enter=guest_lost, outputs=[])
    guest_lost.upon(stop, enter=stopped, outputs=[_stopped])
    stopping.upon(stop_done, enter=stopped, outputs=[_stopped])
    stopping.upon(step_failed, enter=stopped, outputs=[_stop_failed, _stopped])
    stopping.upon(secondary_lost, enter=stopping, outputs=[])
    stopping.upon(qemu_lost, enter=stopping, outputs=[])

    # -- helpers ---------------------------------------------------------------

    def record_input(self, record: Record) -> bool:
        if isinstance(record, CheckpointDirtyPfnList):
            self.dirty_pfn_list(record)
        elif isinstance(record, CheckpointState) and record.id in _BACK_CHANNEL_INPUTS:
            getattr(self, _BACK_CHANNEL_INPUTS[record.id])()
        else:
            return False
        return True

    def lost(self, reason: Failure) -> None:
        self.secondary_lost(reason)

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
        for record in (*records, Checkpoint(), *self._emulator, CheckpointEnd()):
            link.sendRecord(record)

    def _begin_pause(self) -> None:
        self._pause_began = (time.perf_counter(), self.qmp.busy_seconds, self.guest.copy_seconds)
        self._overdue = self.clock.callLater(self.checkpoint_timeout, self._checkpoint_overdue)

    def _checkpoint_overdue(self) -> None:
        self._overdue = None
        self.secondary_lost(Failure(CheckpointOverdue(
            f"checkpoint {self.checkpoints + 1} not complete after {self.checkpoint_timeout:g} s")))

    def _end_pause(self) -> None:
        began, qmp, copy = self._pause_began
        self.pauses.add(Pause(time.perf_counter() - began, self.qmp.busy_seconds - qmp,
                              self.guest.copy_seconds - copy))

    def _end(self, error: str, code: ReplicationEndReason) -> None:
        """Leave the protected states: stop the clock, tell the secondary (if it can hear), forget it."""
        self.error = error
        self.log.error("domain {domain}: {error}", domain=self.domain.name, error=self.error)
        self._cancel()
        link, self.link = self.link, None
        if link is not None:
            link.end(code, self.error)
        self.new_epoch()

    def _cancel(self) -> None:
        if self._overdue is not None and self._overdue.active():
            self._overdue.cancel()
        self._overdue = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        waiting, self._requested, self._in_flight = self._requested + self._in_flight, [], []
        for d in waiting:
            d.errback(CheckpointRefused(f"domain {self.domain.name}: {self.error}"))
