"""A QMP fault proxy: a real QEMU's QMP socket, except for the commands a test makes fail or hang.

It stands in for a QEMU that refuses a given command (an error reply of the
test's choosing, under the command's own id, without QEMU ever seeing the
command) or that never answers it (a hung QEMU, to test deadlines).
Everything else is the real QEMU behind it: the greeting, the capabilities
negotiation, every other command (in band or out of band) and its reply, the
events, and the file descriptors passed with SCM_RIGHTS go through unchanged.

A stalled command is swallowed: QEMU never runs it, and the commands after it
are still answered.  QMP is JSON; QEMU ends each message with a newline, and
the proxy puts its own replies between two of QEMU's lines.  A client may
write its messages back to back (qemu.qmp does), so that direction is cut
into messages by matching braces, as QEMU's own JSON streamer does; whatever
is not a JSON object naming a command is passed on as it came.
"""

from __future__ import annotations

import json
import os
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IFileDescriptorReceiver, IListeningPort, ITransport, IUNIXTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

Message = dict[str, Any]


@attrs.define
class Rule:
    """What the proxy does with a command instead of forwarding it.

    @ivar error: the QMP error (``class`` and ``desc``) to answer with; None stalls the command.
    @ivar times: how many commands the rule takes; None: every one.
    @ivar hits: how many it has taken so far.
    """

    command: str
    error: dict[str, str] | None
    times: int | None = None
    hits: int = 0

    @property
    def active(self) -> bool:
        return self.times is None or self.hits < self.times


class MessageCutter:
    """Cuts the client's byte stream into top-level JSON objects and the bytes between them, sans-IO."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scanned = 0  # how much of _buffer the scan below has seen
        self._depth = 0
        self._in_string = False
        self._escaped = False

    def feed(self, data: bytes) -> list[bytes]:
        """The pieces ``data`` completes, in stream order: each a whole object, or bytes outside one."""
        buf = self._buffer
        buf += data
        pieces: list[bytes] = []
        start = 0
        for i in range(self._scanned, len(buf)):
            c = buf[i]
            if self._depth == 0:
                if c == ord("{"):
                    if i > start:
                        pieces.append(bytes(buf[start:i]))
                    start, self._depth = i, 1
            elif self._in_string:
                if self._escaped:
                    self._escaped = False
                elif c == ord("\\"):
                    self._escaped = True
                elif c == ord('"'):
                    self._in_string = False
            elif c == ord('"'):
                self._in_string = True
            elif c in b"{[":
                self._depth += 1
            elif c in b"}]":
                self._depth -= 1
                if self._depth == 0:
                    pieces.append(bytes(buf[start:i + 1]))
                    start = i + 1
        if self._depth == 0 and start < len(buf):
            pieces.append(bytes(buf[start:]))  # bytes between objects (a space carrying an fd, say)
            start = len(buf)
        del buf[:start]
        self._scanned = len(buf)
        return pieces


def _command(piece: bytes) -> tuple[str, Message] | None:
    """The command ``piece`` executes, with the whole message; None if it is no command."""
    if not piece.startswith(b"{"):
        return None
    try:
        message = json.loads(piece)
    except ValueError:
        return None
    if not isinstance(message, dict):
        return None
    command = message.get("execute", message.get("exec-oob"))
    return (command, message) if isinstance(command, str) else None


@implementer(IFileDescriptorReceiver)
class _ClientSide(Protocol):
    """A client's connection to the proxy, and (once connected) the proxy's own to QEMU."""

    def __init__(self, proxy: QMPProxy) -> None:
        self.proxy = proxy
        self.qemu: IUNIXTransport | None = None
        self._cutter = MessageCutter()
        self._to_qemu: list[bytes | int] = []  # waiting for the connection to QEMU: bytes, or an fd
        self._fds: list[int] = []  # passed on to QEMU; closed once the connection to QEMU is gone
        self._replies: list[bytes] = []  # the proxy's own, waiting for QEMU's greeting or line end
        self._mid_line = True  # nothing from QEMU yet: no reply may come before its greeting

    def connectionMade(self) -> None:
        self.proxy.clients.append(self)
        d = UNIXClientEndpoint(reactor, self.proxy.qemu_socket, timeout=5).connect(
            Factory.forProtocol(lambda: _QemuSide(self)))
        d.addErrback(lambda _: self.transport.loseConnection())

    def qemu_connected(self, qemu: ITransport) -> None:
        self.qemu = IUNIXTransport(qemu)
        waiting, self._to_qemu = self._to_qemu, []
        for item in waiting:
            self._send(item)

    def _send(self, item: bytes | int) -> None:
        if self.qemu is None:
            self._to_qemu.append(item)
        elif isinstance(item, int):
            self.qemu.sendFileDescriptor(item)  # it goes with the next byte written
        else:
            self.qemu.write(item)

    def fileDescriptorReceived(self, descriptor: int) -> None:
        self._fds.append(descriptor)
        self._send(descriptor)

    def dataReceived(self, data: bytes) -> None:
        for piece in self._cutter.feed(data):
            found = _command(piece)
            rule = self.proxy.rule_for(found[0]) if found is not None else None
            if found is None or rule is None:
                self._send(piece)
                continue
            rule.hits += 1
            if rule.error is not None:
                reply: Message = {"error": rule.error}
                if "id" in found[1]:
                    reply["id"] = found[1]["id"]
                self._reply(json.dumps(reply).encode() + b"\r\n")

    def _reply(self, line: bytes) -> None:
        self._replies.append(line)
        if not self._mid_line:
            self._flush_replies()

    def _flush_replies(self) -> None:
        replies, self._replies = self._replies, []
        self.transport.writeSequence(replies)

    def from_qemu(self, data: bytes) -> None:
        self.transport.write(data)
        if data:
            self._mid_line = not data.endswith(b"\n")
        if not self._mid_line and self._replies:
            self._flush_replies()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self in self.proxy.clients:
            self.proxy.clients.remove(self)
        if self.qemu is not None:
            self.qemu.loseConnection()  # which writes what waits first, fds included
        else:
            self.qemu_lost()

    def qemu_lost(self) -> None:
        self.transport.loseConnection()
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)


class _QemuSide(Protocol):
    """The proxy's connection to QEMU, on behalf of one client."""

    def __init__(self, client: _ClientSide) -> None:
        self.client = client

    def connectionMade(self) -> None:
        self.client.qemu_connected(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.client.from_qemu(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.client.qemu_lost()


class QMPProxy:
    """A unix-socket proxy in front of one QEMU's QMP socket that fails or stalls chosen commands.

    Each client connection gets its own connection to QEMU; the rules hold
    for all of them, from the moment they are set.
    """

    def __init__(self, qemu_socket: str) -> None:
        self.qemu_socket = qemu_socket
        self.rules: list[Rule] = []
        self.clients: list[_ClientSide] = []
        self.path: str | None = None
        self._listening: IListeningPort | None = None

    def listen(self, path: str) -> str:
        """Listen at ``path`` (a unix socket); returns it, for the QMP client to connect to."""
        self._listening = reactor.listenUNIX(path, Factory.forProtocol(lambda: _ClientSide(self)))
        self.path = path
        return path

    def close(self) -> Deferred[None] | None:
        """Stop listening and cut every connection at once."""
        for client in list(self.clients):
            client.transport.abortConnection()  # type: ignore[attr-defined]
        return self._listening.stopListening() if self._listening is not None else None

    def fail(self, command: str, desc: str, class_: str = "GenericError", times: int | None = None) -> Rule:
        """Answer ``command`` (the next ``times`` of it; None: all) with this QMP error, as QEMU would."""
        return self._add(Rule(command, {"class": class_, "desc": desc}, times))

    def stall(self, command: str, times: int | None = None) -> Rule:
        """Never answer ``command`` (the next ``times`` of it; None: all); QEMU never sees it."""
        return self._add(Rule(command, None, times))

    def clear(self) -> None:
        """Forward every command again."""
        self.rules = []

    def rule_for(self, command: str) -> Rule | None:
        """The first rule that still takes ``command``, if any."""
        return next((r for r in self.rules if r.command == command and r.active), None)

    def _add(self, rule: Rule) -> Rule:
        self.rules.append(rule)
        return rule
