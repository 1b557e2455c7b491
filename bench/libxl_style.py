"""
QMP as libxl spoke it to qemu-xen, behind the surface colod's engines use of a QMPConnection.

libxl's synchronous QMP (libxl_qmp.c of the COLO era, qmp_synchronous_send)
opened a new connection to QEMU's monitor for every command: connect, read
the greeting, qmp_capabilities, the command, wait for its reply (skipping
events), close; the toolstack blocked meanwhile, and device calls ran one
after another.  LibxlQMP does exactly that, so that bench/checkpoint.py can
run colod's own engines, guest and devices over it and compare the two ways
of speaking QMP on otherwise the same checkpoint.
"""

from __future__ import annotations

import os
import time
from contextlib import closing
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred

from colod.qmp import (
    QemuInfo,
    QMPCommandError,
    QMPDisconnected,
    QMPTimeout,
    probed_info,
)
from colod.testing.qmp_blocking import QMPClient, QMPError, QMPNoAnswer, QMPRefused


class LibxlQMP:
    """
    One QEMU's monitor, one blocking connection per command.

    It speaks colod.qmp.QMP, the surface that DeviceGroup, DeviceModelEngine
    and the engines use, all but send_fd (a failover's device-state load,
    which the bench never runs): execute(), info, connected and
    busy_seconds; errors are colod.qmp's, with QEMU's class and description
    as QMPConnection gives them.
    """

    def __init__(self, socket_path: str, timeout: float) -> None:
        self.socket_path = socket_path
        self.command_timeout = timeout
        self.info: QemuInfo | None = None
        #: Wall-clock seconds spent inside commands (they never overlap: each blocks).
        self.busy_seconds = 0.0
        self._gone = False

    @property
    def connected(self) -> bool:
        """Whether a command could reach QEMU: its socket is there and the last command found it."""
        return not self._gone and os.path.exists(self.socket_path)

    def probe(self) -> QemuInfo:
        """What QMPConnection.connect learns once: the version, and the commands (refused if some lack)."""
        reply = self.call("query-version")
        self.info = probed_info(self.socket_path, reply, self.call("query-commands"))
        return self.info

    def execute(self, command: str, arguments: dict[str, Any] | None = None, timeout: float | None = None,
                *, oob: bool = False) -> Deferred[Any]:
        """
        Run ``command`` now, blocking, and hand back its result as an already fired Deferred.

        ``oob`` is accepted for QMPConnection's signature and ignored: libxl
        sent nothing out of band, and a fresh connection has nothing queued
        ahead of its one command anyway.
        """
        return maybeDeferred(self.call, command, arguments, timeout)

    def call(self, command: str, arguments: dict[str, Any] | None = None,
             timeout: float | None = None) -> Any:
        """One command over a connection of its own; its ``return`` value, or a colod.qmp error."""
        limit = self.command_timeout if timeout is None else timeout
        started = time.perf_counter()
        try:
            return self._exchange(command, arguments, limit)
        finally:
            self.busy_seconds += time.perf_counter() - started

    def _exchange(self, command: str, arguments: dict[str, Any] | None, limit: float) -> Any:
        try:
            with closing(QMPClient(self.socket_path, limit)) as qmp:
                result = qmp.execute(command, arguments)
        except QMPRefused as e:
            raise QMPCommandError(command, e.error_class, e.description) from None
        except QMPNoAnswer:
            raise QMPTimeout(command, limit) from None
        except (OSError, QMPError) as e:
            self._gone = True
            raise QMPDisconnected(f"QMP {command}: lost QEMU at {self.socket_path} "
                                  f"({type(e).__name__}: {e})") from None
        self._gone = False
        return result
