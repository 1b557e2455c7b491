# -*- test-case-name: tests.xen.test_guard -*-
"""
Keeps Xen's Remus receiver from failing over unless colod says so.

``xl migrate-receive -r`` fails over (runs its copy of the guest) when its
input ends.  Were that input colod's own pipe, a secondary colod that died
(a crash, SIGKILL, the OOM killer) would end it, and Xen would start a second
copy of the guest while the primary still runs it.  So colod starts this
guard instead: the guard starts xl on a pipe of its own and copies into it
what colod sends, in frames (a 4-byte big-endian length, then the bytes).
An empty frame is colod's word to fail over: only then does the guard end
xl's input.  If colod's side ends without that word, or the guard is told to
stop (SIGTERM, SIGINT, SIGHUP), it kills xl (SIGKILL: no failover), destroys
the paused copy xl was building (``NAME--incoming``) and exits
L{EXIT_STOPPED}.  xl is also set to be killed if the guard itself dies.

Standard library only: it runs as ``python3 guard.py`` beside the daemon,
not inside it.  Usage::

    guard.py --incoming NAME--incoming --xl /usr/sbin/xl -- xl migrate-receive -r -e
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import struct
import subprocess
import sys
from collections.abc import Sequence
from typing import IO, NoReturn

FRAME_HEADER = struct.Struct(">I")
#: The frame that says: end the receiver's input (it fails over).
FAIL_OVER = FRAME_HEADER.pack(0)
#: The guard's exit status when it stopped the receiver instead of letting it fail over.
EXIT_STOPPED = 3
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1
_DESTROY_TIMEOUT = 60.0


class Stopped(Exception):
    """A signal told the guard to stop."""


def frame(data: bytes) -> bytes:
    """``data`` framed for the guard (never empty: an empty frame means fail over)."""
    if not data:
        raise ValueError("an empty frame would mean fail over")
    return FRAME_HEADER.pack(len(data)) + data


def _read_exactly(source: IO[bytes], count: int) -> bytes | None:
    """``count`` bytes, or None if the input ended first."""
    data = source.read(count)
    return data if len(data) == count else None


def relay(source: IO[bytes], sink: IO[bytes]) -> bool:
    """Copy frames from ``source`` to ``sink``; True once the fail-over frame came, False if the
    input ended (or was cut inside a frame) without it."""
    while (header := _read_exactly(source, FRAME_HEADER.size)) is not None:
        (length,) = FRAME_HEADER.unpack(header)
        if length == 0:
            return True
        if (data := _read_exactly(source, length)) is None:
            return False
        sink.write(data)
        sink.flush()
    return False


def _die_with_parent(parent: int) -> None:
    """In xl, before exec: be killed when the guard dies (a guard that is gone cannot stop it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != parent:
        os._exit(127)


def _stop(signum: int, frame: object) -> NoReturn:
    raise Stopped(signal.Signals(signum).name)


def _ignore_signals() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _say(line: str) -> None:
    """A line for colod's log; colod may be gone (that is often why the guard speaks)."""
    try:
        print(f"colod receiver guard: {line}", file=sys.stderr, flush=True)
    except OSError:
        pass


def _destroy(xl: str, incoming: str) -> None:
    """Destroy the paused copy the killed receiver left (nothing to do if it never made one)."""
    try:
        done = subprocess.run([xl, "destroy", incoming], capture_output=True, text=True,
                              timeout=_DESTROY_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        _say(f"could not destroy {incoming}: {error}")
        return
    if done.returncode == 0:
        _say(f"destroyed {incoming}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--incoming", required=True, help="the name of the receiver's paused copy")
    parser.add_argument("--xl", required=True, help="xl, to destroy that copy")
    parser.add_argument("receiver", nargs="+", help="the receiver's command line")
    arguments = parser.parse_args(argv)
    for signum in STOP_SIGNALS:
        signal.signal(signum, _stop)
    guard = os.getpid()
    try:
        receiver = subprocess.Popen(arguments.receiver, stdin=subprocess.PIPE, close_fds=True,
                                    preexec_fn=lambda: _die_with_parent(guard))
    except OSError as error:
        _say(f"cannot start {arguments.receiver[0]}: {error.strerror}")
        return 127
    assert receiver.stdin is not None
    try:
        if relay(sys.stdin.buffer, receiver.stdin):
            _ignore_signals()  # failing over: nothing may stop it half-way
            receiver.stdin.close()
            return receiver.wait()
        why = "colod's stream ended without the word to fail over"
    except BrokenPipeError:
        return receiver.wait()  # it ended by itself; its stderr says why
    except Stopped as stopped:
        why = f"stopped by {stopped}"
    _ignore_signals()  # the cleanup, once begun, is finished
    _say(f"{why}: the receiver is killed, not failed over")
    receiver.kill()
    receiver.wait()
    _destroy(arguments.xl, arguments.incoming)
    return EXIT_STOPPED


if __name__ == "__main__":
    sys.exit(main())
