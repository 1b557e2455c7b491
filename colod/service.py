# -*- test-case-name: tests.test_tap,tests.test_startup_failures,tests.engine.test_daemons -*-
"""The daemon's service tree: one ColodService, one DomainService per guest.

A DomainService keeps a QMP connection to its guest's QEMU: it connects at
start (retrying until the QEMU is there, colod.retry), says what it found,
reconnects when the connection is lost, and closes it at stop.  For a Xen domain that QEMU is
libxl's device model, found from the domain's id; a Xen secondary has no
QEMU until it takes over (Xen's receiver creates it), so it needs none.  Once QEMU is reached the
first time it builds the domain's checkpoint engine (colod.engine) and its
peer link: the secondary listens, the primary connects.  At stop the engine
ends replication as its role must (the primary's guest runs on), then the
link and QMP close.

What stops a domain being protected at all (colod.startup's checks at start,
a QEMU without the COLO commands, a peer port taken, a memory image it cannot
use) ends colod: one line in the log and exit status 1 (ColodService.fail),
so that a service manager sees the failure rather than a daemon that idles.

Under the etcd failover policy (colod.failover.etcd_policy) each domain has
a seat in etcd: a lease kept alive.  The primary claims the domain before
its engine runs, with its generation as the epoch it knows; it protects the
guest only once it has won (the won epoch becomes its generation), and halts
its guest and ends if another node owns the domain or etcd's epoch is newer.
From then on a lease it may lose fences the guest (the engine's ``fenced``),
and so does its guard process (colod.failover.guard) should colod die or
freeze.  The secondary claims through its policy when its primary is lost.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from twisted.application.service import MultiService, Service
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from colod import startup
from colod.config import Config, DomainConfig, PolicyName
from colod.devices import DeviceGroup, nbd_tls
from colod.engine.core import EngineCore
from colod.engine.generation import Generation, GenerationError
from colod.engine.peering import PeerEndpoint
from colod.engine.primary import PrimaryEngine
from colod.engine.secondary import SecondaryEngine
from colod.engine.status import StatusFile
from colod.failover.etcd_policy import EtcdOperatorRequest, EtcdPolicy, EtcdSeat
from colod.failover.guarding import GuardError, GuardProcess
from colod.failover.monotonic import MonotonicClock
from colod.failover.policy import (
    FenceCommand,
    HeartbeatOnly,
    Manual,
    OperatorRequest,
    TakeoverPolicy,
)
from colod.guest.device_model import LOAD_COMMANDS, DeviceModelEngine
from colod.guest.qemu_guest import QemuGuest
from colod.operations import OperationsService
from colod.qmp import REQUIRED_COMMANDS, QemuInfo, QMPCapabilityError, QMPConnection, QMPFailure
from colod.reactor import asyncio_loop
from colod.retry import Retry
from colod.role import Role
from colod.tls import TLSFileError
from colod.xen.domain import DomainError, qmp_socket
from colod.xen.setup import DEVICE_MODEL_COMMANDS, XenSetupError, domain_id, primary_guest, secondary_guest

# How long to wait before trying again to reach a QEMU that was not reachable.
RECONNECT_DELAY = 2.0
# How long ending replication may take at stop (it waits on QMP calls with their own deadlines).
STOP_DEADLINE = 20.0
# QMP calls in a row on one node's critical path of a checkpoint, at the most (the first
# round sets the devices up as well).
CHECKPOINT_QMP_CALLS = 8


def checkpoint_timeout(config: Config) -> float:
    """How long a checkpoint may take before the primary gives its secondary up as hung.

    Every QMP call of both nodes on the checkpoint's path taking its whole
    deadline, plus the link's silence timeout for the bytes in between.
    """
    return 2 * CHECKPOINT_QMP_CALLS * config.qmp.command_timeout + config.peer.heartbeat_timeout


class ProtectionError(Exception):
    """The domain cannot be protected as configured; says why."""


class DomainService(Service):
    """Holds the QMP connection to one protected domain's QEMU."""

    log = Logger()

    def __init__(self, config: Config, domain: DomainConfig, reactor: IReactorTime,
                 fail: Callable[[str], None]) -> None:
        """``reactor`` also provides IReactorProcess for a Xen domain: its tools and helpers are processes."""
        self.setName(f"domain-{domain.name}")
        self._config = config
        self._domain = domain
        self._reactor = reactor
        #: Ends colod: the domain cannot be protected as configured (ColodService.fail).
        self._fail = fail
        self._reaching = Retry(self._reach, succeeded=self._connected, failed=self._connect_failed,
                               delay=RECONNECT_DELAY, clock=reactor)
        self.connection: QMPConnection | None = None
        self.engine: EngineCore | None = None
        self._protecting: Deferred[None] | None = None
        self._device_model: QMPConnection | None = None
        self._guest: Any = None  # the domain's guest engine (colod.guest.interfaces.IGuestEngine)
        self._domid: int | None = None
        self._peer: PeerEndpoint | None = None
        #: The domain's seat in etcd, under the etcd policy (built with the engine).
        self._seat: EtcdSeat | None = None
        #: The primary's guard process, once it owns the domain in etcd.
        self._guard: GuardProcess | None = None
        #: The version of the domain's QEMU, once reached (for status).
        self.qemu_version: str | None = None

    @property
    def domain(self) -> DomainConfig:
        return self._domain

    def startService(self) -> None:
        super().startService()
        if self._domain.xen is not None and self._config.role is Role.SECONDARY:
            self._protecting = Deferred.fromCoroutine(self._protect(None))
            self._protecting.addErrback(self._protect_failed)
        else:
            self._reaching.start()

    def _reach(self) -> Deferred[QemuInfo]:
        return Deferred.fromCoroutine(self._reach_qemu())

    async def _reach_qemu(self) -> QemuInfo:
        socket, required = self._domain.qmp_socket, REQUIRED_COMMANDS
        if self._domain.xen is not None:
            self._domid = await domain_id(IReactorProcess(self._reactor), self._domain.xen,
                                          self._config.qmp.connect_timeout)
            socket, required = qmp_socket(self._domid), DEVICE_MODEL_COMMANDS
        assert socket is not None  # the configuration requires it for a QEMU domain
        self.connection = QMPConnection(
            socket,
            name=self._domain.name,
            required_commands=required,
            command_timeout=self._config.qmp.command_timeout,
            connect_timeout=self._config.qmp.connect_timeout,
        )
        self.log.info(
            "domain {domain}: connecting to QEMU at {socket} as {role}",
            domain=self._domain.name, socket=socket, role=self._config.role,
        )
        return await self.connection.connect()

    def _connected(self, info: QemuInfo) -> None:
        self.log.info(
            "domain {domain}: connected to QEMU {version}; every command colod needs is present",
            domain=self._domain.name, version=info.version,
        )
        self.qemu_version = info.version
        assert self.connection is not None
        self.connection.whenLost().addCallback(self._lost)
        if self.engine is None and self._protecting is None:
            self._protecting = Deferred.fromCoroutine(self._protect(self.connection))
            self._protecting.addErrback(self._protect_failed)

    async def _protect(self, qmp: QMPConnection | None) -> None:
        """Build the domain's engine and its peer link (``qmp`` is None for a Xen secondary)."""
        config, domain = self._config, self._domain
        state_dir = Path(config.state_dir) / domain.name
        if domain.xen is not None:
            timeout = checkpoint_timeout(config)
            if config.role is Role.PRIMARY:
                assert qmp is not None and self._domid is not None
                self._guest = primary_guest(domain.xen, self._domid, qmp, IReactorProcess(self._reactor),
                                            state_dir, timeout)
            else:
                self._guest = secondary_guest(domain.xen, IReactorProcess(self._reactor), timeout)
        else:
            assert qmp is not None
            device_model = DeviceModelEngine(await self._device_model_qmp(qmp), state_dir, self._reactor)
            try:
                self._guest = QemuGuest(config.role, device_model, domain.memory_image, self._reactor,
                                        timeout=config.qmp.command_timeout)
            except (OSError, ValueError) as e:
                raise ProtectionError(f"cannot use the guest's memory image: {e}") from None
        devices = DeviceGroup(domain, config.role, qmp, self._reactor)
        status = StatusFile(state_dir, self._reactor)
        try:
            generation = Generation(state_dir)
        except GenerationError as e:
            raise ProtectionError(str(e)) from None
        common = (domain, config.node_name, self._guest, devices, self._reactor, status)
        if config.failover.policy is PolicyName.ETCD:
            self._seat = EtcdSeat(config.failover, domain.name, config.node_name, self._reactor,
                                  MonotonicClock(asyncio_loop()), on_expiring=self._lease_lapsing,
                                  on_lost=self._lease_lost, on_renewed=self._lease_renewed)
        if config.role is Role.PRIMARY:
            assert qmp is not None  # only a Xen secondary has none
            if generation.superseded is not None:
                await self._halt_for_good(
                    f"this node was taken over from ({generation.superseded_path}: {generation.superseded}): "
                    "it must never run the guest as primary; once it holds the newest data again (a "
                    f"secondary of the new primary, for one checkpoint), or is sure to, remove that file")
            if self._seat is not None:
                await self._own(self._seat, generation)
            self.engine = PrimaryEngine(*common, qmp, generation=generation,
                                        interval=config.checkpoint_interval,
                                        checkpoint_timeout=checkpoint_timeout(config),
                                        on_stopped_for_good=self._release)
        else:
            if self._seat is not None:
                self._seat.lease().addErrback(self._protect_failed)
                etcd = EtcdPolicy(self._seat, lambda: generation.value, self._reactor,
                                  config.failover.etcd_timeout)
                policy: TakeoverPolicy = etcd
                requests: OperatorRequest = EtcdOperatorRequest(config.state_dir, domain.name, etcd)
            else:
                policy = takeover_policy(config, domain, self._reactor)
                requests = OperatorRequest(config.state_dir, domain.name)
            self.engine = SecondaryEngine(*common, qmp, generation=generation, policy=policy,
                                          requests=requests)
        self.engine.publish()
        try:
            self._peer = PeerEndpoint(config, domain, self.engine, self._reactor,
                                      generation=lambda: generation.value)
        except TLSFileError as e:
            raise ProtectionError(f"tls.{e.key}: {e}") from None
        self._peer.start().addErrback(self._peer_failed)

    async def _own(self, seat: EtcdSeat, generation: Generation) -> None:
        """Own the domain in etcd, or halt its guest here and fail: another node may run it."""
        result = await seat.own(generation.value)
        while result.won and not seat.safe():  # its lease lapsed meanwhile: own it again, on a safe one
            result = await seat.own(generation.value)
        if not result.won and result.owner is None and result.epoch < generation.value:
            raise ProtectionError(
                f"etcd's epoch for the domain is {result.epoch}, older than this node's generation "
                f"{generation.value}: etcd is new to it or lost its data; the guest is left as it is. If no "
                f"node has a newer generation, set it: etcdctl put {seat.prefix}{self._domain.name}/epoch "
                f"{generation.value}")
        if not result.won:
            owner = f"{result.owner.node} owns it" if result.owner else "nobody owns it"
            try:
                generation.supersede(result.owner.node if result.owner else "another node", result.epoch)
            except GenerationError as e:
                self.log.critical("domain {domain}: {error}", domain=self._domain.name, error=e)
            await self._halt_for_good(f"etcd says {owner} in epoch {result.epoch}, and this node's "
                                      f"generation is {generation.value}: this node must never run it as "
                                      "primary")
        try:
            generation.advance(result.epoch)
        except GenerationError as e:
            raise ProtectionError(str(e)) from None
        self.log.info("domain {domain}: this node owns it in etcd, epoch {epoch}", domain=self._domain.name,
                      epoch=result.epoch)
        try:
            self._guard = GuardProcess.start(IReactorProcess(self._reactor), self._domain, self._guard_ended)
        except GuardError as e:
            raise ProtectionError(f"no guard for the guest, should colod die: {e}") from None
        assert seat.keeper is not None and seat.keeper.deadline is not None
        self._guard.renew(seat.keeper.deadline)

    async def _halt_for_good(self, why: str) -> NoReturn:
        """Another node may run the guest: halt it here, and end protection, saying ``why``.

        @raise ProtectionError: always.
        """
        self.log.critical("domain {domain}: {why}; halting its guest here", domain=self._domain.name, why=why)
        try:
            await self._guest.halt()
        except Exception as e:  # noqa: BLE001 - said in the one line colod ends with
            raise ProtectionError(f"{why}; halting its guest here FAILED: {e}") from None
        raise ProtectionError(f"{why}; its guest here is halted")

    def _lease_renewed(self, deadline: float) -> None:
        if self._guard is not None:
            self._guard.renew(deadline)

    def _lease_lapsing(self) -> None:
        self._fence("its etcd lease was not renewed in time: it may expire, and the secondary take over")

    def _lease_lost(self, why: str) -> None:
        self._fence(f"its etcd lease is gone ({why})")

    def _guard_ended(self, why: str, fenced: bool) -> None:
        """The guard is gone: the guest can no longer count on it.  If it stopped the guest (SIGSTOP, or xl
        pause), nothing runs here any more: the domain is let go as after a halt."""
        self._fence(why)
        if fenced:
            self._release()

    def _release(self) -> None:
        """The guest is stopped here for good (fenced or superseded): end the guard and revoke the lease, so
        that the domain's owner key goes now.  Kept, a lease renewed once etcd is back would hold the domain
        for a guest that runs nowhere."""
        if self._seat is not None:
            self.log.warn("domain {domain}: releasing it in etcd (this node's lease revoked): the secondary "
                          "may take it over", domain=self._domain.name)
            self._let_go_of_etcd()

    @inlineCallbacks
    def _let_go_of_etcd(self) -> Any:
        """End the guard (it does not fence) and revoke the lease, each with a deadline; once only."""
        guard, seat, self._guard, self._seat = self._guard, self._seat, None, None
        for what, ending in (("ending the guard", guard and guard.end), ("revoking the etcd lease",
                                                                         seat and seat.stop)):
            if ending:
                try:
                    yield ending().addTimeout(STOP_DEADLINE, self._reactor)
                except Exception as e:  # noqa: BLE001 - letting go goes on (a lease expires by itself)
                    self.log.warn("domain {domain}: {what}: {error}", domain=self._domain.name, what=what,
                                  error=e)

    def _fence(self, why: str) -> None:
        """A primary that owns the domain stops its guest for good; otherwise nothing runs as owner here."""
        if isinstance(self.engine, PrimaryEngine):
            self.engine.fence(why)

    async def _device_model_qmp(self, qmp: QMPConnection) -> QMPConnection:
        """The QMP connection of the guest's device model: its own QEMU on a secondary that has one."""
        socket = self._domain.device_model_socket
        if self._config.role is not Role.SECONDARY or socket is None:
            return qmp
        qmp_config = self._config.qmp
        self._device_model = connection = QMPConnection(
            socket, name=f"{self._domain.name}-device-model", required_commands=LOAD_COMMANDS,
            command_timeout=qmp_config.command_timeout, connect_timeout=qmp_config.connect_timeout)
        await connection.connect()
        status = (await connection.execute("query-status"))["status"]
        if status != "inmigrate":
            raise ProtectionError(f"the device model's QEMU at {socket} is '{status}', not waiting with "
                                  "-incoming defer (colod qemu-args --role secondary --device-model)")
        connection.whenLost().addCallback(self._device_model_lost)
        self.log.info("domain {domain}: the device model's QEMU at {socket} waits for the state to load at "
                      "failover", domain=self._domain.name, socket=socket)
        return connection

    def _protect_failed(self, failure: Any) -> None:
        if failure.check(CancelledError):
            return
        if not failure.check(ProtectionError, QMPFailure, XenSetupError, DomainError):
            self.log.failure("domain {domain}: unexpected error while setting up protection",
                             failure, domain=self._domain.name)
        self._fail(f"domain {self._domain.name}: {failure.getErrorMessage()}")

    def _peer_failed(self, failure: Any) -> None:
        where = self._config.peer.listen
        self._fail(f"domain {self._domain.name}: cannot listen for the primary at {where}: "
                   f"{failure.getErrorMessage()}")

    def _connect_failed(self, failure: Failure) -> bool:
        """Whether to try again: not with a QEMU that lacks what colod needs (colod ends)."""
        if failure.check(QMPCapabilityError):
            self._fail(f"domain {self._domain.name}: {failure.value}")
            return False
        if not failure.check(QMPFailure, XenSetupError):
            self.log.failure("domain {domain}: unexpected error while connecting",
                             failure, domain=self._domain.name)
        else:
            self.log.warn("domain {domain}: {reason}; trying again in {delay:g} s",
                          domain=self._domain.name, reason=failure.value, delay=RECONNECT_DELAY)
        return True

    def _lost(self, reason: QMPFailure) -> None:
        if not self.running:
            return
        self.log.warn("domain {domain}: {reason}; reconnecting", domain=self._domain.name, reason=reason)
        if self.engine is not None:
            self.engine.qemu_lost(str(reason))
        self._reaching.start()

    def _device_model_lost(self, reason: QMPFailure) -> None:
        if self.running and self.engine is not None:
            self.log.error("domain {domain}: the device model's QEMU: {reason}",
                           domain=self._domain.name, reason=reason)
            self.engine.qemu_lost(str(reason))

    @inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        self._reaching.stop()
        if self._protecting is not None and not self._protecting.called:
            self._protecting.cancel()
        if self.engine is not None:
            try:
                yield self.engine.shutdown().addTimeout(STOP_DEADLINE, self._reactor)
            except Exception as e:  # noqa: BLE001 - stopping goes on; the guest is left as it is
                self.log.error("domain {domain}: ending replication at stop: {error}",
                               domain=self._domain.name, error=e)
        if self._peer is not None:
            yield self._peer.stop()
        yield self._let_go_of_etcd()
        if self._guest is not None:
            yield maybeDeferred(self._guest.close)
        for connection in (self._device_model, self.connection):
            if connection is not None:
                yield connection.disconnect()
        self.log.info("domain {domain}: QMP connection closed", domain=self._domain.name)


def takeover_policy(config: Config, domain: DomainConfig, reactor: Any) -> TakeoverPolicy:
    """The ``[failover]`` policy's decider for ``domain``."""
    failover = config.failover
    if failover.policy is PolicyName.FENCE:
        return FenceCommand(reactor, failover.fence_command, failover.fence_timeout, domain=domain.name,
                            peer=config.peer.node_name or "")
    if failover.policy is PolicyName.MANUAL:
        return Manual()
    if failover.policy is PolicyName.HEARTBEAT_ONLY:
        return HeartbeatOnly()
    raise ProtectionError(f"failover policy {failover.policy.value} needs the domain's etcd seat")


class ColodService(MultiService):
    """The root of colod's service tree for one node."""

    log = Logger()

    def __init__(self, config: Config, reactor: Any) -> None:
        """``reactor`` provides IReactorCore (colod stops it when it fails) and IReactorTime."""
        super().__init__()
        self.config = config
        self._reactor = reactor
        #: Why colod ended on its own, or None: the process then exits with status 1 (colod.tap).
        self.failure: str | None = None
        domains = [DomainService(config, domain, reactor, self.fail) for domain in config.domains]
        #: The first child: it stops after every domain, so the last state stays visible to the end.
        self.operations = OperationsService(config, domains, reactor, checkpoint_timeout(config)
                                            + config.checkpoint_interval)
        for service in (self.operations, *domains):
            service.setServiceParent(self)

    def startService(self) -> None:
        self.log.info(
            "colod starting as {role} on node {node} with {count} domain(s) from {path}",
            role=self.config.role, node=self.config.node_name,
            count=len(self.config.domains), path=self.config.path,
        )
        problem = startup.problem(self.config) or self.operations.open()
        if problem is not None:
            self.fail(f"{self.config.path}: {problem}")
            return
        if not self.config.peer.tls:
            self.log.warn("INSECURE: the peer link is plaintext (peer.tls = false in {path}): anyone who "
                          "can reach it can read the guest's memory and disks' checkpoints, and act as "
                          "the peer; use [tls]", path=self.config.path)
        failover = self.config.failover
        if failover.policy is PolicyName.ETCD and failover.etcd_tls is None:
            self.log.warn("INSECURE: etcd is reached over plaintext http ({path}): whoever can reach it, or "
                          "the network between, can grant the domain to a secondary while its primary runs; "
                          "use https (etcd with --client-cert-auth and a certificate of [tls]'s CA)",
                          path=self.config.path)
        if self.config.failover.policy is PolicyName.HEARTBEAT_ONLY:
            self.log.warn("UNSAFE: failover policy heartbeat-only ({path}): a secondary that stops hearing "
                          "its primary takes over, so a partition or a stalled primary runs the guest on "
                          "both hosts; use fence or manual", path=self.config.path)
        for index, domain in enumerate(self.config.domains):
            self._say_nbd(index, domain)
        super().startService()

    def _say_nbd(self, index: int, domain: DomainConfig) -> None:
        """Say how ``domain``'s NBD is protected: an INSECURE warning when it is plaintext."""
        if domain.xen is not None:
            return  # no NBD
        if domain.nbd_tls is None:
            self.log.warn("INSECURE: domain {domain}'s NBD is plaintext (domain[{index}].nbd_tls = false in "
                          "{path}): anyone who can reach {host} port {port} can read and write the "
                          "secondary's disks; use [tls]", domain=domain.name, index=index,
                          path=self.config.path, host=domain.nbd_host, port=domain.nbd_port)
        elif self.config.role is Role.SECONDARY:
            self.log.info("domain {domain}: NBD is TLS: the NBD server lets in only {subject}, with a "
                          "certificate from the CA", domain=domain.name,
                          subject=nbd_tls.client_subject(domain.nbd_tls))
        else:
            self.log.info("domain {domain}: NBD is TLS: the NBD client writes only to a server whose "
                          "certificate from the CA names {peer}", domain=domain.name,
                          peer=domain.nbd_tls.peer)

    def fail(self, reason: str) -> None:
        """End colod, which cannot do its job: ``reason`` as one line in the log, then a stop."""
        if self.failure is not None:
            return
        self.failure = " ".join(reason.splitlines())
        self.log.critical("{reason}; colod stops (exit status 1)", reason=self.failure)
        self._reactor.callWhenRunning(self._stop_reactor)

    def _stop_reactor(self) -> None:
        try:
            self._reactor.stop()
        except ReactorNotRunning:  # stopping already (a signal came first)
            pass

    def stopService(self) -> Deferred[None]:
        self.log.info("colod stopping")
        if not self.running:  # it failed before starting its domains
            return succeed(None)
        return super().stopService()
