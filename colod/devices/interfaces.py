# -*- test-case-name: tests.devices.test_group -*-
"""The checkpoint-device contract: what colod calls at each step of a checkpoint.

It follows libxl's checkpoint devices (xen-colo-protocol.md §4): setup and
teardown around protection, postsuspend, preresume and commit in every
checkpoint, plus what libxl lacks: the secondary taking over (failover), the
primary dropping a dead secondary, and a health query.

One ICheckpointDevice covers the devices of one kind that one provider took in
one domain, not a single device: QEMU's replication commands act on a whole
process (one ``xen-set-replication`` starts every disk), so a provider has to
see all of its disks at once to send them once and in the right order.  It
still reports per device: a hook fails with DeviceFailures keyed by device
name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import Attribute, Interface

from colod.config import DomainConfig
from colod.qmp import QMP
from colod.role import Role

# Device kinds, as libxl has VBD and VIF; the device model is a kind of its own.
DISK = "disk"
NIC = "nic"
DEVICE_MODEL = "device-model"


@attrs.frozen
class DeviceSpec:
    """One configured device of a domain, as offered to the providers."""

    kind: str
    name: str
    config: Any


@attrs.frozen
class DeviceContext:
    """What a provider's devices may use: the domain, this node's role, its QEMU, time."""

    domain: DomainConfig
    role: Role
    qmp: QMP
    clock: IReactorTime
    # The deadline of one hook; providers bound their own waits by it too.
    timeout: float


@attrs.frozen
class DeviceHealth:
    """How one device is doing; ``detail`` says why when it is not healthy."""

    name: str
    healthy: bool
    detail: str = ""


class ICheckpointDevice(Interface):
    """The devices one provider took in one domain, driven through one checkpoint cycle.

    Every hook returns a Deferred.  A hook that fails for some devices fails
    with DeviceFailures naming them; any other exception counts against all
    of ``names``.  teardown must be safe to call at any point, after any
    failure and more than once, and must undo everything setup did.
    """

    names = Attribute("tuple[str, ...]: the names of the devices covered, in configuration order")

    def setup() -> Deferred[None]:
        """Start protecting the devices (for the secondary: after its first resume)."""

    def teardown() -> Deferred[None]:
        """Stop protecting the devices and remove everything setup added."""

    def postsuspend() -> Deferred[None]:
        """The guest has just been suspended for a checkpoint."""

    def preresume() -> Deferred[None]:
        """The checkpoint is complete and the guest is about to resume."""

    def commit() -> Deferred[None]:
        """The guest runs again; the next checkpoint is being waited for."""

    def failover() -> Deferred[None]:
        """Secondary only: the primary is gone, make this node's copy the live one."""

    def drop_secondary() -> Deferred[None]:
        """Primary only: the secondary is gone, carry on without it."""

    def health() -> Deferred[Sequence[DeviceHealth]]:
        """Each device's state; never fails (an unreachable QEMU is an unhealthy device)."""


class IDeviceProvider(Interface):
    """Makes ICheckpointDevices for the devices of one kind, on one role."""

    name = Attribute("str: the provider's name, for logs and errors")
    kind = Attribute("str: the device kind it handles (DISK, NIC, DEVICE_MODEL)")
    role = Attribute("colod.role.Role: the role whose devices it makes")

    def decline(device: DeviceSpec) -> str | None:
        """None if this provider takes ``device``, else why not (the next provider is asked)."""

    def bind(devices: Sequence[DeviceSpec], context: DeviceContext) -> ICheckpointDevice:
        """An ICheckpointDevice for ``devices``, all of which this provider took."""
