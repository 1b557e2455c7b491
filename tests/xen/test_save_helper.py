"""
The helper driver: its commands, its callback/reply loop against a stand-in
helper, and Debian's real libxl-save-helper on this host, which has no Xen.

The real helper is fetched by tools/fetch-xen-helper.sh into build/xen-tools
once per run; a run that cannot fetch it fails, saying why.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from colod.xen.helper_messages import (
    MESSAGES,
    REPLY,
    Complete,
    Log,
    RestoreResults,
    Side,
    StreamType,
    Suspend,
    encode_message,
    encode_reply,
)
from colod.xen.save_helper import (
    CallbackFailed,
    HelperArgumentError,
    HelperCommand,
    HelperError,
    HelperExited,
    HelperFailed,
    HelperIncomplete,
    HelperProcess,
    HelperProtocolError,
    HelperResult,
    HelperSilent,
    HelperTimeouts,
    IRestoreCallbacks,
    ISaveCallbacks,
    XcFlags,
    run_helper,
)
from tests.rig import ScratchTestCase, async_test

REPO = Path(__file__).resolve().parents[2]
FETCH = REPO / "tools" / "fetch-xen-helper.sh"
DEST = REPO / "build" / "xen-tools"

# --- the stand-in ---------------------------------------------------------------------


def stand_in_helper() -> None:
    """
    Stands in for libxl-save-helper, which needs a hypervisor to get past its
    start.  Run with the helper's arguments, it plays the scenario in
    $STAND_IN_SCENARIO, a JSON list of steps, writing messages with the
    codec as the helper does with its generated stubs:

      - ["send", name, *args]: a message; ["raw", hex]: any bytes;
      - ["expect", value]: read a reply, exit 99 if it is another value
        (and 254 at end of file, as the helper's getreply does);
      - ["write", "io_fd" | "back_fd", text]: write to an fd from the command line
        (["write_hex", fd, hex] for bytes);
      - ["relay", n]: copy n bytes from the back channel to the stream;
      - ["stderr", text], ["sleep", seconds], ["exit", status], ["signal", name].

    It exits 0 after the last step.
    """
    by_name = {cls.SPEC.name: cls for cls in MESSAGES.values()}
    fds = {"io_fd": int(sys.argv[2]), "back_fd": int(sys.argv[3])}
    for op, *args in json.loads(os.environ["STAND_IN_SCENARIO"]):
        if op == "send":
            os.write(1, encode_message(by_name[args[0]](*args[1:])))
        elif op == "raw":
            os.write(1, bytes.fromhex(args[0]))
        elif op == "expect":
            data = os.read(0, REPLY.size)
            if len(data) < REPLY.size:
                sys.exit(254)
            (got,) = REPLY.unpack(data)
            if got != args[0]:
                sys.stderr.write(f"stand-in: expected reply {args[0]}, got {got}\n")
                sys.exit(99)
        elif op == "write":
            os.write(fds[args[0]], args[1].encode())
        elif op == "write_hex":
            os.write(fds[args[0]], bytes.fromhex(args[1]))
        elif op == "relay":
            os.write(fds["io_fd"], os.read(fds["back_fd"], args[0]))
        elif op == "stderr":
            sys.stderr.write(args[0])
            sys.stderr.flush()
        elif op == "sleep":
            time.sleep(args[0])
        elif op == "exit":
            sys.exit(args[0])
        elif op == "signal":
            os.kill(os.getpid(), getattr(signal, args[0]))
        else:
            sys.exit(f"stand-in: unknown step {op!r}")
    sys.exit(0)


#: The stand-in as a script: its own source after its imports, so that it
#: starts without importing this module (Twisted, trial) every time.
LAUNCHER = f"""#!{sys.executable}
import json, os, signal, sys, time
sys.path.insert(0, {str(REPO)!r})
from colod.xen.helper_messages import MESSAGES, REPLY, encode_message
{inspect.getsource(stand_in_helper)}
stand_in_helper()
"""

# --- what the tests use -----------------------------------------------------------------

#: Deadlines a working stand-in never reaches, but that end a hung test in seconds.
BOUNDED = HelperTimeouts(silence=10.0, callback=10.0)


@implementer(ISaveCallbacks, IRestoreCallbacks)
class Recorder:
    """Callbacks that note each call and answer from C{answers}: a value, an exception, or a callable."""

    DEFAULTS: dict[str, object] = {"switch_qemu_logdirty": 0, "static_data_done": 0, "restore_results": None}

    def __init__(self, **answers: object) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.answers = answers

    def _answer(self, name: str, *args: int) -> Any:
        self.calls.append((name, *args))
        answer = self.answers.get(name, self.DEFAULTS.get(name, 1))
        if isinstance(answer, BaseException):
            raise answer
        return answer() if callable(answer) else answer

    def suspend(self) -> Any:
        return self._answer("suspend")

    def postcopy(self) -> Any:
        return self._answer("postcopy")

    def checkpoint(self) -> Any:
        return self._answer("checkpoint")

    def wait_checkpoint(self) -> Any:
        return self._answer("wait_checkpoint")

    def switch_qemu_logdirty(self, domid: int, enable: int) -> Any:
        return self._answer("switch_qemu_logdirty", domid, enable)

    def static_data_done(self, missing: int) -> Any:
        return self._answer("static_data_done", missing)

    def restore_results(self, store_gfn: int, console_gfn: int) -> None:
        self._answer("restore_results", store_gfn, console_gfn)


PLAIN_SAVE = HelperCommand.save(domid=5, stream_type=StreamType.PLAIN)
PLAIN_RESTORE = HelperCommand.restore(domid=6, store_evtchn=1, store_domid=0, console_evtchn=2,
                                      console_domid=0, stream_type=StreamType.PLAIN)


class DriverTestCase(ScratchTestCase):
    """Runs commands against a binary (the stand-in unless told), with the driver's log captured."""

    def setUp(self) -> None:
        super().setUp()
        self.logged: list[tuple[LogLevel, str]] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace", "").startswith("colod.xen"):
                self.logged.append((event["log_level"], formatEvent(event)))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.binary = self.workdir / "stand-in-helper"
        self.binary.write_text(LAUNCHER)
        self.binary.chmod(0o755)
        self.env = dict(os.environ)

    def pipe(self) -> tuple[int, int]:
        """A pipe whose ends are closed after the test (and, as Python makes them, CLOEXEC)."""
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        self.addCleanup(os.close, write)
        return read, write

    def run_helper(
        self, command: HelperCommand, callbacks: Recorder, scenario: Sequence[list[Any]] = (),
        timeouts: HelperTimeouts = BOUNDED, stream_fd: int | None = None, back_fd: int | None = None,
        stream_sink: Callable[[bytes], object] | None = None,
    ) -> Deferred[HelperResult]:
        env = {**self.env, "STAND_IN_SCENARIO": json.dumps(list(scenario))}
        if stream_sink is None and stream_fd is None:
            stream_fd = self.pipe()[1]
        return run_helper(reactor, command, callbacks, stream_fd=stream_fd, stream_sink=stream_sink,
                          back_fd=back_fd, binary=str(self.binary), env=env, timeouts=timeouts)

    async def failure(self, error: type[HelperError], *args: Any, **kwargs: Any) -> Any:
        """The error a run fails with, which must be an C{error}."""
        try:
            result = await self.run_helper(*args, **kwargs)
        except HelperError as caught:
            self.assertIsInstance(caught, error)
            return caught
        self.fail(f"the run succeeded with {result}")


# --- commands ---------------------------------------------------------------------------


def test_save_command_is_libxls() -> None:
    """COLO save as libxl runs it: stream on 3, back channel on 4, live, cbflags 248, stream type 2."""
    command = HelperCommand.save(domid=7, stream_type=StreamType.COLO, back_channel=True)
    assert command.argv("/h") == ["/h", "--save-domain", "3", "4", "7", "1", "248", "2"]
    plain = HelperCommand.save(domid=7, stream_type=StreamType.PLAIN, flags=XcFlags.LIVE | XcFlags.DEBUG)
    assert plain.argv("/h") == ["/h", "--save-domain", "3", "-1", "7", "3", "136", "0"]


def test_restore_command_is_libxls() -> None:
    command = HelperCommand.restore(domid=9, store_evtchn=11, store_domid=0, console_evtchn=12,
                                    console_domid=0, stream_type=StreamType.COLO, back_channel=True)
    assert command.argv("/h") == ["/h", "--restore-domain", "3", "4", "9", "11", "0", "12", "0", "888", "2"]
    assert (command.domid, command.cbflags, command.stream_fd, command.back_fd) == (9, 888, 3, 4)


@pytest.mark.parametrize(("side", "args", "reason"), [
    (Side.SAVE, (3, -1, 5, 1, 136), "--save-domain takes exactly 6 arguments "
     "(io_fd recv_fd domid flags cbflags stream_type), not 5: the helper would abort on an assert"),
    (Side.SAVE, (3, -1, 5, 1, 136, 0, 0), "--save-domain takes exactly 6 arguments "
     "(io_fd recv_fd domid flags cbflags stream_type), not 7: the helper would abort on an assert"),
    (Side.RESTORE, (3, -1, 5, 1, 0, 2, 0, 768), "--restore-domain takes exactly 9 arguments (io_fd "
     "send_back_fd domid store_evtchn store_domid console_evtchn console_domid cbflags stream_type), not 8: "
     "the helper would abort on an assert"),
    (Side.SAVE, (1, -1, 5, 1, 136, 0), "io_fd 1 and recv_fd -1 must be two distinct fds above 2 "
     "(or -1 for no back channel): 0-2 carry the helper's messages"),
    (Side.SAVE, (3, 3, 5, 1, 136, 0), "io_fd 3 and recv_fd 3 must be two distinct fds above 2 "
     "(or -1 for no back channel): 0-2 carry the helper's messages"),
    (Side.RESTORE, (3, 2, 5, 1, 0, 2, 0, 768, 0), "io_fd 3 and send_back_fd 2 must be two distinct fds "
     "above 2 (or -1 for no back channel): 0-2 carry the helper's messages"),
])
def test_commands_the_helper_would_abort_on_are_refused(
    side: Side, args: tuple[int, ...], reason: str
) -> None:
    """Our own check, before anything is spawned (the binary's asserts are documented below)."""
    with pytest.raises(HelperArgumentError) as caught:
        HelperCommand(side, args)
    assert str(caught.value) == reason


def test_run_refuses_mismatched_fds_and_missing_callbacks() -> None:
    """Checked before spawning: nothing runs."""
    with pytest.raises(ValueError, match=r"^back_fd 9 does not match the command's back channel fd -1$"):
        run_helper(reactor, PLAIN_SAVE, Recorder(), stream_fd=8, back_fd=9)

    class SuspendOnly:
        def suspend(self) -> int:
            return 1

    with pytest.raises(ValueError, match=r"^the callbacks lack switch_qemu_logdirty, which the command "):
        run_helper(reactor, PLAIN_SAVE, SuspendOnly(), stream_fd=8)
    with pytest.raises(ValueError, match="must be positive"):
        HelperTimeouts(silence=0)


# --- the callback/reply loop, with the stand-in -----------------------------------------


class CallbackLoopTests(DriverTestCase):
    @async_test
    async def test_colo_save(self) -> None:
        """Every save callback in libxl's COLO order, one answered later; both fds at their numbers."""
        command = HelperCommand.save(domid=7, stream_type=StreamType.COLO, back_channel=True)
        stream_r, stream_w = self.pipe()
        back_r, back_w = self.pipe()
        os.write(back_w, b"dirty")
        callbacks = Recorder(suspend=lambda: deferLater(reactor, 0.05, lambda: 1))
        result = await self.run_helper(command, callbacks, [
            ["send", "log", 5, 0, "xc", "hello"],
            ["send", "progress", "xc", "Memory", 1, 2],
            ["write", "io_fd", "libxc stream "],
            ["relay", 5],
            ["send", "switch_qemu_logdirty", 7, 1], ["expect", 0],
            ["send", "suspend"], ["expect", 1],
            ["send", "checkpoint"], ["expect", 1],
            ["send", "postcopy"], ["expect", 1],
            ["send", "wait_checkpoint"], ["expect", 1],
            ["send", "complete", 0, 0], ["expect", 0],
        ], stream_fd=stream_w, back_fd=back_r)
        self.assertEqual(result, HelperResult(Complete(0, 0), None))
        self.assertEqual(callbacks.calls, [("switch_qemu_logdirty", 7, 1), ("suspend",), ("checkpoint",),
                                           ("postcopy",), ("wait_checkpoint",)])
        self.assertEqual(os.read(stream_r, 100), b"libxc stream dirty")
        self.assertIn((LogLevel.info, "libxl-save-helper --save-domain for domain 7: xc: hello"), self.logged)
        self.assertIn((LogLevel.debug, "libxl-save-helper --save-domain for domain 7: xc: Memory 1/2"),
                      self.logged)

    @async_test
    async def test_stream_to_a_sink(self) -> None:
        """The stream fd can be a pipe the reactor reads: its bytes reach the sink, then b"" at its close."""
        received: list[bytes] = []
        command = HelperCommand.save(domid=7, stream_type=StreamType.REMUS)
        result = await self.run_helper(command, Recorder(), [
            ["write", "io_fd", "libxc "], ["send", "suspend"], ["expect", 1],
            ["write", "io_fd", "stream"], ["send", "complete", 0, 0], ["expect", 0],
        ], stream_sink=received.append)
        self.assertEqual(result, HelperResult(Complete(0, 0), None))
        self.assertEqual(b"".join(received), b"libxc stream")
        self.assertEqual(received[-1], b"")

    def test_stream_needs_an_fd_or_a_sink(self) -> None:
        with self.assertRaises(ValueError) as caught:
            run_helper(reactor, PLAIN_SAVE, Recorder(), stream_fd=8, stream_sink=print)
        self.assertEqual(str(caught.exception), "give the helper's stream either an fd or a sink")

    @async_test
    async def test_no_errno(self) -> None:
        """The wire's u32 errno is the helper's C int, and xentoollog's -1 (2**32 - 1 on the wire) means
        none: Xen 4.17 logs "Saving domain 1, type x86 HVM" so."""
        await self.run_helper(PLAIN_SAVE, Recorder(), [
            ["send", "log", 5, 0xFFFFFFFF, "xc", "Saving domain 5"],
            ["send", "complete", 0, 0], ["expect", 0]])
        self.assertIn((LogLevel.info, "libxl-save-helper --save-domain for domain 5: xc: Saving domain 5"),
                      self.logged)

    @async_test
    async def test_restore(self) -> None:
        """static_data_done is answered; restore_results reaches the callbacks and the result."""
        callbacks = Recorder()
        result = await self.run_helper(PLAIN_RESTORE, callbacks, [
            ["send", "static_data_done", 1], ["expect", 0],
            ["send", "restore_results", 0xFEFFC, 0xFEFFD],
            ["send", "complete", 0, 0], ["expect", 0],
        ])
        self.assertEqual(result, HelperResult(Complete(0, 0), RestoreResults(0xFEFFC, 0xFEFFD)))
        self.assertEqual(callbacks.calls, [("static_data_done", 1), ("restore_results", 0xFEFFC, 0xFEFFD)])

    @async_test
    async def test_log_levels(self) -> None:
        """xentoollog's levels map onto Twisted's; a level it does not define is logged as a warning."""
        levels = [1, 2, 3, 4, 5, 6, 7, 8, 9, 12]
        await self.run_helper(PLAIN_SAVE, Recorder(), [
            *(["send", "log", level, 0, "xc", f"level {level}"] for level in levels),
            ["send", "complete", 0, 0], ["expect", 0],
        ])
        seen = [level for level, text in self.logged if "level" in text]
        self.assertEqual(seen, [LogLevel.debug] * 3 + [LogLevel.info] * 3
                         + [LogLevel.warn, LogLevel.error, LogLevel.critical, LogLevel.warn])

    @async_test
    async def test_errors_after_the_toolstack_ended_the_save_are_logged_at_info(self) -> None:
        """A 0 to a checkpoint callback is the toolstack ending the save (colod's detach does it): libxc's
        "Save failed" after it is its account of that end, logged at info; the run's error still quotes it.
        The same line after a callback that failed stays an error."""
        what = "libxl-save-helper --save-domain for domain 5"
        scenario = [["send", "suspend"], ["expect", 0],
                    ["send", "log", 8, 0, "xc", "Save failed (0 = Success): Internal error"],
                    ["send", "complete", -1, 0], ["expect", 0]]
        error = await self.failure(HelperFailed, PLAIN_SAVE, Recorder(suspend=0), scenario)
        self.assertIn("it said: xc: Save failed (0 = Success): Internal error", str(error))
        self.assertIn((LogLevel.info, f"{what}: xc: Save failed (0 = Success): Internal error "
                                      "(told to end the save)"), self.logged)
        self.assertEqual([text for level, text in self.logged if level >= LogLevel.error], [])

        await self.failure(CallbackFailed, PLAIN_SAVE, Recorder(suspend=RuntimeError("no guest")), scenario)
        self.assertIn((LogLevel.error, f"{what}: xc: Save failed (0 = Success): Internal error"), self.logged)

    @async_test
    async def test_failed_callbacks_get_libxls_failure_reply(self) -> None:
        """The helper gets what libxl replies on failure and goes on; the run fails naming the callback."""
        for command, name, args, reply in [
            (PLAIN_SAVE, "suspend", [], 0),
            (PLAIN_SAVE, "switch_qemu_logdirty", [5, 1], -1),
            (PLAIN_RESTORE, "static_data_done", [0], -3),
        ]:
            callbacks = Recorder(**{name: RuntimeError("the guest is gone")})
            done = [["send", "restore_results", 0, 0]] if command.side is Side.RESTORE else []
            error = await self.failure(CallbackFailed, command, callbacks, [
                ["send", name, *args], ["expect", reply], *done,
                ["send", "log", 8, 0, "xc", "callback failed"],
                ["send", "complete", -1, 0], ["expect", 0],
            ])
            self.assertEqual(error.callback, name)
            self.assertTrue(error.failure.check(RuntimeError))
            self.assertEqual(str(error), f"{error.what} got a failure reply to its {name} callback: "
                                         "RuntimeError: the guest is gone; it said: xc: callback failed")

    @async_test
    async def test_restore_results_that_cannot_be_handed_over(self) -> None:
        """No reply is due, so the helper goes on; the run still fails, naming the callback."""
        callbacks = Recorder(restore_results=ValueError("no such domain"))
        error = await self.failure(CallbackFailed, PLAIN_RESTORE, callbacks, [
            ["send", "restore_results", 1, 2], ["send", "complete", 0, 0], ["expect", 0],
        ])
        self.assertEqual(error.callback, "restore_results")
        self.assertEqual(error.reason, "could not hand over its restore_results: ValueError: no such domain")

    @async_test
    async def test_callback_must_answer_a_c_int(self) -> None:
        error = await self.failure(CallbackFailed, PLAIN_SAVE, Recorder(suspend=1 << 31), [
            ["send", "suspend"], ["expect", 0], ["send", "complete", -1, 0], ["expect", 0],
        ])
        self.assertEqual(error.reason, "got a failure reply to its suspend callback: "
                                       "TypeError: returned 2147483648, not a C int")

    @async_test
    async def test_silent_helper_is_killed(self) -> None:
        """The run ends soon after the deadline, with the helper gone (the result waits for that)."""
        started = time.monotonic()
        error = await self.failure(HelperSilent, PLAIN_SAVE, Recorder(), [["sleep", 60]],
                                   timeouts=HelperTimeouts(silence=0.3, callback=10))
        self.assertLess(time.monotonic() - started, 10)
        self.assertEqual(str(error), "libxl-save-helper --save-domain for domain 5 said nothing for 0.3 s "
                                     "and was killed")

    @async_test
    async def test_exit_without_complete(self) -> None:
        error = await self.failure(HelperIncomplete, PLAIN_SAVE, Recorder(), [
            ["send", "log", 5, 0, "xc", "hi"],
        ])
        self.assertEqual(error.reason, "exited without signalling completion (no complete)")

    @async_test
    async def test_restore_exit_without_results(self) -> None:
        error = await self.failure(HelperIncomplete, PLAIN_RESTORE, Recorder(), [
            ["send", "complete", 0, 0], ["expect", 0],
        ])
        self.assertEqual(error.reason, "exited without providing results (no restore_results)")

    @async_test
    async def test_complete_with_an_error(self) -> None:
        """libxc's failure, with its errno and the error lines the helper logged before it."""
        error = await self.failure(HelperFailed, PLAIN_SAVE, Recorder(), [
            ["send", "log", 7, 0, "xc", "a warning"],
            ["send", "log", 8, 5, "xc", "Save failed"],
            ["send", "complete", -1, 5], ["expect", 0],
        ])
        self.assertEqual((error.retval, error.errno), (-1, 5))
        self.assertEqual(str(error), "libxl-save-helper --save-domain for domain 5 reports that "
                                     "xc_domain_save failed: retval -1, errno 5 (Input/output error); "
                                     "it said: xc: Save failed, errno 5 (Input/output error)")

    @async_test
    async def test_exit_status_and_stderr(self) -> None:
        error = await self.failure(HelperExited, PLAIN_SAVE, Recorder(), [
            ["stderr", "write: Broken pipe\n"], ["exit", 3],
        ])
        self.assertEqual((error.exit_code, error.signal), (3, None))
        self.assertEqual(str(error), "libxl-save-helper --save-domain for domain 5 exited with status 3; "
                                     "it said: write: Broken pipe")

    @async_test
    async def test_killed_by_a_signal(self) -> None:
        error = await self.failure(HelperExited, PLAIN_SAVE, Recorder(), [["signal", "SIGSEGV"]])
        self.assertEqual((error.exit_code, error.signal), (None, signal.SIGSEGV))
        self.assertEqual(error.reason, "was killed by SIGSEGV")

    @async_test
    async def test_malformed_message_kills_the_helper(self) -> None:
        error = await self.failure(HelperProtocolError, PLAIN_SAVE, Recorder(), [
            ["raw", "0200 0b00"], ["sleep", 60],
        ])
        self.assertEqual(error.error.offset, 2)
        self.assertEqual(error.reason, "sent a malformed message: offset 2: unknown message type 11")

    @async_test
    async def test_unannounced_callback_kills_the_helper(self) -> None:
        """A plain save announces no checkpoint callback: a helper asking for one is not libxl's."""
        error = await self.failure(HelperProtocolError, PLAIN_SAVE, Recorder(), [
            ["send", "checkpoint"], ["sleep", 60],
        ])
        self.assertEqual(error.reason,
                         "asked for the checkpoint callback, which cbflags 136 did not announce")

    @async_test
    async def test_message_while_a_reply_is_due_kills_the_helper(self) -> None:
        cancelled: list[Deferred[int]] = []
        pending: Deferred[int] = Deferred(cancelled.append)
        error = await self.failure(HelperProtocolError, PLAIN_SAVE, Recorder(suspend=lambda: pending), [
            ["send", "suspend"], ["send", "log", 5, 0, "xc", "not waiting"], ["sleep", 60],
        ])
        self.assertEqual(error.reason, "sent log while it should wait for the reply to suspend")
        self.assertEqual(cancelled, [pending])  # the helper is gone: nobody waits for the answer

    @async_test
    async def test_output_cut_inside_a_message(self) -> None:
        error = await self.failure(HelperProtocolError, PLAIN_SAVE, Recorder(), [["raw", "0a00 0a00 0000"]])
        self.assertEqual(error.reason, "stopped writing inside a message: "
                                       "offset 0: the output ends inside a message (6 bytes of it)")

    @async_test
    async def test_helper_that_cannot_be_started(self) -> None:
        self.binary = self.workdir / "no-such-helper"
        error = await self.failure(HelperError, PLAIN_SAVE, Recorder())
        self.assertEqual(error.reason, f"could not be started from {self.binary}: No such file or directory")


# --- the deadlines, on a clock the test drives ------------------------------------------


class FakeProcess:
    """The helper's side of the driver's transport: what it was sent, and the signals."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.signals: list[str] = []

    def write(self, data: bytes) -> None:
        self.written += data

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class DeadlineTests(SynchronousTestCase):
    TIMEOUTS = HelperTimeouts(silence=5, callback=30)

    def setUp(self) -> None:
        self.clock = Clock()
        self.process = FakeProcess()
        self.addCleanup(lambda: self.assertEqual(self.clock.getDelayedCalls(), []))

    def start(self, callbacks: Recorder) -> HelperProcess:
        helper = HelperProcess(PLAIN_SAVE, callbacks, self.clock, self.TIMEOUTS)
        helper.makeConnection(self.process)
        return helper

    def test_silence(self) -> None:
        """Each message restarts the deadline; at the deadline the helper is killed, and named silent."""
        helper = self.start(Recorder())
        self.clock.advance(4.9)
        helper.outReceived(encode_message(Log(5, 0, "xc", "working")))
        self.clock.advance(4.9)
        self.assertEqual(self.process.signals, [])
        self.clock.advance(0.1)
        self.assertEqual(self.process.signals, ["KILL"])
        helper.processEnded(Failure(ProcessTerminated(signal=signal.SIGKILL)))
        self.assertEqual(str(self.failureResultOf(helper.result, HelperSilent).value),
                         "libxl-save-helper --save-domain for domain 5 said nothing for 5 s and was killed")

    def test_silence_is_no_fault_while_a_reply_is_due(self) -> None:
        """The helper waits for a slow callback; its deadline starts again with the reply."""
        answer: Deferred[int] = Deferred()
        helper = self.start(Recorder(suspend=lambda: answer))
        helper.outReceived(encode_message(Suspend()))
        self.clock.advance(29)
        self.assertEqual((self.process.signals, self.process.written), ([], b""))
        answer.callback(1)
        self.assertEqual(self.process.written, encode_reply(1))
        self.clock.advance(4.9)
        self.assertEqual(self.process.signals, [])
        helper.outReceived(encode_message(Complete(0, 0)))
        helper.processEnded(Failure(ProcessDone(0)))
        self.assertEqual(self.successResultOf(helper.result), HelperResult(Complete(0, 0), None))
        self.assertEqual(self.process.written, encode_reply(1) + encode_reply(0))

    def test_callback_deadline(self) -> None:
        """A callback that does not answer in time is cancelled and the helper gets libxl's failure reply."""
        cancelled: list[Deferred[int]] = []
        pending: Deferred[int] = Deferred(cancelled.append)
        helper = self.start(Recorder(suspend=lambda: pending))
        helper.outReceived(encode_message(Suspend()))
        self.clock.advance(30)
        self.assertEqual((cancelled, self.process.written), ([pending], encode_reply(0)))
        helper.outReceived(encode_message(Complete(-1, 0)))
        helper.processEnded(Failure(ProcessDone(0)))
        error = self.failureResultOf(helper.result, CallbackFailed).value
        self.assertEqual(error.reason,
                         "got a failure reply to its suspend callback: it did not answer within 30 s")


# --- Debian's real helper -----------------------------------------------------------------------


@functools.cache
def real_helper() -> tuple[str, str]:
    """The real helper's path and its library folder, fetched once; an AssertionError saying why not."""
    result = subprocess.run([str(FETCH), str(DEST)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AssertionError(f"{FETCH} could not fetch libxl-save-helper:\n{result.stdout}\n{result.stderr}")
    helper, libdir = result.stdout.split()
    return helper, libdir


class RealHelperTests(DriverTestCase):
    """What Debian's binary does on a host without Xen, through the driver."""

    def setUp(self) -> None:
        super().setUp()
        helper, libdir = real_helper()  # fails the test, never skips it
        self.binary = Path(helper)
        self.env = {**os.environ, "LD_LIBRARY_PATH": libdir}

    @async_test
    async def test_too_few_arguments_abort(self) -> None:
        """The binary asserts on each missing argument; the driver names the abort and the assertion."""
        with attrs.validators.disabled():  # past our own check, to document the binary's
            command = HelperCommand(Side.SAVE, (3, -1, 5, 1, 136))
        error = await self.failure(HelperExited, command, Recorder())
        self.assertEqual(error.signal, signal.SIGABRT)
        self.assertRegex(str(error), r"^libxl-save-helper --save-domain for domain 5 aborted \(SIGABRT, exit "
                                     r"status 134 in a shell\), as a failed assert\(\) does; it said: "
                                     r"libxl-save-helper: libxl_save_helper\.c:\d+: main: Assertion `\*argv' "
                                     r"failed\.$")

    @async_test
    async def test_too_many_arguments_abort(self) -> None:
        with attrs.validators.disabled():
            command = HelperCommand(Side.RESTORE, (3, -1, 5, 1, 0, 2, 0, 768, 0, 0))
        error = await self.failure(HelperExited, command, Recorder())
        self.assertEqual(error.signal, signal.SIGABRT)
        self.assertRegex(str(error), r"it said: libxl-save-helper: libxl_save_helper\.c:\d+: main: "
                                     r"Assertion `!\*\+\+argv' failed\.$")

    @async_test
    async def test_save_without_a_hypervisor(self) -> None:
        """Exit 255 after logging why; the error carries the helper's own reason, the log every line."""
        error = await self.failure(HelperExited, PLAIN_SAVE, Recorder())
        self.assertEqual((error.exit_code, error.signal), (255, None))
        self.assertEqual(str(error), "libxl-save-helper --save-domain for domain 5 exited with status 255: "
                                     "it gave up on an error it logged; it said: xencall: Could not obtain "
                                     "handle on privileged command interface, errno 2 (No such file or "
                                     "directory) | libxl-save-helper: xc_interface_open failed, errno 2 "
                                     "(No such file or directory)")
        what = "libxl-save-helper --save-domain for domain 5"
        self.assertEqual(self.logged, [
            (LogLevel.debug, f"{what}: libxl-save-helper: starting save"),
            (LogLevel.error, f"{what}: xencall: Could not obtain handle on privileged command interface, "
                             "errno 2 (No such file or directory)"),
            (LogLevel.error, f"{what}: libxl-save-helper: xc_interface_open failed, "
                             "errno 2 (No such file or directory)"),
        ])

    @async_test
    async def test_restore_without_a_hypervisor(self) -> None:
        error = await self.failure(HelperExited, PLAIN_RESTORE, Recorder())
        self.assertEqual(error.exit_code, 255)
        self.assertIn("libxl-save-helper: xc_interface_open failed", str(error))
        self.assertEqual(self.logged[0], (LogLevel.debug, "libxl-save-helper --restore-domain for domain 6: "
                                                          "libxl-save-helper: starting restore"))
