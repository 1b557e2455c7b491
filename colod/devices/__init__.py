"""Checkpoint device providers (zope.interface), one module per device kind.

The checkpoint engine uses DeviceGroup: one per protected domain, built from
the domain's configuration, this node's role and the domain's QMP (colod.qmp.QMP).
Its hooks follow libxl's checkpoint devices (xen-colo-protocol.md §4) and
each runs on every device in parallel under one deadline.  Providers register
in a ProviderRegistry per device kind and role; the disk provider (qdisk)
drives QEMU's block replication.
"""

from colod.devices.errors import (
    DeviceError,
    DeviceFailures,
    DeviceTimeout,
    ReplicationError,
    ReplicationUnusable,
    UnhandledDevice,
)
from colod.devices.group import DeviceGroup
from colod.devices.interfaces import (
    DEVICE_MODEL,
    DISK,
    NIC,
    DeviceContext,
    DeviceHealth,
    DeviceSpec,
    ICheckpointDevice,
    IDeviceProvider,
)
from colod.devices.registry import ProviderRegistry, default_registry, domain_devices

__all__ = [
    "DEVICE_MODEL", "DISK", "NIC",
    "DeviceContext", "DeviceError", "DeviceFailures", "DeviceGroup", "DeviceHealth", "DeviceSpec",
    "DeviceTimeout", "ICheckpointDevice", "IDeviceProvider", "ProviderRegistry", "ReplicationError",
    "ReplicationUnusable", "UnhandledDevice", "default_registry", "domain_devices",
]
