# -*- test-case-name: tests.devices.test_group -*-
"""Which provider handles which configured device, matched the way libxl does it.

Providers are kept per (kind, role) in registration order.  Each device is
offered to them in turn; a provider may decline it, and the next one is asked.
A device that every provider declines is a configuration error naming it
(libxl: ERROR_CHECKPOINT_DEVICE_NOT_SUPPORTED).  The registry is open: the nic
and device-model providers register here like the disk one.
"""

from __future__ import annotations

from collections.abc import Iterable

from colod.config import DomainConfig
from colod.devices.errors import UnhandledDevice
from colod.devices.interfaces import DISK, DeviceSpec, IDeviceProvider
from colod.devices.qdisk import QdiskProvider
from colod.role import Role


def domain_devices(domain: DomainConfig) -> list[DeviceSpec]:
    """Every checkpoint device of ``domain``, in configuration order."""
    return [DeviceSpec(kind=DISK, name=disk.name, config=disk) for disk in domain.disks]


class ProviderRegistry:
    """An ordered list of providers for each (kind, role)."""

    def __init__(self, providers: Iterable[IDeviceProvider] = ()) -> None:
        self._providers: dict[tuple[str, str], list[IDeviceProvider]] = {}
        for provider in providers:
            self.register(provider)

    def register(self, provider: IDeviceProvider) -> None:
        """Add ``provider`` after those already registered for its kind and role."""
        if not IDeviceProvider.providedBy(provider):
            raise TypeError(f"{provider!r} does not provide IDeviceProvider")
        self._providers.setdefault((provider.kind, provider.role), []).append(provider)

    def providers(self, kind: str, role: Role) -> list[IDeviceProvider]:
        return list(self._providers.get((kind, role), ()))

    def match(self, domain: DomainConfig, role: Role) -> list[tuple[IDeviceProvider, list[DeviceSpec]]]:
        """Each provider that took devices of ``domain``, with those devices.

        Fails with UnhandledDevice for the first device nobody takes.
        """
        taken: dict[int, tuple[IDeviceProvider, list[DeviceSpec]]] = {}
        for device in domain_devices(domain):
            declined: dict[str, str] = {}
            for provider in self.providers(device.kind, role):
                reason = provider.decline(device)
                if reason is None:
                    taken.setdefault(id(provider), (provider, []))[1].append(device)
                    break
                declined[provider.name] = reason
            else:
                raise UnhandledDevice(domain.name, device.kind, device.name, role, declined)
        return list(taken.values())


def default_registry() -> ProviderRegistry:
    """The providers colod ships with."""
    return ProviderRegistry([QdiskProvider(role) for role in Role])
