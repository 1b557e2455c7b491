# -*- test-case-name: tests.xen.test_remus -*-
"""
Checkpoint a running Xen domain as ``xl remus`` does, with colod's parts.

libxl's Remus save (libxl_remus.c, libxl_dom_save.c) runs the save helper
with the Remus stream type and answers its callbacks: suspend the guest,
resume it after its dirty pages are out, and in the checkpoint callback
write the device model's state and CHECKPOINT_END, wait for the interval and
say whether to go on.  L{RemusSender} does the same with colod's helper
driver, its domain control (L{colod.xen.domain}) and its codec: the helper's
libxc bytes are read from a pipe and checked (L{HelperStream}), and every
checkpoint goes to ``send`` whole, as one libxl Remus stream (the one
``xl migrate-receive -r`` reads, L{colod.xen.receiver}).

This is the Xen half of the primary's guest engine, proven on real Xen in
the lab; the engine puts colod's peer link between it and the secondary's
receiver.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from colod.protocol import (
    Channel,
    Checkpoint,
    Checkpointed,
    CheckpointEnd,
    EmulatorContext,
    Encoder,
    LibxcContext,
    Record,
    StreamHeader,
)
from colod.xen.domain import XenDomain
from colod.xen.helper_messages import StreamType
from colod.xen.helper_stream import HelperStream
from colod.xen.save_helper import (
    HELPER_BINARY,
    HelperCommand,
    HelperResult,
    HelperTimeouts,
    ISaveCallbacks,
    run_helper,
)

#: Seconds between two looks for a checkpoint's last bytes, which come on another pipe than the callback.
POLL_INTERVAL = 0.001

DEFAULT_TIMEOUTS = HelperTimeouts()

#: The callbacks' replies (xen-colo-protocol.md §11.2).
GO_ON = 1
STOP = 0
LOGDIRTY_DONE = 0


class CheckpointMissing(Exception):
    """The helper asked for the checkpoint callback, but its stream holds no complete checkpoint."""


@implementer(ISaveCallbacks)
class RemusSender:
    """
    One Remus save of a domain: the first copy and then a checkpoint every
    ``interval`` seconds, each handed to ``send`` as bytes, until ``stop``
    is called or ``checkpoints`` were sent.

    @ivar sent: the checkpoints sent whole so far (the first copy is number 1).
    """

    log = Logger()

    def __init__(self, domain: XenDomain, send: Callable[[bytes], object], clock: IReactorTime, *,
                 interval: float, checkpoints: int | None = None, timeout: float = 30.0) -> None:
        self._domain = domain
        self._send = send
        self._clock = clock
        self._interval = interval
        self._limit = checkpoints
        self._timeout = timeout
        self._stream = HelperStream()
        self._encoder = Encoder(Channel.MAIN, Checkpointed.REMUS)
        self._stopping = False
        self.sent = 0

    def run(self, reactor: IReactorProcess, binary: str = HELPER_BINARY,
            timeouts: HelperTimeouts = DEFAULT_TIMEOUTS) -> Deferred[HelperResult]:
        """Start: libxl's records, then the helper; fires once the helper has exited."""
        self._write(StreamHeader(), LibxcContext())
        command = HelperCommand.save(domid=self._domain.domid, stream_type=StreamType.REMUS)
        return run_helper(reactor, command, self, stream_sink=self._stream.receive_data, binary=binary,
                          timeouts=timeouts)

    def stop(self) -> None:
        """Send no more checkpoints: the helper ends at its next checkpoint callback (the guest runs on)."""
        self._stopping = True

    # --- ISaveCallbacks ------------------------------------------------------------

    async def suspend(self) -> int:
        await self._domain.suspend()
        return GO_ON

    async def postcopy(self) -> int:
        await self._domain.resume()
        return GO_ON

    async def checkpoint(self) -> int:
        records = await self._complete_checkpoint()
        device_state = EmulatorContext(blob=self._domain.device_state())
        self._write(*records, Checkpoint(), device_state, CheckpointEnd())
        self.sent += 1
        if self._stopping or (self._limit is not None and self.sent >= self._limit):
            return STOP
        await deferLater(self._clock, self._interval, lambda: None)
        return STOP if self._stopping else GO_ON

    async def switch_qemu_logdirty(self, domid: int, enable: int) -> int:
        await self._domain.set_log_dirty(bool(enable))
        return LOGDIRTY_DONE

    # --- internals ------------------------------------------------------------------

    async def _complete_checkpoint(self) -> list[Record]:
        """The helper's records of this checkpoint: its CHECKPOINT record was written before this
        callback was asked for, but on the stream's pipe, which the reactor may not have read yet."""
        deadline = self._clock.seconds() + self._timeout
        while (records := self._stream.next_checkpoint()) is None:
            if self._clock.seconds() > deadline:
                raise CheckpointMissing(
                    f"no complete checkpoint from the save helper within {self._timeout:g} s")
            await deferLater(self._clock, POLL_INTERVAL, lambda: None)
        return records

    def _write(self, *records: Record) -> None:
        self._send(b"".join(chunk for record in records for chunk in self._encoder.send_buffers(record)))
