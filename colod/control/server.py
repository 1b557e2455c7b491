# -*- test-case-name: tests.control.test_server -*-
"""The control socket: a unix socket where colodctl's requests are answered (colod.control.protocol).

The socket is made with mode 0600, so only the daemon's user (root) may
connect, beside a lock file (``<path>.lock``, Twisted's, naming the pid) that
keeps a second colod from taking the path while the first lives: it is
refused, by name, before it touches any QEMU.  The socket of a colod that
was killed is taken over.

Nothing a client does can hold a checkpoint up: requests run on the reactor
between the engine's steps and never block it.  Each connection is served one
request at a time, and stops being read while one is under way; a client
that does not read its responses stops being served once its unread
responses fill the socket, and is dropped after a while; so is one that
says nothing for long; past a number of clients a new one is told ``busy``
and closed (Limits).
"""

from __future__ import annotations

import os
import typing
from collections.abc import Awaitable, Callable
from typing import Any, cast

import attrs
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IPushProducer,
    IReactorTime,
    IReactorUNIX,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from colod.control.protocol import (
    MAX_REQUEST,
    ErrorCode,
    LineReader,
    LineTooLong,
    Request,
    RequestError,
    encode_response,
    parse_request,
)


@attrs.frozen
class Limits:
    """What one client may take of the daemon."""

    #: Clients connected at once, at the most.
    clients: int = 64
    #: Seconds a client may stay silent between requests.
    idle: float = 300.0
    #: Seconds a client may leave its responses unread once they fill its socket.
    stalled: float = 10.0

#: What carries out a request: its result, or RequestError.
Handler = Callable[[Request], Awaitable[dict[str, Any]]]


class _Client(typing.Protocol):
    """A client's unix socket transport, as this server uses it (twisted.internet.unix.Server)."""

    def write(self, data: bytes) -> None: ...
    def loseWriteConnection(self) -> None: ...
    def abortConnection(self) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def registerProducer(self, producer: object, streaming: bool) -> None: ...


@implementer(IPushProducer)
class ControlConnection(Protocol):
    """One client: its requests read, carried out and answered in order."""

    log = Logger()

    def __init__(self, factory: ControlFactory) -> None:
        self.factory = factory
        self._reader = LineReader(MAX_REQUEST)
        #: A request is under way: the next waits, and the socket is not read meanwhile.
        self._busy = False
        #: The client's unread responses fill its socket (the transport paused this producer).
        self._stalled: IDelayedCall | None = None
        self._idle: IDelayedCall | None = None
        self._closing = False

    @property
    def client(self) -> _Client:
        return cast(_Client, self.transport)

    def connectionMade(self) -> None:
        limits = self.factory.limits
        if len(self.factory.clients) >= limits.clients:
            self._close_with(RequestError(ErrorCode.BUSY, f"{limits.clients} clients are connected already; "
                                                          "try again later"))
            return
        self.factory.clients.add(self)
        self.client.registerProducer(self, True)
        self._wait_idle()

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self._reader.receive_data(data)
        self._serve()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.clients.discard(self)
        for call in (self._idle, self._stalled):
            if call is not None and call.active():
                call.cancel()

    # -- IPushProducer: the transport says when the client's unread responses fill its socket --

    def pauseProducing(self) -> None:
        if self._stalled is None:
            self._stalled = self.factory.clock.callLater(self.factory.limits.stalled, self._drop_stalled)
            self._reading()

    def resumeProducing(self) -> None:
        if self._stalled is not None:
            if self._stalled.active():
                self._stalled.cancel()
            self._stalled = None
            self._reading()
            self._serve()

    def stopProducing(self) -> None:
        self._closing = True

    # -- serving ----------------------------------------------------------------

    def _serve(self) -> None:
        """Answer the requests that have come, one at a time, while the client reads the answers."""
        while not (self._busy or self._stalled or self._closing):
            try:
                line = self._reader.next_line()
            except LineTooLong as e:
                self._close_with(RequestError(ErrorCode.LINE_TOO_LONG, f"{e}; closing the connection"))
                return
            if line is None:
                return
            self._wait_idle()
            try:
                request = parse_request(line)
            except RequestError as error:
                self.client.write(encode_response(error=error))
                continue
            self._busy = True
            self._reading()
            running = Deferred.fromCoroutine(self._carry_out(request))
            running.addCallback(self._answer)

    async def _carry_out(self, request: Request) -> bytes:
        try:
            return encode_response(await self.factory.handle(request))
        except RequestError as error:
            return encode_response(error=error)
        except Exception as error:  # noqa: BLE001 - the client hears of it, the log has the rest
            self.log.failure("control socket: {command} failed", Failure(error), command=request.command)
            return encode_response(error=RequestError(ErrorCode.INTERNAL, f"{request.command} failed: "
                                                      f"{error}; see colod's log"))

    def _answer(self, response: bytes) -> None:
        self._busy = False
        if self._closing:
            return
        self.client.write(response)
        self._wait_idle()
        self._reading()
        self._serve()

    # -- keeping a client within bounds -----------------------------------------

    def _reading(self) -> None:
        """Read the socket only while a request could be taken: nothing buffers up meanwhile."""
        if self._busy or self._stalled:
            self.client.pauseProducing()
        elif not self._closing:
            self.client.resumeProducing()

    def _wait_idle(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = self.factory.clock.callLater(self.factory.limits.idle, self._drop_idle)

    def _drop_idle(self) -> None:
        if self._busy:  # a checkpoint may be waited for longer: its own deadline ends it
            self._wait_idle()
            return
        self._close_with(RequestError(ErrorCode.TIMEOUT, f"nothing asked for {self.factory.limits.idle:g} s; "
                                                         "closing the connection"))

    def _drop_stalled(self) -> None:
        self.log.warn("control socket: dropping a client that left its responses unread for {seconds:g} s",
                      seconds=self.factory.limits.stalled)
        self._closing = True
        self.client.abortConnection()

    def _close_with(self, error: RequestError) -> None:
        """Answer ``error`` and close, reading (and dropping) what the client still sends meanwhile: a
        socket closed with bytes unread would reset the connection, and the answer with it."""
        self._closing = True
        self.client.write(encode_response(error=error))
        self.client.loseWriteConnection()
        self.client.resumeProducing()
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = self.factory.clock.callLater(self.factory.limits.stalled, self.client.abortConnection)


class ControlFactory(Factory):
    """The control socket's connections, and what they share."""

    noisy = False

    def __init__(self, handle: Handler, clock: IReactorTime, limits: Limits) -> None:
        self.handle = handle
        self.clock = clock
        self.limits = limits
        self.clients: set[ControlConnection] = set()

    def buildProtocol(self, addr: object) -> ControlConnection:
        return ControlConnection(self)


class ControlServer:
    """Listens on the control socket for as long as colod runs."""

    log = Logger()

    def __init__(self, path: str, handle: Handler, reactor: Any, limits: Limits = Limits()) -> None:
        """``reactor`` provides IReactorUNIX and IReactorTime."""
        self.path = path
        self._reactor = reactor
        self._factory = ControlFactory(handle, reactor, limits)
        self._port: IListeningPort | None = None

    def listen(self) -> str | None:
        """Listen now; returns why it cannot (as ``control_socket: ...``), or None."""
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            self._port = IReactorUNIX(self._reactor).listenUNIX(self.path, self._factory, mode=0o600,
                                                                wantPID=True)
        except OSError as e:
            return f"control_socket: cannot make {self.path}: {e.strerror}"
        except CannotListenError as e:
            if e.socketError == "Cannot acquire lock":
                return (f"control_socket: {self.path} is held by another live colod (pid "
                        f"{_holder(self.path)}); stop it, or give this one a control_socket of its own")
            return f"control_socket: cannot listen on {self.path}: {_reason(e)}"
        self.log.info("control socket at {path} (colodctl)", path=self.path)
        return None

    def stop(self) -> Deferred[None]:
        """Stop listening (the socket and its lock file go) and close every client."""
        for client in list(self._factory.clients):
            client.client.abortConnection()
        port, self._port = self._port, None
        if port is None:
            return succeed(None)
        return maybeDeferred(port.stopListening).addCallback(lambda _: None)


def _holder(path: str) -> str:
    """The pid Twisted's lock file next to ``path`` names ("unknown" if it cannot be read)."""
    try:
        return os.readlink(path + ".lock")
    except OSError:
        return "unknown"


def _reason(error: CannotListenError) -> str:
    socket_error = error.socketError
    return getattr(socket_error, "strerror", None) or str(socket_error)
