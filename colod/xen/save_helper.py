# -*- test-case-name: tests.xen.test_save_helper -*-
"""
Run Xen 4.17's libxl-save-helper as libxl does, with colod as the toolstack.

The helper runs libxc's C{xc_domain_save} or C{xc_domain_restore}: it moves
the guest's memory over the stream fd itself and calls back into the
toolstack over its stdin and stdout (L{colod.xen.helper_messages}) to suspend
and resume the guest and to mark checkpoints.  This module spawns it with the
stream and back-channel fds at the numbers its command line names, answers
its callbacks through an L{ISaveCallbacks} or L{IRestoreCallbacks} provider,
passes its log into twisted.logger, keeps a deadline on every wait, and
turns each way a run can end badly into a L{HelperError} that says what
happened and what the helper said about it.
"""

from __future__ import annotations

import enum
import os
import signal
from collections import deque
from collections.abc import Callable, Mapping, Sequence

import attrs
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail, maybeDeferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import Interface

from .helper_messages import (
    CLOSED,
    LIBXL_CALLBACKS,
    MESSAGES,
    NEED_DATA,
    Checkpoint,
    Complete,
    Decoder,
    Log,
    Message,
    MessageError,
    MessageSpec,
    Postcopy,
    Progress,
    RestoreResults,
    Side,
    StaticDataDone,
    StreamType,
    Suspend,
    SwitchQemuLogdirty,
    WaitCheckpoint,
    cbflags,
    encode_reply,
)

#: Where Debian's xen-utils-4.17 installs the helper.
HELPER_BINARY = "/usr/lib/xen-4.17/bin/libxl-save-helper"
#: The fds the helper gets for the stream and the back channel: the first
#: after stdin, stdout and stderr, which carry the message protocol.
STREAM_FD = 3
BACK_FD = 4
#: The helper's positional arguments after its mode (libxl_save_helper.c, main()).
ARGUMENTS: Mapping[Side, tuple[str, ...]] = {
    Side.SAVE: ("io_fd", "recv_fd", "domid", "flags", "cbflags", "stream_type"),
    Side.RESTORE: ("io_fd", "send_back_fd", "domid", "store_evtchn", "store_domid",
                   "console_evtchn", "console_domid", "cbflags", "stream_type"),
}
MODES: Mapping[Side, str] = {Side.SAVE: "--save-domain", Side.RESTORE: "--restore-domain"}
#: The toolstack answering one of the four checkpoint callbacks with its failure reply (0) ends the
#: save, as libxl does to stop Remus or COLO.
CHECKPOINT_CALLBACKS = (Suspend, Postcopy, Checkpoint, WaitCheckpoint)
#: What libxl 4.17 replies when its own callback fails, so that libxc takes
#: the same error path as under libxl: 0 for the four checkpoint callbacks
#: (libxl_dom_suspend.c, libxl_remus.c, libxl_colo_*.c), -1 for logdirty
#: (libxl_dom_save.c), ERROR_FAIL for static_data_done (libxl_create.c).
FAILURE_REPLIES: Mapping[type[Message], int] = {
    **dict.fromkeys(CHECKPOINT_CALLBACKS, 0), SwitchQemuLogdirty: -1, StaticDataDone: -3,
}
#: libxl's reply to complete, after which the helper exits.
COMPLETE_REPLY = 0
#: What a reply can carry.
C_INT_MIN, C_INT_MAX = -(1 << 31), (1 << 31) - 1
#: xentoollog levels (xentoollog.h) as Twisted's: debug, verbose, detail;
#: progress, info, notice; warn; error; critical.
LOG_LEVELS: Mapping[int, LogLevel] = {
    1: LogLevel.debug, 2: LogLevel.debug, 3: LogLevel.debug,
    4: LogLevel.info, 5: LogLevel.info, 6: LogLevel.info,
    7: LogLevel.warn, 8: LogLevel.error, 9: LogLevel.critical,
}
#: The xentoollog level from which the helper's log lines go into a HelperError.
XTL_ERROR = 8
#: How much of its own account an error carries: the last error-level log
#: lines and the end of its stderr (where an assert or perror lands).
SAID_LINES = 5
STDERR_KEPT = 2048


class XcFlags(enum.IntFlag):
    """xc_domain_save's flags (xenguest.h, XCFLAGS_*)."""

    LIVE = 1
    DEBUG = 2


class HelperArgumentError(ValueError):
    """A command the helper would abort on (it checks its arguments with assert())."""


def _check_arguments(command: HelperCommand, attribute: attrs.Attribute, args: tuple[int, ...]) -> None:
    names = ARGUMENTS[command.side]
    if len(args) != len(names):
        raise HelperArgumentError(
            f"{MODES[command.side]} takes exactly {len(names)} arguments ({' '.join(names)}), "
            f"not {len(args)}: the helper would abort on an assert"
        )
    stream, back = args[0], args[1]
    if stream <= 2 or (back != -1 and back <= 2) or back == stream:
        raise HelperArgumentError(
            f"{names[0]} {stream} and {names[1]} {back} must be two distinct fds above 2 "
            "(or -1 for no back channel): 0-2 carry the helper's messages"
        )


@attrs.frozen
class HelperCommand:
    """
    The helper's mode and positional arguments, exactly as on its command
    line.  L{save} and L{restore} build one the way libxl does, announcing
    libxl's callbacks for the stream type (L{LIBXL_CALLBACKS}).

    @raise HelperArgumentError: wrong number of arguments, or fds that clash.
    """

    side: Side
    args: tuple[int, ...] = attrs.field(converter=tuple, validator=_check_arguments)

    @classmethod
    def save(
        cls, *, domid: int, stream_type: StreamType, flags: XcFlags = XcFlags.LIVE, back_channel: bool = False
    ) -> HelperCommand:
        """C{--save-domain}; COLO reads the secondary's dirty pages from the back channel."""
        announced = cbflags(LIBXL_CALLBACKS[Side.SAVE, stream_type])
        recv = BACK_FD if back_channel else -1
        return cls(Side.SAVE, (STREAM_FD, recv, domid, int(flags), announced, int(stream_type)))

    @classmethod
    def restore(
        cls, *, domid: int, store_evtchn: int, store_domid: int, console_evtchn: int, console_domid: int,
        stream_type: StreamType, back_channel: bool = False,
    ) -> HelperCommand:
        """C{--restore-domain} into a domain the toolstack created; COLO writes dirty pages back."""
        announced = cbflags(LIBXL_CALLBACKS[Side.RESTORE, stream_type])
        send_back = BACK_FD if back_channel else -1
        return cls(Side.RESTORE, (STREAM_FD, send_back, domid, store_evtchn, store_domid,
                                  console_evtchn, console_domid, announced, int(stream_type)))

    def _arg(self, name: str) -> int:
        return self.args[ARGUMENTS[self.side].index(name)]

    @property
    def domid(self) -> int:
        return self._arg("domid")

    @property
    def cbflags(self) -> int:
        return self._arg("cbflags")

    @property
    def stream_fd(self) -> int:
        """The helper's fd number for the stream."""
        return self.args[0]

    @property
    def back_fd(self) -> int:
        """The helper's fd number for the back channel, -1 if none."""
        return self.args[1]

    def announces(self, cls: type[Message]) -> bool:
        return bool(self.cbflags & (1 << cls.SPEC.number))

    def argv(self, binary: str) -> list[str]:
        return [binary, MODES[self.side], *map(str, self.args)]


class ISaveCallbacks(Interface):
    """
    The toolstack's part of a save, called by libxc through the helper.
    Each returns an int, or a Deferred that fires with one; the helper (and
    the guest, when suspended) waits meanwhile.  Only the callbacks the
    command announces are called; raising, failing or missing the callback
    deadline makes the driver reply as libxl does on failure.
    """

    def suspend() -> int | Deferred[int]:
        """Suspend the guest and its device model.  Non-zero: suspended; 0: failed."""

    def postcopy() -> int | Deferred[int]:
        """Remus/COLO: the checkpoint's memory is sent; resume the guest.  > 0: resumed."""

    def checkpoint() -> int | Deferred[int]:
        """
        Remus/COLO: libxc wrote CHECKPOINT; write the libxl records to the
        stream.  Remus: 1 to go on after the interval, 0 to stop (the helper
        still completes with retval 0).  COLO: non-zero once the secondary
        has the checkpoint.
        """

    def wait_checkpoint() -> int | Deferred[int]:
        """COLO: return when the next checkpoint is due.  > 0: take it."""

    def switch_qemu_logdirty(domid: int, enable: int) -> int | Deferred[int]:
        """Turn the device model's dirty-page logging on or off.  0: done."""


class IRestoreCallbacks(Interface):
    """
    The toolstack's part of a restore (see L{ISaveCallbacks}).  The four
    checkpoint callbacks answer 1 (go on), 2 (fail over: the stream is
    broken) or 0 (error).
    """

    def suspend() -> int | Deferred[int]:
        """COLO: suspend the secondary at the end of a checkpoint."""

    def postcopy() -> int | Deferred[int]:
        """COLO: the checkpoint is applied; resume the secondary."""

    def checkpoint() -> int | Deferred[int]:
        """Remus/COLO: libxc read CHECKPOINT; read the libxl records up to CHECKPOINT_END."""

    def wait_checkpoint() -> int | Deferred[int]:
        """COLO: return when the primary starts the next checkpoint."""

    def static_data_done(missing: int) -> int | Deferred[int]:
        """The stream's static data is in; make up what an old stream lacks.  0: done."""

    def restore_results(store_gfn: int, console_gfn: int) -> None:
        """
        Where the guest's xenstore and console rings are: after each COLO
        checkpoint and once at the end, even after a failure.  No reply.
        """


@attrs.frozen
class HelperTimeouts:
    """Deadlines, in seconds, so that no wait on the helper or a callback is endless."""

    #: How long the helper may say nothing while it works.  Saving, libxc
    #: reports progress every 4 MiB sent, so only a stuck save is this quiet;
    #: restoring, it reports nothing while it reads the stream, so this must
    #: cover the sender's longest pause.
    silence: float = 60.0
    #: How long a callback may take; COLO's wait_checkpoint waits for the
    #: next checkpoint, so this must exceed the checkpoint interval.
    callback: float = 120.0

    def __attrs_post_init__(self) -> None:
        if self.silence <= 0 or self.callback <= 0:
            raise ValueError("helper timeouts must be positive")


@attrs.frozen
class HelperResult:
    """What a successful run reported."""

    #: Always retval 0 and errno 0 here; anything else is a L{HelperFailed}.
    complete: Complete
    #: Restore: the last restore_results; save: None.
    restore_results: RestoreResults | None


class HelperError(Exception):
    """
    A run of the helper failed.

    @ivar what: which run, e.g. "libxl-save-helper --save-domain for domain 5".
    @ivar reason: what went wrong, in words an operator can act on.
    @ivar said: the helper's own account: its last error-level log lines,
        then its last lines on stderr.
    """

    def __init__(self, what: str, reason: str, said: Sequence[str] = ()) -> None:
        super().__init__(what, reason)
        self.what = what
        self.reason = reason
        self.said = tuple(said)

    def __str__(self) -> str:
        told = "; it said: " + " | ".join(self.said) if self.said else ""
        return f"{self.what} {self.reason}{told}"


class HelperExited(HelperError):
    """
    It exited with a non-zero status or was killed by a signal.

    @ivar exit_code: its exit status, or None if a signal ended it.
    @ivar signal: the signal that ended it, or None.
    """

    def __init__(self, what: str, exit_code: int | None, signum: int | None) -> None:
        super().__init__(what, _describe_exit(exit_code, signum))
        self.exit_code = exit_code
        self.signal = signum


class HelperIncomplete(HelperError):
    """It exited with status 0 but without complete (or, restoring, restore_results)."""


class HelperFailed(HelperError):
    """
    libxc failed: complete carried a non-zero retval.

    @ivar retval: xc_domain_save/restore's return value.
    @ivar errno: the errno the helper saw when it returned.
    """

    def __init__(self, what: str, side: Side, complete: Complete) -> None:
        super().__init__(what, f"reports that xc_domain_{side.value} failed: retval {complete.retval}"
                               f"{_errno_text(complete.errno)}")
        self.retval = complete.retval
        self.errno = complete.errno


class CallbackFailed(HelperError):
    """
    A callback raised, failed, returned something that is not a C int, or
    missed its deadline; a helper waiting for its reply got libxl's failure
    reply.

    @ivar callback: the callback's name.
    @ivar failure: what the callback failed with.
    """

    def __init__(self, what: str, callback: str, failure: Failure, reason: str) -> None:
        super().__init__(what, reason)
        self.callback = callback
        self.failure = failure


class HelperSilent(HelperError):
    """It said nothing for the silence deadline and was killed."""


class HelperProtocolError(HelperError):
    """
    Its messages broke the protocol (malformed, unannounced, or sent while
    it should be waiting for a reply); it was killed, or its output ended
    inside a message.

    @ivar error: the codec's account, or None for a message out of turn.
    """

    def __init__(self, what: str, reason: str, error: MessageError | None = None) -> None:
        super().__init__(what, reason)
        self.error = error


def _errno_text(errno: int) -> str:
    """The log message's errno: a u32 on the wire, a C int in the helper, where xentoollog's -1
    (arriving as 2**32 - 1) means "no errno"."""
    if errno >= 1 << 31:
        errno -= 1 << 32
    return f", errno {errno} ({os.strerror(errno)})" if errno > 0 else ""


def _describe_exit(exit_code: int | None, signum: int | None) -> str:
    if signum == signal.SIGABRT or exit_code == 128 + signal.SIGABRT:
        return "aborted (SIGABRT, exit status 134 in a shell), as a failed assert() does"
    if signum is not None:
        return f"was killed by {signal.Signals(signum).name}"
    if exit_code == 255:
        return "exited with status 255: it gave up on an error it logged"
    if exit_code == 254:
        return "exited with status 254: its stdin closed while it waited for a reply"
    return f"exited with status {exit_code}"


def run_helper(
    reactor: IReactorProcess,
    command: HelperCommand,
    callbacks: ISaveCallbacks | IRestoreCallbacks,
    *,
    stream_fd: int | None = None,
    stream_sink: Callable[[bytes], object] | None = None,
    back_fd: int | None = None,
    binary: str = HELPER_BINARY,
    env: Mapping[str, str] | None = None,
    timeouts: HelperTimeouts = HelperTimeouts(),
) -> Deferred[HelperResult]:
    """
    Run the helper once.  The result fires when the helper has exited, with
    a L{HelperResult} or a L{HelperError}.

    @param reactor: spawns the process and keeps the deadlines (an
        L{IReactorTime} too).
    @param stream_fd: this process's fd for the stream; the helper gets a
        copy at C{command.stream_fd}, inheritable whatever its CLOEXEC flag.
    @param stream_sink: instead of C{stream_fd}, for a save: called with the
        bytes the helper writes on its stream fd (a pipe read by the reactor),
        then with C{b""} when it closes, so that colod can carry the stream
        itself (between heartbeats, after checks).
    @param back_fd: this process's fd for the back channel, given exactly
        when the command has one.
    @param env: the helper's environment; by default this process's, as libxl passes its own.
    @raise ValueError: C{back_fd} does not match the command, not exactly
        one of C{stream_fd} and C{stream_sink} is given, or C{callbacks}
        lacks a callback the command announces.
    """
    if (stream_fd is None) == (stream_sink is None):
        raise ValueError("give the helper's stream either an fd or a sink")
    if (back_fd is None) != (command.back_fd == -1):
        raise ValueError(f"back_fd {back_fd} does not match the command's back channel fd {command.back_fd}")
    missing = [cls.SPEC.name for cls in MESSAGES.values() if cls.SPEC.callback and command.announces(cls)
               and not callable(getattr(callbacks, cls.SPEC.name, None))]
    if missing:
        raise ValueError(f"the callbacks lack {', '.join(missing)}, which the command announces")
    child_fds: dict[int, str | int] = {0: "w", 1: "r", 2: "r",
                                       command.stream_fd: "r" if stream_fd is None else stream_fd}
    if back_fd is not None:
        child_fds[command.back_fd] = back_fd
    helper = HelperProcess(command, callbacks, IReactorTime(reactor), timeouts, stream_sink)
    try:
        reactor.spawnProcess(helper, binary, command.argv(binary),
                             env=dict(os.environ if env is None else env), childFDs=child_fds)
    except OSError as error:
        return fail(HelperError(helper.what, f"could not be started from {binary}: {error.strerror}"))
    return helper.result


class HelperProcess(ProcessProtocol):
    """
    One run of the helper: decodes its stdout, answers its callbacks, keeps
    the deadlines, and fires L{result} once the helper is gone (never
    earlier, so that no helper outlives its result).
    """

    log = Logger()

    def __init__(
        self,
        command: HelperCommand,
        callbacks: ISaveCallbacks | IRestoreCallbacks,
        clock: IReactorTime,
        timeouts: HelperTimeouts,
        stream_sink: Callable[[bytes], object] | None = None,
    ) -> None:
        self.command = command
        self._stream_sink = stream_sink
        self.what = f"libxl-save-helper {MODES[command.side]} for domain {command.domid}"
        self.result: Deferred[HelperResult] = Deferred()
        self._callbacks = callbacks
        self._clock = clock
        self._timeouts = timeouts
        self._decoder = Decoder(command.side)
        self._complete: Complete | None = None
        self._restore_results: RestoreResults | None = None
        #: The first failure seen while it ran; the run's result once it ends.
        self._failure: HelperError | None = None
        #: Its output ended inside a message: the reason if its exit does not explain more.
        self._cut_short: MessageError | None = None
        #: We killed it: whatever it still writes is ignored.
        self._killed = False
        self._ended = False
        #: The toolstack ended the save (L{CHECKPOINT_CALLBACKS}): libxc's error lines after that
        #: are its account of the end it was told, not a fault, and are logged at info.
        self._told_to_end = False
        #: The callback it is blocked on, and the call's Deferred.
        self._waiting: tuple[MessageSpec, Deferred[int]] | None = None
        self._silence: IDelayedCall | None = None
        self._logged_errors: deque[str] = deque(maxlen=SAID_LINES)
        self._stderr = bytearray()

    # --- ProcessProtocol -------------------------------------------------------

    def connectionMade(self) -> None:
        self._expect()

    def outReceived(self, data: bytes) -> None:
        self._heard()
        if self._killed:
            return
        self._decoder.receive_data(data)
        try:
            self._drain()
        except MessageError as error:
            self._kill(HelperProtocolError(self.what, f"sent a malformed message: {error}", error))

    def errReceived(self, data: bytes) -> None:
        self._heard()
        self._stderr += data
        del self._stderr[:-STDERR_KEPT]

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if self._stream_sink is not None and childFD == self.command.stream_fd:
            self._heard()
            self._stream_sink(data)
        else:
            super().childDataReceived(childFD, data)

    def childConnectionLost(self, childFD: int) -> None:
        if self._stream_sink is not None and childFD == self.command.stream_fd:
            self._stream_sink(b"")
        else:
            super().childConnectionLost(childFD)

    def outConnectionLost(self) -> None:
        if self._killed:
            return
        self._decoder.receive_data(b"")
        try:
            self._drain()
        except MessageError as error:
            self._cut_short = error

    def processEnded(self, reason: Failure) -> None:
        self._ended = True
        self._quiet()
        if self._waiting is not None:
            self._waiting[1].cancel()
        error = self._failure or self._judge(reason.value.exitCode, reason.value.signal)
        if error is None:
            self.result.callback(HelperResult(self._complete, self._restore_results))
            return
        error.said = (*self._logged_errors, *_lines(self._stderr))
        self.result.errback(error)

    # --- messages ----------------------------------------------------------------

    def _drain(self) -> None:
        while not self._killed:
            message = self._decoder.next_message()
            if message is NEED_DATA or message is CLOSED:
                return
            self._handle(message)

    def _handle(self, message: Message) -> None:
        spec = message.SPEC
        if self._waiting is not None:
            self._kill(HelperProtocolError(
                self.what, f"sent {spec.name} while it should wait for the reply to {self._waiting[0].name}"))
        elif isinstance(message, Log):
            self._log(message)
        elif isinstance(message, Progress):
            self.log.debug("{what}: {context}: {doing_what} {done}/{total}", what=self.what,
                           context=message.context, doing_what=message.doing_what, done=message.done,
                           total=message.total)
        elif isinstance(message, Complete):
            self._complete = message
            self._reply(COMPLETE_REPLY)
        elif isinstance(message, RestoreResults):
            # The helper sends this one whatever cbflags says (main() calls its stub directly).
            self._restore_results = message
            self._notify(message)
        elif not self.command.announces(type(message)):
            self._kill(HelperProtocolError(
                self.what, f"asked for the {spec.name} callback, which cbflags {self.command.cbflags} "
                           "did not announce"))
        else:
            self._call(message)

    def _log(self, message: Log) -> None:
        line = f"{message.context}: {message.text}{_errno_text(message.errno)}"
        level = LOG_LEVELS.get(message.level, LogLevel.warn)
        if message.level >= XTL_ERROR:
            self._logged_errors.append(line)
            if self._told_to_end:
                level, line = LogLevel.info, f"{line} (told to end the save)"
        self.log.emit(level, "{what}: {line}", what=self.what, line=line,
                      xtl_level=message.level, helper_errno=message.errno)

    def _notify(self, message: RestoreResults) -> None:
        try:
            self._callbacks.restore_results(message.store_gfn, message.console_gfn)
        except Exception:  # noqa: BLE001 - any error is the callback's, reported as such
            failure = Failure()
            why = f"could not hand over its restore_results: {_failure_text(failure)}"
            self.log.error("{what}: {why}", what=self.what, why=why)
            self._note(CallbackFailed(self.what, message.SPEC.name, failure, why))

    # --- callbacks -----------------------------------------------------------------

    def _call(self, message: Message) -> None:
        spec = message.SPEC
        self._quiet()  # the helper is blocked on us now: the callback deadline applies
        called = maybeDeferred(getattr(self._callbacks, spec.name), *attrs.astuple(message))
        called.addTimeout(self._timeouts.callback, self._clock)
        self._waiting = (spec, called)
        called.addCallbacks(self._answered, self._callbackFailed,
                            callbackArgs=(type(message),), errbackArgs=(type(message),))

    def _answered(self, value: object, cls: type[Message]) -> None:
        if not (isinstance(value, int) and C_INT_MIN <= value <= C_INT_MAX):
            self._callbackFailed(Failure(TypeError(f"returned {value!r}, not a C int")), cls)
            return
        self.log.debug("{what}: {callback} -> {value}", what=self.what, callback=cls.SPEC.name, value=value)
        if cls in CHECKPOINT_CALLBACKS and value == FAILURE_REPLIES[cls]:
            self._told_to_end = True
        self._reply(value)

    def _callbackFailed(self, failure: Failure, cls: type[Message]) -> None:
        if self._ended and failure.check(CancelledError):
            return  # we cancelled it: the helper is gone
        name = cls.SPEC.name
        if failure.check(TimeoutError):
            why = f"it did not answer within {self._timeouts.callback:g} s"
        else:
            why = _failure_text(failure)
        self.log.error("{what}: the {callback} callback failed ({why}); replying {reply} as libxl does",
                       what=self.what, callback=name, why=why, reply=FAILURE_REPLIES[cls])
        reason = f"got a failure reply to its {name} callback: {why}"
        self._note(CallbackFailed(self.what, name, failure, reason))
        self._reply(FAILURE_REPLIES[cls])

    def _reply(self, value: int) -> None:
        self._waiting = None
        if self._ended or self._killed:
            return
        self.transport.write(encode_reply(value))
        self._expect()

    # --- the end -------------------------------------------------------------------

    def _judge(self, exit_code: int | None, signum: int | None) -> HelperError | None:
        """Why a run that went well on our side failed, if it did; libxl's order of checks."""
        if exit_code or signum is not None:
            return HelperExited(self.what, exit_code, signum)
        if self._cut_short is not None:
            return HelperProtocolError(self.what, f"stopped writing inside a message: {self._cut_short}",
                                       self._cut_short)
        if self.command.side is Side.RESTORE and self._restore_results is None:
            return HelperIncomplete(self.what, "exited without providing results (no restore_results)")
        if self._complete is None:
            return HelperIncomplete(self.what, "exited without signalling completion (no complete)")
        if self._complete.retval != 0:
            return HelperFailed(self.what, self.command.side, self._complete)
        return None

    def _note(self, error: HelperError) -> None:
        if self._failure is None:
            self._failure = error

    def _kill(self, error: HelperError) -> None:
        """Give up on the helper: libxl kills it with SIGKILL too (helper_failed)."""
        self._note(error)
        self._killed = True
        self._quiet()
        try:
            self.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass

    # --- the silence deadline ----------------------------------------------------------

    def _expect(self) -> None:
        """The helper is working and owes us its next word within the silence deadline."""
        self._quiet()
        self._silence = self._clock.callLater(self._timeouts.silence, self._silent)

    def _heard(self) -> None:
        if self._silence is not None and self._silence.active():
            self._silence.reset(self._timeouts.silence)

    def _quiet(self) -> None:
        if self._silence is not None and self._silence.active():
            self._silence.cancel()
        self._silence = None

    def _silent(self) -> None:
        self._silence = None
        self._kill(HelperSilent(self.what, f"said nothing for {self._timeouts.silence:g} s and was killed"))


def _failure_text(failure: Failure) -> str:
    return f"{failure.type.__name__}: {failure.getErrorMessage()}"


def _lines(data: bytes) -> list[str]:
    text = bytes(data).decode("utf-8", "backslashreplace")
    return [line.strip() for line in text.splitlines() if line.strip()]
