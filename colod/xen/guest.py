# -*- test-case-name: tests.xen.test_guest -*-
"""
The guest engines for a real Xen domain: its memory and vCPUs moved by Xen's
own save helper on the primary, restored by Xen's own Remus receiver on the
secondary (docs/xen.md says why this route).

Primary.  libxl-save-helper drives a save: it copies the guest live (colod
sends that copy on as it comes, L{XenPrimaryGuest.copy_live}), then at
every checkpoint asks its toolstack to suspend the guest, writes the dirty
pages and the vCPU and platform state, asks to resume it, and asks whether to
go on.  colod's engine drives checkpoints instead (its interval, its
requests, its peer), so L{XenPrimaryGuest} holds each of the helper's
questions until the engine gets there: the checkpoint question until the
engine wants the next checkpoint (L{suspend}), the suspend question until
then too, the resume question until the secondary is ready (L{resume}).  The
helper's stream comes through a pipe, checked and cut into checkpoints
(L{HelperStream}); the engine sends each one itself, on its peer link.

Secondary.  L{XenSecondaryGuest} starts ``xl migrate-receive -r -e`` at the
first checkpoint and writes it every complete checkpoint (after
CHECKPOINT_END: nothing of a checkpoint cut short reaches Xen); its copy of
the guest stays paused (checkpoint mode, as Remus).  Taking over ends the
receiver's input: Xen fails over to the last checkpoint and runs the guest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from colod.guest.interfaces import IPrimaryGuest, ISecondaryGuest
from colod.protocol import (
    Channel,
    CheckpointDirtyPfnList,
    Checkpointed,
    CheckpointEnd,
    EmulatorContext,
    Encoder,
    Record,
    StreamError,
)
from colod.xen.domain import XenDomain
from colod.xen.helper_messages import StreamType
from colod.xen.helper_stream import HelperStream
from colod.xen.receiver import Receiver, ReceiverError
from colod.xen.save_helper import (
    HELPER_BINARY,
    HelperCommand,
    HelperResult,
    HelperTimeouts,
    ISaveCallbacks,
    run_helper,
)

#: Seconds between two looks for the end of a checkpoint on the stream's pipe.
STREAM_POLL_INTERVAL = 0.001
#: The save callbacks' replies (xen-colo-protocol.md §11.2).
GO_ON = 1
STOP = 0
LOGDIRTY_DONE = 0


class XenGuestError(Exception):
    """The save helper or the receiver failed, or did not get to a step in time."""


class _Questions:
    """Where the helper's questions wait for colod's answers, and colod waits for the questions."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._asked: dict[str, Deferred[int]] = {}
        self._awaited: dict[str, Deferred[None]] = {}
        self._standing: dict[str, int] = {}
        self.ended: Failure | None = None

    def ask(self, name: str) -> Deferred[int]:
        """The helper asks ``name``; the Deferred is its answer."""
        if name in self._standing:
            return succeed(self._standing[name])
        answer: Deferred[int] = Deferred()
        self._asked[name] = answer
        if name in self._awaited:
            self._awaited.pop(name).callback(None)
        return answer

    def asked(self, name: str, timeout: float) -> Deferred[None]:
        """Fires once the helper has asked ``name``; fails if it ends first, or not in time."""
        if name in self._asked:
            return succeed(None)
        if self.ended is not None:
            return fail(self.ended)
        waiting: Deferred[None] = Deferred()
        self._awaited[name] = waiting
        return waiting.addTimeout(timeout, self._clock, onTimeoutCancel=self._late(name))

    def answer(self, name: str, value: int) -> None:
        self._asked.pop(name).callback(value)

    def answer_when_asked(self, name: str, value: int) -> None:
        """Answer ``name`` with ``value`` now if it is asked, and whenever it is asked again."""
        self._standing[name] = value
        if name in self._asked:
            self.answer(name, value)

    def end(self, reason: Failure) -> None:
        """The helper is gone: nothing it was to ask will be asked."""
        self.ended = reason
        awaited, self._awaited = self._awaited, {}
        for waiting in awaited.values():
            waiting.errback(reason)

    @staticmethod
    def _late(name: str) -> Callable[[Failure | None, float], Failure | None]:
        def late(result: Failure | None, timeout: float) -> Failure | None:
            raise XenGuestError(f"the save helper did not ask for {name} within {timeout:g} s")
        return late


@implementer(ISaveCallbacks)
class _Callbacks:
    """The helper's side of the questions (libxl's callbacks for a Remus save)."""

    def __init__(self, questions: _Questions, domain: XenDomain) -> None:
        self._questions = questions
        self._domain = domain

    def suspend(self) -> Deferred[int]:
        return self._questions.ask("suspend")

    def postcopy(self) -> Deferred[int]:
        return self._questions.ask("postcopy")

    def checkpoint(self) -> Deferred[int]:
        return self._questions.ask("checkpoint")

    def wait_checkpoint(self) -> int:
        raise XenGuestError("the save helper asked wait_checkpoint, a COLO save's question, in a Remus save")

    def switch_qemu_logdirty(self, domid: int, enable: int) -> Deferred[int]:
        return Deferred.fromCoroutine(self._switch_logdirty(bool(enable)))

    async def _switch_logdirty(self, enable: bool) -> int:
        await self._domain.set_log_dirty(enable)
        return LOGDIRTY_DONE


class _SaveRun:
    """One run of the save helper, from a first checkpoint until it ends: its questions, its stream."""

    def __init__(self, reactor: IReactorProcess, domain: XenDomain, binary: str,
                 timeouts: HelperTimeouts) -> None:
        self.questions = _Questions(IReactorTime(reactor))
        self.stream = HelperStream()
        #: Why the stream became unreadable: no checkpoint comes after it.
        self.stream_error: StreamError | None = None
        #: No checkpoint question comes before the first suspend.
        self.first = True
        command = HelperCommand.save(domid=domain.domid, stream_type=StreamType.REMUS)
        self.result = run_helper(reactor, command, _Callbacks(self.questions, domain),
                                 stream_sink=self._receive, binary=binary, timeouts=timeouts)
        self.result.addBoth(self._ended)

    def _receive(self, data: bytes) -> None:
        if self.stream_error is not None:
            return
        try:
            self.stream.receive_data(data)
        except StreamError as error:
            self.stream_error = error

    def _ended(self, result: HelperResult | Failure) -> HelperResult | Failure:
        reason = result if isinstance(result, Failure) else Failure(
            XenGuestError("the save helper ended (it was told to stop)"))
        self.questions.end(reason)
        return result


@implementer(IPrimaryGuest)
class XenPrimaryGuest:
    """A running Xen domain on the primary, saved checkpoint by checkpoint through the save helper."""

    log = Logger()

    def __init__(self, domain: XenDomain, reactor: IReactorProcess, *, timeout: float,
                 binary: str = HELPER_BINARY, helper_timeouts: HelperTimeouts | None = None) -> None:
        self._domain = domain
        self._reactor = reactor
        self._clock = IReactorTime(reactor)
        #: The longest wait for the helper to get to a question; the first copy of the guest's memory
        #: happens before its first suspend, so this must cover that copy.
        self._timeout = timeout
        self._binary = binary
        self._helper_timeouts = helper_timeouts or HelperTimeouts(callback=timeout)
        #: The helper's run, from a first checkpoint until detach.
        self._save: _SaveRun | None = None
        #: Seconds spent copying pages: the helper copies them, outside colod.
        self.copy_seconds = 0.0
        self.description = f"Xen domain {domain.domid} (save helper {binary}; checkpoint mode)"

    # --- IPrimaryGuest -----------------------------------------------------------

    def suspend(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._suspend())

    def resume(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._resume())

    async def _suspend(self) -> None:
        save = self._running()
        if not save.first:
            await save.questions.asked("checkpoint", self._timeout)
            save.questions.answer("checkpoint", GO_ON)
        save.first = False
        await save.questions.asked("suspend", self._timeout)
        await self._domain.suspend()
        save.questions.answer("suspend", GO_ON)

    async def _resume(self) -> None:
        save = self._save
        if save is None:  # detached: no helper waits for this resume
            await self._domain.resume()
            return
        await save.questions.asked("postcopy", self._timeout)
        await self._domain.resume()
        save.questions.answer("postcopy", GO_ON)

    def copy_live(self, send: Callable[[Record], None]) -> Deferred[None]:
        return Deferred.fromCoroutine(self._copy_live(send))

    def first_records(self) -> Deferred[Sequence[Record]]:
        return Deferred.fromCoroutine(self._checkpoint_records())

    def checkpoint_records(self, secondary_dirty: CheckpointDirtyPfnList) -> Deferred[Sequence[Record]]:
        if secondary_dirty.pfns:
            raise XenGuestError(f"the secondary reports {len(secondary_dirty.pfns)} dirty pages, but its "
                                "copy of a Xen guest does not run between checkpoints")
        return Deferred.fromCoroutine(self._checkpoint_records())

    def emulator_records(self) -> Deferred[Sequence[Record]]:
        return succeed([EmulatorContext(blob=self._domain.device_state())])

    def halt(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._domain.pause())

    def detach(self) -> Deferred[None]:
        """No more checkpoints: the helper is told to stop at its next question, whichever it is,
        and has ended when this fires.  A guest it suspended is still suspended then, so libxc
        ended log-dirty tracking before the guest runs again (libxl's order: the save ends, then
        the guest resumes); a later first checkpoint starts a new helper."""
        return Deferred.fromCoroutine(self._detach())

    def close(self) -> Deferred[None]:
        """colod stops: as detach."""
        return self.detach()

    # --- internals --------------------------------------------------------------

    def _running(self) -> _SaveRun:
        if self._save is None:
            raise XenGuestError("the save helper is not running: a first checkpoint begins with copy_live")
        return self._save

    async def _detach(self) -> None:
        save = self._save
        if save is None:
            return
        for question in ("suspend", "postcopy", "checkpoint"):
            save.questions.answer_when_asked(question, STOP)
        try:
            await save.result
        except Exception as error:  # noqa: BLE001 - told to stop, libxc reports a failed save
            self.log.info("the save helper for domain {domid} ended when told to stop: {error}",
                          domid=self._domain.domid, error=error)
        finally:
            self._save = None

    async def _copy_live(self, send: Callable[[Record], None]) -> None:
        """Start a helper (what an earlier one left is forgotten); pass its records on until it asks
        to suspend the guest (records it wrote just before asking may still be on the pipe: they
        wait for L{first_records})."""
        save = self._save = _SaveRun(self._reactor, self._domain, self._binary, self._helper_timeouts)
        save.stream.live = send
        try:
            await save.questions.asked("suspend", self._timeout)
        finally:
            save.stream.live = None

    async def _checkpoint_records(self) -> Sequence[Record]:
        """The helper's records of this checkpoint: its CHECKPOINT record came before its
        question, but on the stream's pipe, which the reactor may not have read yet."""
        save = self._running()
        await save.questions.asked("postcopy", self._timeout)
        while (records := save.stream.next_checkpoint()) is None:
            if save.stream_error is not None:
                raise XenGuestError(f"the save helper's stream: {save.stream_error}")
            if save.questions.ended is not None:
                raise XenGuestError("the save helper ended without a complete checkpoint")
            await deferLater(self._clock, STREAM_POLL_INTERVAL, lambda: None)
        return records


@implementer(ISecondaryGuest)
class XenSecondaryGuest:
    """The secondary's copy of a Xen domain, kept by Xen's own Remus receiver."""

    log = Logger()

    def __init__(self, reactor: IReactorProcess, receive_command: Sequence[str], xl_config: bytes, *,
                 timeout: float) -> None:
        self._reactor = reactor
        self._command = list(receive_command)
        self._config = xl_config
        self._timeout = timeout
        self._clock = IReactorTime(reactor)
        self._receiver: Receiver | None = None
        self._encoder = Encoder(Channel.MAIN, Checkpointed.REMUS)
        self.copy_seconds = 0.0
        #: Unknown: a Xen guest's pfns run past its memory size (holes, special pages at the top).
        self.memory_pages: int | None = None
        self.description = f"Xen's Remus receiver ({' '.join(self._command)}; checkpoint mode)"

    # --- ISecondaryGuest ---------------------------------------------------------

    def suspend(self) -> Deferred[None]:
        return succeed(None)  # the copy stays paused between checkpoints

    def resume(self) -> Deferred[None]:
        return succeed(None)

    def dirty_pfn_list(self) -> Deferred[CheckpointDirtyPfnList]:
        return succeed(CheckpointDirtyPfnList())

    def apply_checkpoint(self, records: Sequence[Record]) -> Deferred[None]:
        return Deferred.fromCoroutine(self._apply(records))

    def take_over(self) -> Deferred[None]:
        if self._receiver is None:
            raise XenGuestError("no checkpoint was ever applied: nothing to take over")
        return self._receiver.fail_over(self._timeout).addErrback(self._failed_over)

    def close(self) -> Deferred[None]:
        """Replication ends without a takeover: the receiver and its paused copy go."""
        return self._receiver.stop() if self._receiver is not None else succeed(None)

    # --- internals --------------------------------------------------------------

    async def _apply(self, records: Sequence[Record]) -> None:
        if self._receiver is None:
            self._receiver = Receiver.start(self._reactor, self._command, self._config, self._timeout)
            await self._receiver.ready
        began, sent = self._clock.seconds(), 0
        for record in (*records, CheckpointEnd()):
            data = b"".join(self._encoder.send_buffers(record))
            self._receiver.send(data)
            sent += len(data)
            await self._receiver.writable()
        self.log.debug("{size} bytes of a checkpoint to the receiver in {seconds:.3f} s", size=sent,
                       seconds=self._clock.seconds() - began)

    @staticmethod
    def _failed_over(failure: Failure) -> None:
        failure.trap(ReceiverError)
        raise XenGuestError(f"taking over failed: {failure.getErrorMessage()}")

