"""A minimal blocking QMP client, for processes that have no event loop.

The guest writer, the two-node lab and the benchmark's libxl-style QMP use
it; colod itself uses colod.qmp.  Every read has a deadline, and events are
skipped.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

#: Seconds one command (or the greeting) may take, unless told otherwise.
TIMEOUT = 10.0


class QMPError(Exception):
    """Talking to QEMU failed."""


class QMPRefused(QMPError):
    """QEMU answered a command with an error; its class and description are kept."""

    def __init__(self, command: str, error_class: str, description: str) -> None:
        super().__init__(f"QMP {command} failed: {description}")
        self.error_class = error_class
        self.description = description


class QMPNoAnswer(QMPError):
    """QEMU did not answer within the deadline."""


class QMPClosed(QMPError):
    """QEMU closed the connection."""


class QMPClient:
    """One blocking QMP connection on a unix socket.

    @raise OSError: the socket cannot be reached.
    """

    def __init__(self, path: str, timeout: float = TIMEOUT) -> None:
        self._timeout = timeout
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._socket.settimeout(timeout)
            self._socket.connect(path)
            self._lines = self._socket.makefile("rb")
        except BaseException:
            self._socket.close()
            raise
        self._id = 0
        if "QMP" not in self._read(time.monotonic() + timeout):
            self.close()
            raise QMPError(f"{path} did not greet as a QMP monitor")
        self.execute("qmp_capabilities")

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run C{command} and return its result, skipping the events that arrive meanwhile."""
        self._id += 1
        message: dict[str, Any] = {"execute": command, "id": self._id}
        if arguments is not None:
            message["arguments"] = arguments
        self._socket.sendall(json.dumps(message).encode() + b"\n")
        deadline = time.monotonic() + self._timeout
        while (reply := self._read(deadline)).get("id") != self._id:
            pass
        if "error" in reply:
            raise QMPRefused(command, reply["error"].get("class", ""), reply["error"].get("desc", ""))
        return reply["return"]

    def _read(self, deadline: float) -> dict[str, Any]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise QMPNoAnswer(f"QEMU did not answer within {self._timeout:g} s")
        self._socket.settimeout(remaining)
        try:
            line = self._lines.readline()
        except TimeoutError:
            raise QMPNoAnswer(f"QEMU did not answer within {self._timeout:g} s") from None
        if not line:
            raise QMPClosed("QEMU closed the QMP connection")
        return dict(json.loads(line))

    def close(self) -> None:
        self._lines.close()
        self._socket.close()
