# -*- test-case-name: tests.engine.test_engines -*-
"""What the primary's and the secondary's engines share.

Each engine drives a typed state machine (colod.engine.machine) whose states
and inputs are the protocol steps of xen-colo-protocol.md §3.4; the inputs
both have, which the core feeds, are L{EngineInputs}, and what a side must
add is L{EngineCore}'s abstract methods.  Around the machine sit three things
that keep it honest:

- the *inbox*: records from the peer wait there while a local step (a QMP
  call, sending a checkpoint) is under way, exactly as Xen leaves them unread
  in its socket, and are fed to the machine once it is ready to read; a record
  the machine has no transition for is a protocol error that names the record
  and the step, and ends replication cleanly;
- the *step runner*: one local step at a time, each completion fed back as the
  step's input.  Losing the peer starts a new *session*: a step of the old one
  still finishes its work (QEMU cannot be interrupted mid-command, and a
  checkpoint whose end has arrived is applied whole) but its completion is
  no longer fed to the machine, and the next step waits for it;
- the status file and the log, written on every change of state that matters.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any, Generic, Protocol, TypeVar

from automat import NoTransition
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from colod.config import DomainConfig
from colod.devices import DeviceGroup
from colod.engine.generation import Generation
from colod.engine.link_end import LinkEnd, PeerSilent, ProtocolViolation
from colod.engine.status import PauseStats, StatusFile
from colod.guest.interfaces import IGuestEngine
from colod.protocol import (
    HandshakeError,
    LocalEndedReplication,
    PeerEndedReplication,
    Record,
    ReplicationEndReason,
    StreamCutShort,
    StreamError,
    type_name,
)
from colod.protocol.handshake import Hello
from colod.protocol.peer import IPeerLinkObserver, PeerLink
from colod.qmp import QMP, QMPDisconnected
from colod.role import Role


class RequestRefused(Exception):
    """An administrator's request (colod.control) that this engine cannot carry out now; says why."""


def describe(reason: Failure) -> str:
    """One line for why a link ended, naming protocol errors as such."""
    error = reason.value
    if isinstance(error, StreamError | HandshakeError | ProtocolViolation):
        return f"protocol error: {error}"
    if isinstance(error, StreamCutShort):
        return str(error)
    if isinstance(error, ConnectionDone):
        return "the peer closed the link"
    if isinstance(error, ConnectionLost):
        return "the link to the peer broke"
    return str(error) or type(error).__name__


def record_name(record: Record) -> str:
    """A record as the protocol names it (CHECKPOINT_STATE with its id)."""
    name = type_name(type(record))
    state_id = getattr(record, "id", None)
    return f"{name}({state_id.name})" if state_id is not None else name


class EngineInputs(Protocol):
    """The inputs of both engines' machines that the core feeds."""

    def link_ready(self) -> None:
        """A peer is linked (NoTransition: this side takes none now)."""

    def step_failed(self, reason: Failure) -> None:
        """A local step failed (a QMP call, a device, the guest)."""

    def qemu_lost(self, reason: str) -> None:
        """The QMP connection to this node's QEMU is gone."""

    def stop(self) -> None:
        """colod is stopping (NoTransition: it already is)."""

    def drop_requested(self, reason: str) -> None:
        """An administrator ends replication; the guest runs on where it runs (NoTransition: none to end)."""


Inputs = TypeVar("Inputs", bound=EngineInputs)
Name = TypeVar("Name", bound=StrEnum)


@implementer(IPeerLinkObserver)
class EngineCore(ABC, Generic[Inputs, Name]):
    """The link, inbox, step runner and status of one domain's engine; subclasses add the machine.

    A subclass starts its machine in C{__init__} (C{self.machine}, which also
    names the state it is in: C{self.state}) and says how a record and the
    peer's loss become its inputs.
    """

    log = Logger()
    #: What this node is for the domain: a secondary that took over is the primary.
    role: Role
    #: The engine's machine: feed it inputs, never ask it where it is.
    machine: Inputs
    #: The name of the machine's state, for status.json and the log.
    state: Name

    def __init__(self, domain: DomainConfig, node: str, guest: IGuestEngine, devices: DeviceGroup,
                 clock: IReactorTime, status: StatusFile, qmp: QMP | None, *, generation: Generation) -> None:
        self.domain = domain
        self.generation = generation
        self.node = node
        self.guest = guest
        self.devices = devices
        self.qmp = qmp
        self.clock = clock
        self.status_file = status
        self.checkpoints = 0
        #: Whether the guest is protected: a checkpoint completed, and nothing lost since.
        self.protected = False
        self.error: str | None = None
        self.pauses = PauseStats()
        self.link: PeerLink | None = None
        self._inbox: deque[Record] = deque()
        self._busy = False
        self._session = 0
        self._tail: Deferred[None] = succeed(None)

    # -- what each side adds ---------------------------------------------------

    @abstractmethod
    def record_input(self, record: Record) -> bool:
        """Feed one record to the machine as its input; False (or NoTransition) if none fits."""

    @abstractmethod
    def admit(self, peer: Hello) -> str | None:
        """Why a link with ``peer`` (whose hello passed its checks) must be refused for its generation,
        or None; acts on what the peer's generation says of this node first."""

    @abstractmethod
    def lost(self, end: LinkEnd) -> None:
        """The peer is gone, or ended replication, or broke the protocol: feed the side's input for it
        (colod.engine.link_end.ACTIONS says which)."""

    # -- an administrator's requests (colod.control) ------------------------------

    @property
    def epoch(self) -> int:
        """The domain's epoch, as operators and logs call it: its generation on this node
        (colod.engine.generation), etcd's epoch under the etcd policy."""
        return self.generation.value

    def request_checkpoint(self) -> Deferred[int]:
        """A checkpoint now: the primary's to start (PrimaryEngine)."""
        return fail(RequestRefused(f"domain {self.domain.name}: this node is the {self.role}; "
                                   "checkpoints are the primary's to start"))

    def pause_checkpoints(self) -> None:
        """Start no checkpoint on the interval until resume_checkpoints: the primary's (PrimaryEngine)."""
        raise RequestRefused(f"domain {self.domain.name}: this node is the {self.role}; "
                             "checkpoints are the primary's to pause")

    def resume_checkpoints(self) -> None:
        """Checkpoint on the interval again: the primary's (PrimaryEngine)."""
        raise RequestRefused(f"domain {self.domain.name}: this node is the {self.role}; "
                             "checkpoints are the primary's to resume")

    def drop(self) -> None:
        """End replication on request: the peer is told, no takeover follows, the guest runs on."""
        try:
            self.machine.drop_requested(f"dropped on request on {self.node} (colodctl drop)")
        except NoTransition:
            raise RequestRefused(f"domain {self.domain.name} is {self.doing}: no replication to drop"
                                 ) from None

    def request_failover(self, by: str) -> None:
        """Take over on an administrator's word (colodctl failover, colod failover; ``by``: who, for
        the log).  Only a secondary waiting for that word can (colod.engine.secondary).

        @raise RequestRefused: this engine cannot take over now, and says why.
        """
        raise RequestRefused(f"domain {self.domain.name} is the primary here ({self.doing}): there is "
                             "nothing to take over")

    # -- the machine's surroundings ------------------------------------------

    def run_step(self, step: Callable[[], Awaitable[Any]], done: Callable[[], None]) -> None:
        """Run ``step`` (a coroutine function, or one returning a Deferred) after any step under
        way; feed ``done`` (or step_failed, or qemu_lost) when it ends.

        A step that ends at once ended inside the transition that started it,
        where the machine would take an input only after that transition, and
        the records after it too soon: its end is fed on the clock's next turn.
        """
        session = self._session

        def start(_: object) -> Deferred[Any]:
            self._busy = True
            result = maybeDeferred(step)
            if result.called:
                result = deferLater(self.clock, 0, lambda ended: ended, result)
            return result.addCallbacks(finished, failed)

        def finished(_: object) -> None:
            self._feed(session, done)

        def failed(failure: Failure) -> None:
            if session != self._session:
                self.log.warn("domain {domain}: a step cut short by the peer's loss failed too: {why}",
                              domain=self.domain.name, why=failure.getErrorMessage())
            if failure.check(QMPDisconnected) or (self.qmp is not None and not self.qmp.connected):
                # Not a failure of the step: the guest's QEMU is gone (the
                # connection's own loss may be reported a moment later).
                self._feed(session, lambda: self.machine.qemu_lost(failure.getErrorMessage()))
            else:
                self._feed(session, lambda: self.machine.step_failed(failure))

        self._tail.addCallback(start)

    def _feed(self, session: int, done: Callable[[], None]) -> None:
        """A step ended: feed its input (if its session still counts), then any waiting records."""
        self._busy = False
        try:
            if session == self._session:
                done()
            self.deliver()
        except Exception:  # noqa: BLE001 - the step chain must go on whatever the machine did
            self.log.failure("domain {domain}: engine error after a step", domain=self.domain.name)

    def shutdown(self) -> Deferred[None]:
        """colod is stopping: end replication as this side must; fires once no step is left."""
        try:
            self.machine.stop()
        except NoTransition:
            pass  # already stopping or stopped
        d: Deferred[None] = Deferred()
        self._tail.addCallback(lambda _: d.callback(None))
        return d

    def qemu_lost(self, reason: str) -> None:
        """The QMP connection to this node's QEMU is gone (the domain's service says so)."""
        self.machine.qemu_lost(reason)

    def new_session(self) -> None:
        """The peer is gone: what its records and our steps for it would have led to no longer counts."""
        self._session += 1
        self._inbox.clear()

    def deliver(self) -> None:
        """Feed waiting records to the machine while no local step is under way."""
        while self._inbox and not self._busy and self.link is not None:
            record = self._inbox.popleft()
            try:
                known = self.record_input(record)
            except NoTransition:
                known = False
            if not known:
                self.violation(f"{record_name(record)} is not allowed while {self.doing}")
                return

    @property
    def doing(self) -> str:
        """The state's name in words, for messages."""
        return self.state.value.replace("_", " ")

    def violation(self, reason: str | ProtocolViolation) -> None:
        """The peer broke the protocol: tell it, close the link, and end replication."""
        error = reason if isinstance(reason, ProtocolViolation) else ProtocolViolation(reason)
        link, self.link = self.link, None
        if link is not None:
            link.end(ReplicationEndReason.PROTOCOL_ERROR, str(error))
        self.lost(LinkEnd.of(Failure(error)))

    def cleanup_failed(self, what: str, reason: Failure) -> None:
        """A cleanup step failed: keep it in the error and the log, for whoever cleans up by hand."""
        problem = f"{what} failed: {reason.getErrorMessage()}"
        self.error = f"{self.error}; {problem}" if self.error else problem
        self.log.error("domain {domain}: {problem}", domain=self.domain.name, problem=problem)

    def publish(self, **extra: Any) -> None:
        """Write the status file from the engine's current state."""
        p50, p99 = self.pauses.percentile(50), self.pauses.percentile(99)
        last = self.pauses.recent[-1].seconds if self.pauses.recent else None
        self.status_file.write({
            "domain": self.domain.name, "node": self.node, "role": self.role, "state": self.state.value,
            "protected": self.protected, "checkpoints": self.checkpoints,
            "last_pause_ms": _ms(last), "pause_p50_ms": _ms(p50), "pause_p99_ms": _ms(p99),
            "failed_over": False, "error": self.error, "guest": self.guest.description,
            "generation": self.generation.value, **extra,
        })

    # -- IPeerLinkObserver -----------------------------------------------------

    def linkReady(self, link: PeerLink, peer: Hello) -> None:
        if self.link is not None:
            link.refuse(f"a second link, from {peer.node}, while one is open")
            return
        refusal = self.admit(peer)
        if refusal is not None:
            self.log.error("domain {domain}: refused the link with {role} {peer} at {address}: {why}",
                           domain=self.domain.name, role=peer.role.value, peer=peer.node,
                           address=link.peer_address, why=refusal)
            link.refuse(refusal)
            return
        try:
            self.link = link
            self.machine.link_ready()
        except NoTransition:
            self.link = None
            link.refuse(f"domain {self.domain.name} is {self.doing}")
            return
        self.log.info("domain {domain}: linked with {role} {peer} at {address}", domain=self.domain.name,
                      role=peer.role.value, peer=peer.node, address=link.peer_address)
        self.publish()

    def recordReceived(self, link: PeerLink, record: Record) -> None:
        if link is self.link:
            self._inbox.append(record)
            self.deliver()

    def peerSilent(self, link: PeerLink, seconds: float) -> None:
        if link is self.link:
            self.link = None
            link.close()
            self.lost(LinkEnd.of(Failure(PeerSilent(f"nothing heard from the peer for {seconds:.1f} s"))))

    def linkLost(self, link: PeerLink, reason: Failure) -> None:
        if link is self.link:
            self.link = None
            self.lost(LinkEnd.of(reason))
        elif not reason.check(HandshakeError, PeerEndedReplication, LocalEndedReplication):
            # A link this engine had already let go (its own log said why); a handshake that
            # failed was logged by the link, with the remote address.
            self.log.info("domain {domain}: the link with {address}, given up earlier, is closed",
                          domain=self.domain.name, address=link.peer_address)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
