# -*- test-case-name: tests.devices.test_group -*-
"""A domain's checkpoint devices on this node, driven together by the checkpoint engine.

The engine calls one DeviceGroup per protected domain at the steps of
xen-colo-protocol.md §3.4.  Each call runs the hook on every provider's
devices in parallel under one deadline and fails with one DeviceFailures that
names each failed device.  setup either succeeds or leaves nothing behind: on
failure it tears down everything whose setup began before failing.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from colod.config import DomainConfig
from colod.devices.errors import DeviceError, DeviceFailures
from colod.devices.interfaces import DeviceContext, DeviceHealth, ICheckpointDevice
from colod.devices.parallel import run_all
from colod.devices.registry import ProviderRegistry, default_registry
from colod.qmp import QMP
from colod.role import Role

# Deadline of one hook on all devices.  Setup connects NBD and failover commits
# the overlays, both well under a second on a healthy host (lab notes §9).
DEFAULT_TIMEOUT = 10.0


class DeviceGroup:
    """The checkpoint devices of one domain, for one role, over that domain's QMP connection."""

    log = Logger()

    def __init__(
        self,
        domain: DomainConfig,
        role: Role,
        qmp: QMP | None,
        clock: IReactorTime,
        *,
        registry: ProviderRegistry | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """``clock`` times each hook's deadline: the service's reactor, a task.Clock in tests.

        ``qmp`` is None where this node has no QEMU for the domain (a Xen
        secondary, until Xen's receiver makes one): then no device may be configured.
        """
        self.domain = domain
        self.role = Role(role)
        self.timeout = timeout
        self._clock = clock
        self._qmp = qmp
        self._registry = registry if registry is not None else default_registry()
        self._devices: list[ICheckpointDevice] | None = None
        self._begun: list[ICheckpointDevice] = []

    def _context(self) -> DeviceContext:
        """What a provider's devices use; only devices need the domain's QEMU."""
        if self._qmp is None:
            raise DeviceError(f"domain {self.domain.name}: its devices need its QEMU, and this node has none")
        return DeviceContext(domain=self.domain, role=self.role, qmp=self._qmp, clock=self._clock,
                             timeout=self.timeout)

    def _run(self, hook: str, devices: Sequence[ICheckpointDevice]) -> Deferred[list[object]]:
        return Deferred.fromCoroutine(run_all(
            hook, [(d.names, getattr(d, hook)) for d in devices], (self.timeout, self._clock)))

    # -- protection -------------------------------------------------------

    def setup(self) -> Deferred[None]:
        """Match providers to the devices (UnhandledDevice if one is left over) and set them up."""
        return Deferred.fromCoroutine(self._setup())

    async def _setup(self) -> None:
        if self._devices is None:
            self._devices = [provider.bind(specs, self._context())
                             for provider, specs in self._registry.match(self.domain, self.role)]
        self._begun = list(self._devices)
        try:
            await self._run("setup", self._begun)
        except DeviceFailures as failure:
            try:
                await self._run("teardown", self._begun)
            except DeviceFailures as cleanup:
                failure.teardown = cleanup
                self.log.error("domain {domain}: cleaning up after a failed setup: {cleanup}",
                               domain=self.domain.name, cleanup=cleanup)
            raise

    def teardown(self) -> Deferred[None]:
        """Undo setup on every device whose setup began; safe to repeat."""
        return self._run("teardown", self._begun).addCallback(lambda _: None)

    # -- one checkpoint ---------------------------------------------------

    def postsuspend(self) -> Deferred[None]:
        return self._run("postsuspend", self._begun).addCallback(lambda _: None)

    def preresume(self) -> Deferred[None]:
        return self._run("preresume", self._begun).addCallback(lambda _: None)

    def commit(self) -> Deferred[None]:
        return self._run("commit", self._begun).addCallback(lambda _: None)

    # -- losing the peer --------------------------------------------------

    def failover(self) -> Deferred[None]:
        """Secondary: the primary is gone; this node's copy becomes the live one."""
        return self._for_role("failover", Role.SECONDARY)

    def drop_secondary(self) -> Deferred[None]:
        """Primary: the secondary is gone; detach it and keep the guest's I/O going."""
        return self._for_role("drop_secondary", Role.PRIMARY)

    def _for_role(self, hook: str, role: Role) -> Deferred[None]:
        if self.role is not role:
            return fail(DeviceError(f"{hook} is a {role} step, and this is the {self.role}"))
        return self._run(hook, self._begun).addCallback(lambda _: None)

    # -- health -----------------------------------------------------------

    def health(self) -> Deferred[list[DeviceHealth]]:
        """Every device's health, in configuration order; never fails."""
        return Deferred.fromCoroutine(self._health())

    async def _health(self) -> list[DeviceHealth]:
        reports = await gatherResults([Deferred.fromCoroutine(self._health_of(d)) for d in self._begun])
        found = [h for report in reports for h in report]
        order = {disk.name: i for i, disk in enumerate(self.domain.disks)}
        return sorted(found, key=lambda h: order.get(h.name, len(order)))

    async def _health_of(self, device: ICheckpointDevice) -> list[DeviceHealth]:
        try:
            reports: list[Sequence[DeviceHealth]] = await run_all(
                "health", [(device.names, device.health)], (self.timeout, self._clock))
        except DeviceFailures as failure:
            return [DeviceHealth(name, False, str(error)) for name, error in failure.failures.items()]
        return list(reports[0])
