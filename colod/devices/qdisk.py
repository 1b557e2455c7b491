# -*- test-case-name: tests.devices.test_qdisk -*-
"""The disk provider: QEMU block replication of a domain's configured disks (libxl's qdisk).

It takes every configured disk on either role; each disk's node names come
from colod.qemu_args, the same code that writes the QEMU command line.
"""

from __future__ import annotations

from collections.abc import Sequence

from zope.interface import implementer

from colod.devices.interfaces import DISK, DeviceContext, DeviceSpec, ICheckpointDevice, IDeviceProvider
from colod.devices.qdisk_primary import PrimaryDisks
from colod.devices.qdisk_secondary import SecondaryDisks
from colod.qemu_args import disk_nodes
from colod.role import Role


@implementer(IDeviceProvider)
class QdiskProvider:
    """Replicated disks, on the primary or on the secondary."""

    kind = DISK

    def __init__(self, role: Role) -> None:
        self.role = Role(role)
        self.name = f"qdisk-{role}"

    def decline(self, device: DeviceSpec) -> str | None:
        # The configuration requires every key a replicated disk needs, so any disk will do.
        return None

    def bind(self, devices: Sequence[DeviceSpec], context: DeviceContext) -> ICheckpointDevice:
        wanted = {d.name for d in devices}
        nodes = tuple(n for n in disk_nodes(context.domain) if n.disk.name in wanted)
        handler = PrimaryDisks if self.role is Role.PRIMARY else SecondaryDisks
        return handler(nodes, context)
