"""The control socket's server on a real unix socket: who may connect, one colod per path, and clients that
misbehave (garbage, huge lines, unknown commands, many at once, one that never reads) answered or dropped
while the reactor, and so every checkpoint, goes on.

ServerTests run the server on the test's reactor with a FakeCommands; the lab tests at the end send the same
bad requests to a real primary daemon protecting its guest.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import subprocess
import time
from types import SimpleNamespace
from typing import Any, cast

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, LoopingCall
from twisted.python.failure import Failure

from colod.config import Config
from colod.control.commands import HEALTH_AGE, Commands
from colod.control.protocol import VERSION, Command, ErrorCode, Request, RequestError
from colod.control.server import ControlServer, Limits
from colod.control.status import Domain
from colod.devices.interfaces import DeviceHealth
from colod.testing.lab import Poll
from tests.cluster import ClusterTestCase, wait
from tests.rig import ScratchTestCase, async_test, sleep

#: A status result of some size, so that unread responses fill a socket soon.
BULK = "x" * 4096


class FakeCommands:
    """Stands in for colod.control.commands.Commands: answers status at once, holds checkpoints until
    released, and refuses drop."""

    def __init__(self) -> None:
        self.held: list[Deferred[None]] = []
        self.served = 0

    async def __call__(self, request: Request) -> dict[str, Any]:
        self.served += 1
        if request.command is Command.CHECKPOINT:
            waiting: Deferred[None] = Deferred()
            self.held.append(waiting)
            await waiting
            return {"checkpoint": len(self.held)}
        if request.command is Command.DROP:
            raise RequestError(ErrorCode.REFUSED, "not now")
        return {"bulk": BULK}


class Client(Protocol):
    """A test's client: keeps every response line; ``reading=False`` never reads one."""

    def __init__(self, reading: bool = True) -> None:
        self.reading = reading
        self.buffer = b""
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        if not self.reading:
            self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data

    def connectionLost(self, reason: Failure) -> None:
        self.closed.callback(None)

    @property
    def responses(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.buffer.splitlines()]

    def send(self, *lines: bytes) -> None:
        self.transport.write(b"".join(line + b"\n" for line in lines))


def request(command: str, **arguments: str) -> bytes:
    return json.dumps({"version": VERSION, "command": command, **arguments}).encode()


class ServerTests(ScratchTestCase):
    def start(self, limits: Limits | None = None) -> ControlServer:
        self.commands = FakeCommands()
        self.path = str(self.workdir / "run" / "control.sock")
        server = ControlServer(self.path, self.commands, reactor, limits or Limits())
        self.assertIsNone(server.listen())
        self.addCleanup(server.stop)
        return server

    async def connect(self, reading: bool = True) -> Client:
        client = Client(reading)
        await UNIXClientEndpoint(reactor, self.path).connect(Factory.forProtocol(lambda: client))
        self.addCleanup(lambda: client.transport.abortConnection())
        return client

    async def closed(self, client: Client) -> None:
        await wait(Poll(lambda: client.closed.called or None, 5.0, "the server closing the connection"))

    async def responses(self, client: Client, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        await wait(Poll(lambda: len(client.responses) >= count or None, timeout, f"{count} responses"))
        return client.responses

    def test_only_the_daemons_user_and_one_colod(self) -> None:
        """Mode 0600, in a directory made 0700; a second server on the path is refused, naming the first."""
        server = self.start()
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(self.path)).st_mode), 0o700)
        second = ControlServer(self.path, FakeCommands(), reactor)
        self.assertEqual(second.listen(), f"control_socket: {self.path} is held by another live colod "
                         f"(pid {os.getpid()}); stop it, or give this one a control_socket of its own")
        self.assertTrue(stat.S_ISSOCK(os.stat(self.path).st_mode))
        return server.stop().addCallback(lambda _: self.assertFalse(os.path.exists(self.path)))

    def test_a_killed_colods_socket_is_taken_over(self) -> None:
        """The socket and lock file a killed colod left (its pid dead) are no obstacle."""
        self.path = str(self.workdir / "control.sock")
        dead = subprocess.Popen(["true"])
        dead.wait()
        with socket.socket(socket.AF_UNIX) as left:
            left.bind(self.path)
        os.symlink(str(dead.pid), self.path + ".lock")
        server = ControlServer(self.path, FakeCommands(), reactor)
        self.assertIsNone(server.listen())
        return server.stop()

    @async_test
    async def test_bad_requests_are_answered_and_the_next_served(self) -> None:
        self.start()
        client = await self.connect()
        client.send(b"garbage", b"\xff\xfe", request("reboot"), b'{"command": "status"}',
                    request("drop", domain="lab"), request("status"))
        answers = await self.responses(client, 6)
        self.assertEqual([a.get("error", {}).get("code") for a in answers],
                         ["bad-request", "bad-request", "unknown-command", "unsupported-version", "refused",
                          None])
        self.assertEqual(answers[-1], {"version": VERSION, "ok": True, "result": {"bulk": BULK}})
        self.assertFalse(client.closed.called)

    @async_test
    async def test_a_huge_line_is_answered_then_closed(self) -> None:
        """Past the limit, before any newline: answered line-too-long, then closed, the rest unread."""
        self.start()
        client = await self.connect()
        client.transport.write(b"{" * (200 << 10))
        await self.closed(client)
        [answer] = client.responses
        self.assertEqual(answer["error"]["code"], "line-too-long")
        self.assertEqual(self.commands.served, 0)

    @async_test
    async def test_one_request_at_a_time_in_order(self) -> None:
        """A checkpoint under way holds the next request of its client, not another client's."""
        self.start()
        first, second = await self.connect(), await self.connect()
        first.send(request("checkpoint", domain="lab"), request("status"))
        await wait(Poll(lambda: self.commands.held or None, 5.0, "the checkpoint asked for"))
        second.send(request("status"))
        await self.responses(second, 1)
        self.assertEqual(first.responses, [])
        self.commands.held[0].callback(None)
        answers = await self.responses(first, 2)
        self.assertEqual([a["result"] for a in answers], [{"checkpoint": 1}, {"bulk": BULK}])

    @async_test
    async def test_a_client_that_never_reads_is_dropped_and_blocks_nothing(self) -> None:
        """Its unread responses fill its socket: it is served no more, then dropped; meanwhile the reactor
        turns as often as ever and another client is answered at once."""
        self.start(Limits(stalled=1.0))
        ticks: list[float] = []
        ticker = LoopingCall(lambda: ticks.append(time.monotonic()))
        ticker.start(0.01)
        self.addCleanup(ticker.stop)
        silent = await self.connect(reading=False)
        silent.send(*[request("status")] * 5000)
        await sleep(0.3)
        served = self.commands.served
        self.assertLess(served, 5000)  # it was stopped, long before the end of what it sent
        other = await self.connect()
        other.send(request("status"))
        await self.responses(other, 1, timeout=1.0)
        await self.closed(silent)
        self.assertLessEqual(self.commands.served, served + 1)  # the other client's
        self.assertLess(max(b - a for a, b in zip(ticks, ticks[1:], strict=False)), 0.5)

    @async_test
    async def test_past_the_clients_limit_busy(self) -> None:
        self.start(Limits(clients=2))
        await self.connect()
        await self.connect()
        third = await self.connect()
        await self.closed(third)
        self.assertEqual(third.responses[0]["error"]["code"], "busy")

    @async_test
    async def test_a_silent_client_is_dropped(self) -> None:
        self.start(Limits(idle=0.3))
        client = await self.connect()
        await self.closed(client)
        self.assertEqual(client.responses[0]["error"]["code"], "timeout")


def raw_client(path: str) -> socket.socket:
    """A plain socket to a daemon's control socket, never blocking the test's reactor for long."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(5.0)
    client.connect(path)
    return client


def answer(client: socket.socket) -> dict[str, Any]:
    """The next response line (one recv holds one of these short ones)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = client.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    return dict(json.loads(data))


class BadClientsTests(ClusterTestCase):
    """Bad requests and a client that never reads, on the control socket of a real primary daemon while it
    protects its guest: each is answered or dropped, and checkpoints go on meanwhile at their pace."""

    @async_test
    async def test_bad_clients_do_not_hold_checkpoints_up(self) -> None:
        lab = await self.start_cluster()
        path = str(lab.primary.control_socket)
        before = lab.primary.status()
        # A client that never reads, its socket soon full of unread answers.
        silent = raw_client(path)
        self.addCleanup(silent.close)
        silent.setblocking(False)
        flood = request("status") + b"\n"
        sent = 0
        with contextlib.suppress(BlockingIOError):
            while sent < 20000:
                silent.send(flood)
                sent += 1
        # Garbage, unknown commands and huge lines, each answered by name.
        client = raw_client(path)
        self.addCleanup(client.close)
        for line, code in ((b"\x00garbage\xff", "bad-request"), (request("reboot"), "unknown-command"),
                           (b'{"version": 9, "command": "status"}', "unsupported-version"),
                           (request("checkpoint"), "bad-request"),
                           (request("checkpoint", domain="nope"), "unknown-domain")):
            client.sendall(line + b"\n")
            self.assertEqual(answer(client)["error"]["code"], code, line)
        client.sendall(request("status") + b"\n")
        self.assertTrue(answer(client)["result"]["domains"][0]["protected"])
        huge = raw_client(path)
        self.addCleanup(huge.close)
        with contextlib.suppress(OSError):  # the daemon may close before all of it is sent
            huge.sendall(b"x" * (1 << 20))
        self.assertEqual(answer(huge)["error"]["code"], "line-too-long")
        self.assertEqual(huge.recv(1), b"")
        # Meanwhile, and for the next seconds, checkpoints go on; then the silent one is dropped.
        started = time.monotonic()
        await wait(lab.until_checkpoints(before["checkpoints"] + 50, 15.0))
        await wait(Poll(lambda: "dropping a client that left its responses unread" in lab.primary.logs()
                        or None, 20.0, "the silent client dropped", lab.primary.context))
        after = lab.primary.status()
        self.assertTrue(after["protected"])
        self.assertLess(after["pause_p99_ms"], 1000)
        self.assertLess(time.monotonic() - started, 30)
        self.assertNotIn("Traceback", lab.primary.logs())


class FakeDevices:
    """Stands in for a domain's DeviceGroup (colod.devices): its health answered when the test says."""

    def __init__(self) -> None:
        self.asked: list[Deferred[list[DeviceHealth]]] = []

    def health(self) -> Deferred[list[DeviceHealth]]:
        self.asked.append(Deferred())
        return self.asked[-1]


class HealthTests(ScratchTestCase):
    """Status floods add no QMP calls: a domain's device health is asked of QEMU once at a time, and given
    again for HEALTH_AGE (Commands, with a FakeDevices on a stand-in domain and a task.Clock)."""

    def test_one_query_at_a_time_and_reused_for_a_while(self) -> None:
        clock = Clock()
        devices = FakeDevices()
        domain = SimpleNamespace(domain=SimpleNamespace(name="lab"), engine=SimpleNamespace(devices=devices),
                                 qemu_version=None)
        commands = Commands(cast(Config, None), [cast(Domain, domain)], clock, lambda level: "info", 1.0)
        answers = [commands._devices(cast(Domain, domain)) for _ in range(10)]
        self.assertEqual(len(devices.asked), 1)
        devices.asked[0].callback([DeviceHealth("xvda", True)])
        expected = [{"name": "xvda", "healthy": True, "detail": ""}]
        self.assertEqual([self.successResultOf(answer) for answer in answers], [expected] * 10)
        clock.advance(HEALTH_AGE / 2)
        self.assertEqual(self.successResultOf(commands._devices(cast(Domain, domain))), expected)
        self.assertEqual(len(devices.asked), 1)
        clock.advance(HEALTH_AGE)
        commands._devices(cast(Domain, domain))
        self.assertEqual(len(devices.asked), 2)
