# -*- test-case-name: tests.test_qmp -*-
"""A QMP connection to one QEMU, for Twisted code.

qemu.qmp is asyncio-only; colod runs Twisted on the asyncio reactor, so each
call here starts an asyncio task and hands back a Deferred.  What this module
adds to qemu.qmp is what a daemon needs and the library leaves to its user:

- every call has a deadline, and a missed one names the command;
- QEMU's error replies become QMPCommandError with QEMU's class and text;
- a QEMU that goes away fails the calls in flight with QMPDisconnected, and the
  library's own error is consumed (no "exception was never retrieved");
- events reach subscribers as they arrive and are not kept: qemu.qmp's default
  listener records every event forever, so it is muted;
- connecting retries until a deadline, then probes the QEMU and refuses one
  that lacks the commands colod drives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol, TypeVar

import attrs
from qemu.qmp import ConnectError, EventListener, ExecInterruptedError, QMPClient, QMPError
from qemu.qmp.protocol import Runstate
from qemu.qmp.qmp_client import ExecuteError
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from colod.reactor import asyncio_loop

# What colod sends to every protected domain's QEMU (reference §5).
REQUIRED_COMMANDS = frozenset({
    "xen-set-replication",
    "query-xen-replication-status",
    "xen-colo-do-checkpoint",
    "x-blockdev-change",
    "blockdev-add",
    "nbd-server-start",
})

# How long to wait between two attempts to reach a socket that is not there yet.
CONNECT_RETRY_DELAY = 0.2

Event = dict[str, Any]
_R = TypeVar("_R")


class QMPFailure(Exception):
    """Base of every error this module raises; ``str()`` is a complete sentence."""


class QMPCommandError(QMPFailure):
    """QEMU answered a command with an error reply."""

    def __init__(self, command: str, error_class: str, description: str) -> None:
        super().__init__(f"QMP {command} failed: {error_class}: {description}")
        self.command = command
        self.error_class = error_class
        self.description = description


class QMPTimeout(QMPFailure):
    """A command got no answer before its deadline."""

    def __init__(self, command: str, timeout: float) -> None:
        super().__init__(f"QMP {command} got no reply within {timeout:g} s")
        self.command = command
        self.timeout = timeout


class QMPDisconnected(QMPFailure):
    """The connection to QEMU is gone (QEMU exited, crashed or closed it)."""


class QMPConnectFailed(QMPFailure):
    """QEMU's QMP socket could not be reached before the connect deadline."""


class QMPCapabilityError(QMPFailure):
    """The QEMU lacks commands that colod needs."""

    def __init__(self, socket_path: str, version: str, missing: Iterable[str]) -> None:
        self.missing = tuple(sorted(missing))
        self.version = version
        super().__init__(
            f"QEMU {version} at {socket_path} lacks the QMP commands colod needs: "
            + ", ".join(self.missing)
            + " (a QEMU built with CONFIG_REPLICATION and Xen COLO support is required)"
        )


@attrs.frozen
class QemuInfo:
    """What the probe found out about the QEMU at the other end."""

    version: str
    commands: frozenset[str]


class QMPCommands(Protocol):
    """Runs QMP commands: all that a Xen domain's save path needs of its device model (colod.xen.domain)."""

    def execute(self, command: str, arguments: dict[str, Any] | None = None, timeout: float | None = None,
                *, oob: bool = False) -> Deferred[Any]:
        """Run one command; its ``return`` value, or a QMPFailure (QMPConnection.execute)."""


class QMP(QMPCommands, Protocol):
    """The QMP surface that the engines, the devices and the guest's device model use.

    QMPConnection is the daemon's.  bench/libxl_style.LibxlQMP speaks it as
    libxl did, all but send_fd: only a device model loading its state at
    failover passes a file, and the bench never fails over.
    """

    @property
    def info(self) -> QemuInfo | None:
        """What the probe found: the QEMU's version and commands (None before it)."""

    @property
    def connected(self) -> bool:
        """Whether a command can reach QEMU now."""

    @property
    def busy_seconds(self) -> float:
        """Wall-clock seconds during which QEMU had a command to answer: its share of a pause."""

    def send_fd(self, fd: int, name: str, timeout: float | None = None) -> Deferred[None]:
        """Pass ``fd`` to QEMU under ``name`` (QMPConnection.send_fd)."""


class _CallbackListener(EventListener):
    """An event listener that hands each event straight to a callback and keeps none."""

    def __init__(self, deliver: Callable[[Event], None]) -> None:
        super().__init__()
        self._deliver = deliver

    async def put(self, event: Any) -> None:
        self._deliver(dict(event))


def _mute(_event: Any) -> bool:
    return False


def probed_info(socket_path: str, version: dict[str, Any], commands: list[dict[str, Any]],
                required: Iterable[str] = REQUIRED_COMMANDS) -> QemuInfo:
    """What ``query-version`` and ``query-commands`` said; QMPCapabilityError if a required command lacks."""
    q = version["qemu"]
    version_text = f"{q['major']}.{q['minor']}.{q['micro']}"
    if version.get("package"):
        version_text += f" ({version['package'].strip()})"
    names = frozenset(c["name"] for c in commands)
    missing = frozenset(required) - names
    if missing:
        raise QMPCapabilityError(socket_path, version_text, missing)
    return QemuInfo(version=version_text, commands=names)


class QMPConnection:
    """One persistent QMP connection to one QEMU, used from Twisted.

    Use connect() once; then execute() any number of times and subscribe() to
    events; disconnect() when done.  whenLost() fires once the connection is
    gone for any reason, with the reason.
    """

    log = Logger()

    def __init__(
        self,
        socket_path: str,
        *,
        name: str = "qemu",
        command_timeout: float = 5.0,
        connect_timeout: float = 10.0,
        required_commands: Iterable[str] = REQUIRED_COMMANDS,
    ) -> None:
        self.socket_path = socket_path
        self.name = name
        self.command_timeout = command_timeout
        self.connect_timeout = connect_timeout
        self.required_commands = frozenset(required_commands)
        self.info: QemuInfo | None = None
        # Wall-clock seconds during which at least one command awaited QEMU's
        # answer: how much of a checkpoint's pause QEMU itself took.
        self.busy_seconds = 0.0
        self._outstanding = 0
        self._busy_since = 0.0
        self._client = QMPClient(name)
        # qemu.qmp records every event in its default listener's history for
        # as long as the client lives; a daemon must not.
        self._client.events.event_filter = _mute
        self._client.register_listener(_CallbackListener(self._dispatch))
        self._subscribers: dict[int, tuple[frozenset[str] | None, Callable[[Event], None]]] = {}
        self._next_subscription = 0
        self._lost_waiters: list[Deferred[QMPFailure]] = []
        self._lost_reason: QMPFailure | None = None
        self._watcher: asyncio.Task[None] | None = None
        # Reported as our own errors; the library's log lines would repeat them.
        logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)

    @staticmethod
    def _start(coroutine: Coroutine[Any, Any, _R]) -> Deferred[_R]:
        """Run ``coroutine`` on the reactor's asyncio loop; its result as a Deferred."""
        return Deferred.fromFuture(asyncio_loop().create_task(coroutine))

    # -- connecting -------------------------------------------------------

    def connect(self) -> Deferred[QemuInfo]:
        """Connect, retrying until connect_timeout, then probe the QEMU."""
        return self._start(self._connect())

    async def _connect(self) -> QemuInfo:
        deadline = time.monotonic() + self.connect_timeout
        last_error = "no attempt made"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QMPConnectFailed(
                    f"cannot reach QEMU's QMP socket {self.socket_path} within "
                    f"{self.connect_timeout:g} s: {last_error}"
                )
            try:
                await asyncio.wait_for(self._client.connect(self.socket_path), remaining)
                break
            except ConnectError as e:
                last_error = str(e.exc) or type(e.exc).__name__
            except TimeoutError:
                last_error = "QEMU accepted the connection but sent no QMP greeting"
                continue
            await asyncio.sleep(min(CONNECT_RETRY_DELAY, max(0.0, deadline - time.monotonic())))
        self._lost_reason = None
        self._watcher = asyncio_loop().create_task(self._watch())
        try:
            self.info = await self._probe()
        except QMPFailure:
            await self._abandon()
            raise
        return self.info

    async def _probe(self) -> QemuInfo:
        version = await self._execute("query-version", None, self.command_timeout)
        commands = await self._execute("query-commands", None, self.command_timeout)
        return probed_info(self.socket_path, version, commands, self.required_commands)

    async def _abandon(self) -> None:
        """Drop a connection we will not use, swallowing how it ended."""
        try:
            await self._client.disconnect()
        except Exception:  # noqa: BLE001 - the connection is being dropped anyway
            pass

    @property
    def connected(self) -> bool:
        """Whether commands can be sent now (False once QEMU has gone, even before whenLost fires)."""
        return self._client.runstate == Runstate.RUNNING

    # -- commands ---------------------------------------------------------

    def execute(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        timeout: float | None = None,
        *,
        oob: bool = False,
    ) -> Deferred[Any]:
        """Run one QMP command; the Deferred fires with its ``return`` value.

        Fails with QMPCommandError, QMPTimeout or QMPDisconnected.  ``oob``
        sends it out of band (for ``yank``, which must pass stuck I/O).
        """
        limit = self.command_timeout if timeout is None else timeout
        return self._start(self._execute(command, arguments, limit, oob))

    async def _execute(
        self, command: str, arguments: dict[str, Any] | None, timeout: float, oob: bool = False
    ) -> Any:
        if not self.connected:
            raise QMPDisconnected(
                f"QMP {command} not sent: not connected to QEMU at {self.socket_path}"
                + (f" ({self._lost_reason})" if self._lost_reason else "")
            )
        self._outstanding += 1
        if self._outstanding == 1:
            self._busy_since = time.perf_counter()
        try:
            return await asyncio.wait_for(self._client.execute(command, arguments, oob=oob), timeout)
        except ExecuteError as e:
            raise QMPCommandError(command, e.error_class, str(e)) from None
        except TimeoutError:
            raise QMPTimeout(command, timeout) from None
        except (ExecInterruptedError, QMPError, OSError, EOFError) as e:
            raise QMPDisconnected(
                f"QMP {command} interrupted: lost the connection to QEMU at {self.socket_path} "
                f"({type(e).__name__}: {e})"
            ) from None
        finally:
            self._outstanding -= 1
            if self._outstanding == 0:
                self.busy_seconds += time.perf_counter() - self._busy_since

    def send_fd(self, fd: int, name: str, timeout: float | None = None) -> Deferred[None]:
        """Pass ``fd`` to QEMU under ``name`` (SCM_RIGHTS, then ``getfd``); the caller keeps its copy."""
        limit = self.command_timeout if timeout is None else timeout
        return self._start(self._send_fd(fd, name, limit))

    async def _send_fd(self, fd: int, name: str, timeout: float) -> None:
        if self._client.runstate != Runstate.RUNNING:
            raise QMPDisconnected(f"cannot pass a file to QEMU at {self.socket_path}: not connected")
        self._client.send_fd_scm(fd)
        await self._execute("getfd", {"fdname": name}, timeout)

    # -- events -----------------------------------------------------------

    def subscribe(
        self, callback: Callable[[Event], None], names: Iterable[str] | None = None
    ) -> Callable[[], None]:
        """Call ``callback(event)`` for each event (or each named one); returns an unsubscribe."""
        key = self._next_subscription
        self._next_subscription += 1
        self._subscribers[key] = (frozenset(names) if names is not None else None, callback)
        return lambda: self._subscribers.pop(key, None) and None

    def _dispatch(self, event: Event) -> None:
        for names, callback in list(self._subscribers.values()):
            if names is None or event["event"] in names:
                try:
                    callback(event)
                except Exception:  # noqa: BLE001 - one bad subscriber must not starve the others
                    self.log.failure("event subscriber failed on {event}", event=event["event"])

    # -- losing the connection -------------------------------------------

    def whenLost(self) -> Deferred[QMPFailure]:
        """A Deferred that fires with the reason once this connection is gone."""
        d: Deferred[QMPFailure] = Deferred()
        if self._lost_reason is not None:
            d.callback(self._lost_reason)
        else:
            self._lost_waiters.append(d)
        return d

    async def _watch(self) -> None:
        """Notice the connection ending and collect the library's error for it."""
        while self._client.runstate == Runstate.RUNNING:
            await self._client.runstate_changed()
        cause = "closed by colod"
        try:
            await self._client.disconnect()
        except Exception as e:  # noqa: BLE001 - this *is* the handling of it
            cause = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        self._lost(QMPDisconnected(f"connection to QEMU at {self.socket_path} lost ({cause})"))

    def _lost(self, reason: QMPFailure) -> None:
        if self._lost_reason is not None:
            return
        self._lost_reason = reason
        waiters, self._lost_waiters = self._lost_waiters, []
        for d in waiters:
            d.callback(reason)

    def disconnect(self) -> Deferred[None]:
        """Close the connection; safe to call at any time, and more than once."""
        return self._start(self._disconnect())

    async def _disconnect(self) -> None:
        await self._abandon()
        if self._watcher is not None:
            await self._watcher
        self._lost(QMPDisconnected(f"connection to QEMU at {self.socket_path} closed by colod"))
