"""Stand-ins for what an engine drives, for tests that run its machine on a task.Clock without QEMU.

Every call the engine makes on the guest and the devices is recorded in one
L{World}, in order, and answered by a Deferred the test fires by hand
(L{World.finish}, L{World.fail}), as Twisted's ClientService tests fire the
connection attempts their fake endpoint records.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred

from colod.config import PolicyName
from colod.failover.policy import Verdict
from colod.protocol import CheckpointDirtyPfnList, Record, ReplicationEndReason

#: What each call answers when finished: the shape its real counterpart returns.
_RESULTS: dict[str, Callable[[], object]] = {
    "first_records": list,
    "checkpoint_records": list,
    "emulator_records": list,
    "dirty_pfn_list": CheckpointDirtyPfnList,
}


@dataclass
class World:
    """The calls an engine made on its guest and devices, and those still waiting for an answer."""

    calls: list[str] = field(default_factory=list)
    pending: list[tuple[str, Deferred[Any]]] = field(default_factory=list)

    def call(self, name: str) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append(name)
        self.pending.append((name, d))
        return d

    def answer(self) -> None:
        """Answer the call waiting now, as its real counterpart would."""
        name, d = self.pending.pop(0)
        d.callback(_RESULTS.get(name, lambda: None)())

    def finish(self) -> None:
        """Answer every call, and those they lead to, until none waits: every step ends."""
        while self.pending:
            self.answer()

    def fail(self, error: Exception | None = None) -> None:
        """Fail the call waiting now: the step under way fails."""
        name, d = self.pending.pop(0)
        d.errback(error or RuntimeError(f"{name} failed"))


class FakeGuest:
    """Stands in for an IGuestEngine (colod.guest.qemu_guest.QemuGuest): its calls go to the World."""

    description = "a fake guest"
    memory_pages = 16
    copy_seconds = 0.0

    def __init__(self, world: World) -> None:
        self._world = world

    def suspend(self) -> Deferred[None]:
        return self._world.call("suspend")

    def resume(self) -> Deferred[None]:
        return self._world.call("resume")

    def copy_live(self, send: Callable[[Record], None]) -> Deferred[None]:
        return self._world.call("copy_live")

    def first_records(self) -> Deferred[list[Record]]:
        return self._world.call("first_records")

    def checkpoint_records(self, secondary_dirty: CheckpointDirtyPfnList) -> Deferred[list[Record]]:
        return self._world.call("checkpoint_records")

    def detach(self) -> Deferred[None]:
        return self._world.call("detach")

    def halt(self) -> Deferred[None]:
        return self._world.call("halt")

    def emulator_records(self) -> Deferred[list[Record]]:
        return self._world.call("emulator_records")

    def dirty_pfn_list(self) -> Deferred[CheckpointDirtyPfnList]:
        return self._world.call("dirty_pfn_list")

    def apply_checkpoint(self, records: list[Record]) -> Deferred[None]:
        return self._world.call("apply_checkpoint")

    def take_over(self) -> Deferred[None]:
        return self._world.call("take_over")


_HOOKS = frozenset({"setup", "teardown", "postsuspend", "preresume", "commit", "failover", "drop_secondary"})


class FakePolicy:
    """Stands in for a failover policy (colod.failover.policy): its decision is a call in the World,
    answered with ``verdict``."""

    name = PolicyName.FENCE

    def __init__(self, world: World) -> None:
        self._world = world
        self.verdict = Verdict(True, "the fake fence exited 0")

    def decide(self) -> Deferred[Verdict]:
        return self._world.call("policy.decide").addCallback(lambda _: self.verdict)


class FakeRecheckingPolicy(FakePolicy):
    """Stands in for a policy whose no may change (colod.failover.etcd_policy.EtcdPolicy): its rechecks are
    calls in the World too, answered with ``verdict``."""

    name = PolicyName.ETCD
    recheck_interval = 10.0

    def recheck(self) -> Deferred[Verdict]:
        return self._world.call("policy.recheck").addCallback(lambda _: self.verdict)


class FakeRequests:
    """Stands in for an OperatorRequest (colod.failover.policy): requests are put in ``waiting``."""

    def __init__(self) -> None:
        self.waiting: list[str] = []

    def take(self) -> str | None:
        return self.waiting.pop(0) if self.waiting else None

    def write(self, by: str) -> None:
        self.waiting.append(by)


class FakeDevices:
    """Stands in for a DeviceGroup (colod.devices.group): each hook is a call in the World."""

    def __init__(self, world: World) -> None:
        self._world = world

    def __getattr__(self, hook: str) -> Callable[[], Deferred[None]]:
        if hook not in _HOOKS:
            raise AttributeError(hook)
        return lambda: self._world.call(f"devices.{hook}")


class FakeLink:
    """Stands in for a PeerLink (colod.protocol.peer): keeps what the engine sends and how it ends it."""

    peer_address = "192.0.2.1:7000"
    bytes_sent = 0

    def __init__(self) -> None:
        self.sent: list[Record] = []
        #: None while open; then "closed", "refused: why" or the ReplicationEndReason it was ended with.
        self.ended: str | ReplicationEndReason | None = None

    def sendRecord(self, record: Record) -> None:
        self.sent.append(record)

    def close(self) -> None:
        self.ended = "closed"

    def refuse(self, why: str) -> None:
        self.ended = f"refused: {why}"

    def end(self, reason: ReplicationEndReason, text: str) -> None:
        self.ended = reason


class FakeQMP:
    """Stands in for the node's QMPConnection (colod.qmp): connected, never busy."""

    connected = True
    busy_seconds = 0.0


class FakeStatus:
    """Stands in for a StatusFile (colod.engine.status): keeps every status written."""

    def __init__(self) -> None:
        self.written: list[dict[str, Any]] = []

    def write(self, status: dict[str, Any]) -> None:
        self.written.append(status)


@dataclass(frozen=True)
class FakeDomain:
    """Stands in for a DomainConfig (colod.config): the engines read only its name."""

    name: str = "guest"
