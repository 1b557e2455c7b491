# -*- test-case-name: tests.failover.test_guard -*-
"""colod's side of the guard (colod.failover.guard): which process to fence, starting it, feeding it.

A plain QEMU guest is fenced by SIGSTOP of its QEMU, whose pid is found from
the QMP socket colod was given: the kernel records the listening process's
credentials on the socket, and a connection to it reads them (SO_PEERCRED),
with no help from QEMU and before QEMU accepts it.  A Xen domain is fenced
with ``xl pause``.  The guard writes to colod's own stderr (the journal, under
systemd), which outlives colod: what it says when colod died is kept.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessTerminated
from twisted.internet.interfaces import IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from colod.config import DomainConfig
from colod.failover.guard import FENCED

#: Seconds the connection to the QMP socket may take.
CONNECT_TIMEOUT = 5.0
_UCRED = struct.Struct("3i")


class GuardError(Exception):
    """The guard cannot be set up: no QEMU found to fence, or its process could not start."""


def qemu_pid(path: str) -> int:
    """The pid of the QEMU listening on the unix socket ``path``, checked to be a QEMU.  @raise GuardError."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(CONNECT_TIMEOUT)
            connection.connect(path)
            pid, _, _ = _UCRED.unpack(connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                            _UCRED.size))
        program = os.readlink(f"/proc/{pid}/exe")
    except OSError as e:
        raise GuardError(f"cannot find the QEMU listening on {path}: {e}") from None
    if "qemu" not in os.path.basename(program):
        raise GuardError(f"{path} is served by process {pid}, {program}, which is no QEMU")
    return pid


def guard_argv(domain: DomainConfig) -> list[str]:
    """The guard's command line for ``domain``.  @raise GuardError: a QEMU guest's QEMU is not found."""
    command = [sys.executable, "-m", "colod.failover.guard", "--name", domain.name]
    if domain.xen is not None:
        return [*command, "--xen-domain", domain.xen.domain, "--xl", domain.xen.xl]
    assert domain.qmp_socket is not None  # the configuration requires it for a QEMU domain
    return [*command, "--pid", str(qemu_pid(domain.qmp_socket))]


class GuardProcess(ProcessProtocol):
    """One running guard: renew() feeds it a deadline, end() lets it go; ``on_ended`` hears of an end
    that no end() asked for (the guard fenced, or died: either way the guest can no longer count on it),
    and whether the guard stopped the guest."""

    log = Logger()

    def __init__(self, name: str, on_ended: Callable[[str, bool], None]) -> None:
        self.name = name
        self.ended: Deferred[None] = Deferred()
        self._on_ended = on_ended
        self._ending = False

    @classmethod
    def start(cls, reactor: IReactorProcess, domain: DomainConfig,
              on_ended: Callable[[str, bool], None]) -> GuardProcess:
        """Start ``domain``'s guard.  @raise GuardError."""
        guard = cls(domain.name, on_ended)
        argv = guard_argv(domain)
        try:
            reactor.spawnProcess(guard, argv[0], argv, env=dict(os.environ), childFDs={0: "w", 1: 2, 2: 2})
        except OSError as e:
            raise GuardError(f"cannot start the guard: {e}") from None
        return guard

    def renew(self, deadline: float) -> None:
        """The guest may run until ``deadline`` (CLOCK_MONOTONIC) unless a later renew() moves it on."""
        if self.transport is not None and not self._ending:
            self.transport.write(f"until {deadline:.6f}\n".encode())

    def end(self) -> Deferred[None]:
        """colod stops cleanly: the guard exits without fencing; fires once it has."""
        if self.transport is not None and not self._ending and not self.ended.called:
            self._ending = True
            self.transport.write(b"end\n")
            self.transport.closeStdin()
        return self.ended

    def processEnded(self, reason: Failure) -> None:
        if not self._ending:
            fenced = isinstance(reason.value, ProcessTerminated) and reason.value.exitCode == FENCED
            why = ("its guard stopped the guest" if fenced else
                   f"its guard process ended ({reason.getErrorMessage()})")
            self.log.critical("domain {domain}: {why}", domain=self.name, why=why)
            self._on_ended(why, fenced)
        self.ended.callback(None)
