# -*- test-case-name: tests.xen.test_receiver -*-
"""
Xen's own Remus receiver, ``xl migrate-receive -r -e``, fed by colod.

On a secondary dom0 the guest's checkpoints are restored by Xen's toolstack
itself: ``xl migrate-receive -r`` creates the domain (as ``NAME--incoming``,
paused), restores the first checkpoint and every later one as it arrives, and
when its input ends it fails over to the last complete checkpoint: it renames
the domain to NAME, unpauses it and (with ``-e``) exits 0.  Debian's libxl
has no COLO, but its Remus receiver is there, and this is the route proven
on Xen 4.17 (xen-colo-protocol.md §11.4).

The conversation, from xl_migrate.c and xl_saverestore.c: the receiver
writes a 54-byte banner on its stdout; the sender then writes the xl save
header (magic, byte order, flags, and the domain's configuration as optional
data: here the xl configuration file of this host, so the flags say "not
JSON"), then the libxl stream.  colod writes each checkpoint only once it is
complete (after CHECKPOINT_END arrived from the primary), so the receiver
never holds half of one.  colod never holds the receiver's input itself: it
talks to it through L{colod.xen.guard}, which ends that input (the receiver
fails over) only when colod says so, and kills the receiver when colod dies.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Sequence
from typing import cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IProcessTransport,
    IPushProducer,
    IReactorProcess,
    IReactorTime,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from colod.xen import guard

#: What the receiver writes when it is ready for the stream.
BANNER = b"xl migration receiver ready, send binary domain data.\n"
#: The xl save file's magic (32 bytes, NULs included).
XL_MAGIC = b"Xen saved domain, xl format\n \0 \r"
_XL_HEADER = struct.Struct("=32sIIII")
_BYTE_ORDER = 0x01020304
#: The stream that follows is migration v2; the configuration is xl's file format, not JSON.
_FLAG_STREAM_V2 = 1 << 1
#: Remus (-r), and exit once failed over (-e) instead of watching the domain.
RECEIVE_ARGS = ("migrate-receive", "-r", "-e")
#: Lines of the receiver's stderr kept for error messages.
SAID_LINES = 8


def receive_command(domain: str, xl: str = "xl") -> list[str]:
    """The command line of the receiver of ``domain`` behind its guard, ``xl`` the path of Xen's xl."""
    return guarded([xl, *RECEIVE_ARGS], incoming=f"{domain}--incoming", xl=xl)


def guarded(receiver: Sequence[str], *, incoming: str, xl: str) -> list[str]:
    """``receiver``'s command line run by the guard, which destroys ``incoming`` (with ``xl``) if
    it has to kill the receiver."""
    return [sys.executable, guard.__file__, "--incoming", incoming, "--xl", xl, "--", *receiver]


def xl_header(config: bytes) -> bytes:
    """The xl save header carrying ``config`` (the text of an xl domain configuration file)."""
    optional = struct.pack("=I", len(config)) + config
    return _XL_HEADER.pack(XL_MAGIC, _BYTE_ORDER, _FLAG_STREAM_V2, 0, len(optional)) + optional


class ReceiverError(Exception):
    """The receiver did not start, refused the stream, or did not fail over; says what it said."""


@implementer(IPushProducer)
class Receiver(ProcessProtocol):
    """
    One ``xl migrate-receive -r -e`` run: L{ready} fires once it sent its
    banner and has the xl header; L{send} writes stream bytes, and
    L{writable} says when to send more (the receiver reads a whole guest's
    memory far slower than colod can hand it over: without this the bytes
    would wait in colod's memory, and colod would not yield to its reactor);
    L{fail_over} ends its input and fires once it has exited (0: the guest
    runs here).  It is the producer of its own input pipe, told by the pipe
    to pause and resume.
    """

    log = Logger()

    def __init__(self, config: bytes, clock: IReactorTime, banner_timeout: float) -> None:
        self._config = config
        self._clock = clock
        self._banner_timeout = banner_timeout
        self._banner = b""
        self._said: list[str] = []
        self._deadline: IDelayedCall | None = None
        self._exit_waiters: list[Deferred[int | None]] = []
        self.ready: Deferred[None] = Deferred()
        self.running = False
        self._room: Deferred[None] | None = None  # while the input pipe's buffer is full
        #: Its exit status once it has exited (None: killed by a signal).
        self.exit_code: int | None = None

    @classmethod
    def start(cls, reactor: IReactorProcess, argv: Sequence[str], config: bytes,
              banner_timeout: float) -> Receiver:
        """
        Start the receiver (``argv``: normally L{receive_command}); its
        L{ready} fires, or fails, within ``banner_timeout`` seconds.

        @raise ReceiverError: it could not be started at all.
        """
        receiver = cls(config, IReactorTime(reactor), banner_timeout)
        try:
            reactor.spawnProcess(receiver, argv[0], list(argv), env=dict(os.environ),
                                 childFDs={0: "w", 1: "r", 2: "r"})
        except OSError as error:
            raise ReceiverError(f"cannot start {argv[0]}: {error.strerror}") from None
        return receiver

    # --- ProcessProtocol ---------------------------------------------------

    def connectionMade(self) -> None:
        self.running = True
        # Twisted's process transport is a consumer of its stdin, though IProcessTransport does not say so.
        cast(IConsumer, self._process).registerProducer(self, True)
        self._deadline = self._clock.callLater(self._banner_timeout, self._no_banner)

    def outReceived(self, data: bytes) -> None:
        if self.ready.called:
            return  # Remus sends nothing back after the banner
        self._banner += data
        if not BANNER.startswith(self._banner[: len(BANNER)]):
            self._refuse(f"the receiver wrote {self._banner[:80]!r}, not its banner")
        elif len(self._banner) >= len(BANNER):
            self._cancel_deadline()
            self.send(xl_header(self._config))
            self.ready.callback(None)

    def errReceived(self, data: bytes) -> None:
        for line in data.decode(errors="replace").splitlines():
            if line.strip():
                self.log.info("xl migrate-receive: {line}", line=line)
                self._said = [*self._said[-(SAID_LINES - 1):], line]

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        self._cancel_deadline()
        self.resumeProducing()  # nothing more will be written: no one waits for room
        code: int | None = getattr(reason.value, "exitCode", None)
        if not self.ready.called:
            self.ready.errback(ReceiverError(f"the receiver exited before it was ready ({self._how(code)})"
                                             f"{self._quote()}"))
        self.exit_code = code
        waiters, self._exit_waiters = self._exit_waiters, []
        for waiter in waiters:
            if not waiter.called:  # not already given up on by fail_over's deadline
                waiter.callback(code)

    # --- IPushProducer: the input pipe's buffer is full, or has room again ---------

    def pauseProducing(self) -> None:
        if self._room is None:
            self._room = Deferred()

    def resumeProducing(self) -> None:
        room, self._room = self._room, None
        if room is not None:
            room.callback(None)

    def stopProducing(self) -> None:
        self.resumeProducing()

    # --- colod's side -------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Stream bytes for the receiver (after L{ready})."""
        self._process.write(guard.frame(data))

    def writable(self) -> Deferred[None]:
        """Fires once the receiver's input has room for more (at once if it has, or if it ended)."""
        if self._room is None:
            return succeed(None)
        waiting: Deferred[None] = Deferred()
        self._room.addCallback(lambda _: waiting.callback(None))
        return waiting

    def fail_over(self, timeout: float) -> Deferred[None]:
        """End the stream: the receiver fails over to its last complete checkpoint and exits.

        Fails with L{ReceiverError} if it exits non-zero, or has not exited within ``timeout``.
        """
        exited = self._exited()
        if self.running:
            self._process.write(guard.FAIL_OVER)
            self._process.closeStdin()
            exited.addTimeout(timeout, self._clock, onTimeoutCancel=self._still_running)
        return exited.addCallback(self._judge)

    def stop(self) -> Deferred[None]:
        """Stop the receiver without a failover (replication ends): its guard kills it and destroys its
        paused domain.  Fires once it has exited."""
        exited = self._exited()
        if self.running:
            self._process.signalProcess("TERM")
        return exited.addCallback(lambda _: None)

    # --- internals ------------------------------------------------------------

    @property
    def _process(self) -> IProcessTransport:
        """The receiver's process; there is one from spawnProcess on (connectionMade)."""
        if self.transport is None:
            raise ReceiverError("the receiver was never started")
        return self.transport

    def _exited(self) -> Deferred[int | None]:
        """Fires with the exit status once the receiver has exited (at once if it has)."""
        if not self.running:
            return succeed(self.exit_code)
        exited: Deferred[int | None] = Deferred()
        self._exit_waiters.append(exited)
        return exited

    def _judge(self, code: int | None) -> None:
        if code != 0:
            raise ReceiverError(f"the receiver did not fail over ({self._how(code)}){self._quote()}")

    def _still_running(self, result: object, timeout: float) -> None:
        if self.running:  # the guard lets nothing stop a failover but its own death, which kills xl
            self._process.signalProcess("KILL")
        raise ReceiverError(f"the receiver had not failed over after {timeout:g} s{self._quote()}")
    def _no_banner(self) -> None:
        self._deadline = None
        self._refuse(f"no banner from the receiver within {self._banner_timeout:g} s")

    def _refuse(self, why: str) -> None:
        self._cancel_deadline()
        if not self.ready.called:
            self.ready.errback(ReceiverError(f"{why}{self._quote()}"))
        self.stop()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _quote(self) -> str:
        return "; it said: " + " | ".join(self._said) if self._said else ""

    @staticmethod
    def _how(code: int | None) -> str:
        return "killed by a signal" if code is None else f"exit status {code}"
