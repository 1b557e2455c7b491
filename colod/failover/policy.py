# -*- test-case-name: tests.failover.test_policy -*-
"""The secondary's failover policies: who says yes before a lost primary's guest runs here.

A policy answers one question, "may this node run the guest now?", with a
L{Verdict}; it is asked only when the link ended in a way that leaves the
primary's fate unknown (colod.engine.link_end).  A "no" is never final: the
secondary keeps its copy and waits for the operator (L{OperatorRequest}),
who may know what no program here can; a policy whose answer can change on
its own (L{Rechecking}: etcd, once the primary's lease lapses) is asked
again meanwhile.

- C{fence}: a command (an IPMI or fence_xvm agent, C{xl destroy} over ssh)
  that must exit 0, within its timeout, before this node takes over: then the
  primary's host is known to be off.
- C{manual}: always "no": the operator decides.
- C{etcd}: yes once this node wins the domain in etcd, which it cannot while
  the primary holds its lease (colod.failover.etcd_policy).
- C{heartbeat-only}: always "yes": the primary's silence is taken for its
  death.  A partition or a stalled primary then makes two primaries; colod
  says so at start.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from colod.config import PolicyName

#: The most of a fence command's output kept for the log.
OUTPUT_KEPT = 2048
@attrs.frozen
class Verdict:
    """A policy's answer, and why, in words for the log and the status."""

    allowed: bool
    why: str


class TakeoverPolicy(Protocol):
    """What the secondary engine asks when its primary is lost."""

    @property
    def name(self) -> PolicyName:
        """For the log and the status."""

    def decide(self) -> Deferred[Verdict]:
        """May this node take the guest over now?  Never fails: a policy that cannot tell says no."""


@runtime_checkable
class Rechecking(Protocol):
    """A policy whose "no" may turn into "yes" with no operator: it is asked again, every
    ``recheck_interval`` seconds, while the secondary waits for one."""

    recheck_interval: float

    def recheck(self) -> Deferred[Verdict]:
        """One quick look: may this node take the guest over now?  Never fails."""


@attrs.frozen
class HeartbeatOnly:
    """Yes, always: the primary's silence is enough (UNSAFE: partitions, stalled processes)."""

    name: PolicyName = PolicyName.HEARTBEAT_ONLY

    def decide(self) -> Deferred[Verdict]:
        return succeed(Verdict(True, "failover policy heartbeat-only: the primary's silence is enough"))


@attrs.frozen
class Manual:
    """No, always: the operator decides (L{OperatorRequest})."""

    name: PolicyName = PolicyName.MANUAL

    def decide(self) -> Deferred[Verdict]:
        return succeed(Verdict(False, "failover policy manual: the operator decides"))


class FenceCommand:
    """Yes once a fence command, run for this loss, exits 0 within its timeout; otherwise no."""

    name = PolicyName.FENCE

    def __init__(self, reactor: IReactorProcess, argv: Sequence[str], timeout: float, *, domain: str,
                 peer: str) -> None:
        self._reactor = reactor
        self._clock = IReactorTime(reactor)
        self.argv = [_filled(arg, domain, peer) for arg in argv]
        self._timeout = timeout

    def decide(self) -> Deferred[Verdict]:
        run = _FenceRun(self._clock, self._timeout)
        try:
            self._reactor.spawnProcess(run, self.argv[0], self.argv, env=dict(os.environ))
        except OSError as error:  # spawnProcess raises only for what it checks itself
            return succeed(Verdict(False, f"the fence command {self.argv[0]} could not start: {error}"))
        return run.verdict.addCallback(lambda verdict: attrs.evolve(
            verdict, why=f"the fence command {' '.join(self.argv)} {verdict.why}"))


def _filled(arg: str, domain: str, peer: str) -> str:
    return arg.replace("{domain}", domain).replace("{peer}", peer)


class _FenceRun(ProcessProtocol):
    """One run of the fence command: its exit status, its output's end, and its deadline."""

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self.verdict: Deferred[Verdict] = Deferred()
        self._clock = clock
        self._timeout = timeout
        self._output = b""
        self._late = False
        self._began = 0.0
        self._deadline: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self._began = time.monotonic()
        self._deadline = self._clock.callLater(self._timeout, self._kill)
        assert self.transport is not None
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self._output = (self._output + data)[-OUTPUT_KEPT:]

    errReceived = outReceived

    def _kill(self) -> None:
        self._late = True
        assert self.transport is not None
        try:
            self.transport.signalProcess(signal.SIGKILL)
        except OSError:
            pass  # it ended as the deadline came

    def processEnded(self, reason: Failure) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        said = self._output.decode(errors="replace").strip().splitlines()
        tail = f" (it said: {said[-1]})" if said else ""
        if self._late:
            verdict = Verdict(False, f"did not finish within {self._timeout:g} s and was killed{tail}")
        elif reason.check(ProcessDone):
            verdict = Verdict(True, f"exited 0 in {time.monotonic() - self._began:.1f} s: the peer is fenced")
        else:
            error = reason.value
            how = (f"exited {error.exitCode}" if isinstance(error, ProcessTerminated) and error.exitCode
                   is not None else f"ended by signal {getattr(error, 'signal', '?')}")
            verdict = Verdict(False, f"{how}{tail}")
        self.verdict.callback(verdict)


class OperatorRequest:
    """An operator's "take over now", as a file in state_dir, for when no control socket is there.

    ``colod failover`` writes it; the secondary engine takes it only while it
    waits for a decision, and removes one left from before its start, so that
    an old request never makes a later takeover.
    """

    def __init__(self, state_dir: str | Path, domain: str) -> None:
        self.path = Path(state_dir) / domain / "failover-request"

    def write(self, by: str) -> None:
        """Ask for a takeover (``by``: who and how, for the log)."""
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(f"{by}\n")
        partial.replace(self.path)

    def take(self) -> str | None:
        """The request, removed, if there is one; who made it."""
        try:
            by = self.path.read_text(errors="replace").strip()
            self.path.unlink()
        except FileNotFoundError:
            return None
        return by or "an operator"
