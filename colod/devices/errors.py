# -*- test-case-name: tests.devices.test_group -*-
"""What device hooks fail with.

A hook runs on many devices at once, so its failure is one DeviceFailures that
names every device that failed and why (libxl keeps only the last error).  The
individual reasons are ordinary exceptions; ReplicationError is the one QEMU's
block replication reports itself, with QEMU's own words.
"""

from __future__ import annotations

from collections.abc import Mapping

from colod.config import ConfigError
from colod.role import Role


class DeviceError(Exception):
    """Base of the errors raised by device providers and groups."""


class UnhandledDevice(DeviceError, ConfigError):
    """A configured device that no provider takes for this role: a configuration error."""

    def __init__(self, domain: str, kind: str, name: str, role: Role, declined: Mapping[str, str]) -> None:
        self.domain = domain
        self.kind = kind
        self.name = name
        self.role = role
        self.declined = dict(declined)
        why = "; ".join(f"{provider}: {reason}" for provider, reason in declined.items())
        super().__init__(
            f"domain {domain!r}: {kind} {name!r} is not handled by any {role} checkpoint device "
            "provider" + (f" (declined by {why})" if why else " (none is registered for it)")
        )


class ReplicationError(DeviceError):
    """QEMU reports that block replication failed; ``description`` is QEMU's text."""

    def __init__(self, command: str, description: str) -> None:
        super().__init__(f"block replication failed ({command}): {description}")
        self.command = command
        self.description = description


class ReplicationUnusable(DeviceError):
    """This QEMU's replication nodes cannot be started again; restart the device model."""


class DeviceTimeout(DeviceError):
    """A device did not finish a hook before the hook's deadline."""

    def __init__(self, hook: str, timeout: float) -> None:
        super().__init__(f"{hook} did not finish within {timeout:g} s")
        self.hook = hook
        self.timeout = timeout


class DeviceFailures(DeviceError):
    """One hook failed on some devices: ``failures`` maps each device's name to its error."""

    def __init__(self, hook: str, failures: Mapping[str, BaseException]) -> None:
        self.hook = hook
        self.failures = dict(failures)
        # For a failed setup: how the teardown that followed it failed, if it did.
        self.teardown: DeviceFailures | None = None
        super().__init__(
            f"{hook} failed for "
            + "; ".join(f"{name}: {error}" for name, error in sorted(self.failures.items()))
        )
