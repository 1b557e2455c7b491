"""DeviceGroup and the provider registry: matching, parallel hooks, deadlines, failures.

These are about colod's own bookkeeping, so the devices are small recording
doubles; everything that talks to QEMU is tested against real QEMU elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface import implementer

from colod import config
from colod.config import ConfigError, DomainConfig
from colod.devices import (
    DISK,
    DeviceContext,
    DeviceError,
    DeviceFailures,
    DeviceGroup,
    DeviceHealth,
    DeviceSpec,
    DeviceTimeout,
    ICheckpointDevice,
    IDeviceProvider,
    ProviderRegistry,
    UnhandledDevice,
)
from colod.devices.qdisk import QdiskProvider
from colod.qmp import QMPConnection

HOOKS = ("setup", "teardown", "postsuspend", "preresume", "commit", "failover", "drop_secondary")


def domain(disks: int = 2) -> DomainConfig:
    data = {
        "colod": {"role": "primary", "node_name": "a"},
        "peer": {"connect": "tcp:host=127.0.0.1:port=9000", "tls": False},
        "failover": {"policy": "manual"},
        "domain": [{
            "name": "guest", "qmp_socket": "/run/guest.qmp", "nbd_host": "127.0.0.1", "nbd_port": 9999,
            "nbd_tls": False,
            "disk": [{"name": f"xvd{c}", "quorum_node": f"q{c}", "image": f"/i/{c}.img",
                      "export_name": f"e{c}", "active_image": f"/i/{c}-a", "hidden_image": f"/i/{c}-h"}
                     for c in "abcd"[:disks]],
        }],
    }
    return config.parse(data, "test.toml").domains[0]


@implementer(ICheckpointDevice)
class Recorder:
    """Records the hooks called; ``results[hook]`` overrides what a hook returns."""

    def __init__(self, names: Sequence[str], log: list[tuple[str, tuple[str, ...]]],
                 results: dict[str, Deferred[None]]) -> None:
        self.names = tuple(names)
        self._log = log
        self._results = results

    def _hook(self, hook: str) -> Deferred[None]:
        self._log.append((hook, self.names))
        return self._results.get(hook, succeed(None))

    def __getattr__(self, hook: str) -> object:
        if hook not in HOOKS:
            raise AttributeError(hook)
        return lambda: self._hook(hook)

    def health(self) -> Deferred[list[DeviceHealth]]:
        if "health" in self._results:
            return self._results["health"]  # type: ignore[return-value]
        return succeed([DeviceHealth(n, True) for n in self.names])


@implementer(IDeviceProvider)
class Provider:
    """Takes the disks named in ``takes`` (all if None) and records their hooks."""

    kind = DISK
    role = "primary"

    def __init__(self, name: str, takes: set[str] | None = None, **results: Deferred[None]) -> None:
        self.name = name
        self.takes = takes
        self.results = results
        self.log: list[tuple[str, tuple[str, ...]]] = []

    def decline(self, device: DeviceSpec) -> str | None:
        return None if self.takes is None or device.name in self.takes else "not one of mine"

    def bind(self, devices: Sequence[DeviceSpec], context: DeviceContext) -> ICheckpointDevice:
        return Recorder([d.name for d in devices], self.log, self.results)


class MatchingTests(unittest.TestCase):
    def group(self, *providers: IDeviceProvider, role: str = "primary", clock: Clock | None = None,
              disks: int = 2) -> DeviceGroup:
        return DeviceGroup(domain(disks), role, QMPConnection("/nonexistent.qmp"), clock or Clock(),
                           registry=ProviderRegistry(providers), timeout=5)

    def test_unhandled_disk_fails_setup_with_its_name(self) -> None:
        """A disk every provider declines is a configuration error naming it and the refusals."""
        picky = Provider("picky", takes={"xvda"})
        error = self.failureResultOf(self.group(picky).setup(), UnhandledDevice).value
        self.assertIsInstance(error, ConfigError)
        self.assertEqual((error.name, error.kind, error.role), ("xvdb", DISK, "primary"))
        self.assertEqual(str(error), "domain 'guest': disk 'xvdb' is not handled by any primary checkpoint "
                                     "device provider (declined by picky: not one of mine)")
        self.assertEqual(picky.log, [])

    def test_no_provider_for_the_role(self) -> None:
        """The shipped disk provider of the other role does not take this role's disks."""
        group = self.group(QdiskProvider("primary"), role="secondary")
        error = self.failureResultOf(group.setup(), UnhandledDevice).value
        self.assertIn("'xvda' is not handled by any secondary checkpoint device provider (none is",
                      str(error))

    def test_declined_device_goes_to_the_next_provider(self) -> None:
        picky, catch_all = Provider("picky", takes={"xvdb"}), Provider("all")
        self.successResultOf(self.group(picky, catch_all).setup())
        self.assertEqual(picky.log, [("setup", ("xvdb",))])
        self.assertEqual(catch_all.log, [("setup", ("xvda",))])

    def test_registry_refuses_non_providers(self) -> None:
        with self.assertRaises(TypeError) as caught:
            ProviderRegistry().register(object())  # type: ignore[arg-type]
        self.assertRegex(str(caught.exception),
                         r"^<object object at 0x[0-9a-f]+> does not provide IDeviceProvider$")

    def test_failures_are_collected_by_device_name(self) -> None:
        """Every failed device is named; teardown runs on all whose setup began."""
        first = Provider("first", takes={"xvda"}, setup=fail(DeviceError("no room")))
        second = Provider("second", setup=fail(ValueError("bad value")))
        error = self.failureResultOf(self.group(first, second).setup(), DeviceFailures).value
        self.assertEqual({k: str(v) for k, v in error.failures.items()},
                         {"xvda": "no room", "xvdb": "bad value"})
        self.assertEqual(str(error), "setup failed for xvda: no room; xvdb: bad value")
        self.assertEqual(first.log, [("setup", ("xvda",)), ("teardown", ("xvda",))])
        self.assertEqual(second.log, [("setup", ("xvdb",)), ("teardown", ("xvdb",))])

    def test_one_deadline_for_all(self) -> None:
        """A device that does not answer is cancelled at the deadline and named; the others pass."""
        clock = Clock()
        hanging: Deferred[None] = Deferred()
        slow = Provider("slow", takes={"xvdb"}, preresume=hanging)
        group = self.group(Provider("fast", takes={"xvda"}), slow, clock=clock)
        self.successResultOf(group.setup())
        d = group.preresume()
        clock.advance(4.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        error = self.failureResultOf(d, DeviceFailures).value
        self.assertEqual(list(error.failures), ["xvdb"])
        self.assertIsInstance(error.failures["xvdb"], DeviceTimeout)
        self.assertEqual(str(error), "preresume failed for xvdb: preresume did not finish within 5 s")
        self.assertTrue(hanging.called)  # cancelled at the deadline

    def test_teardown_failure_after_setup_failure_is_kept(self) -> None:
        provider = Provider("p", setup=fail(DeviceError("half done")), teardown=fail(DeviceError("stuck")))
        error = self.failureResultOf(self.group(provider, disks=1).setup(), DeviceFailures).value
        assert error.teardown is not None
        self.assertEqual(str(error.teardown), "teardown failed for xvda: stuck")
        self.flushLoggedErrors()

    def test_failover_and_drop_are_role_steps(self) -> None:
        group = self.group(Provider("p"))
        self.successResultOf(group.setup())
        self.successResultOf(group.drop_secondary())
        error = self.failureResultOf(group.failover(), DeviceError).value
        self.assertEqual(str(error), "failover is a secondary step, and this is the primary")

    def test_health_never_fails(self) -> None:
        broken = Provider("broken", takes={"xvda"}, health=fail(DeviceError("QEMU is gone")))
        group = self.group(Provider("fine", takes={"xvdb", "xvdc"}), broken, disks=3)
        self.successResultOf(group.setup())
        self.assertEqual(self.successResultOf(group.health()), [
            DeviceHealth("xvda", False, "QEMU is gone"), DeviceHealth("xvdb", True),
            DeviceHealth("xvdc", True)])
