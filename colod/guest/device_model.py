# -*- test-case-name: tests.guest.test_device_model -*-
"""The device model's part of a checkpoint: stop, cont, and device state over QMP.

On the primary, each checkpoint's device state is saved with
``xen-save-devices-state`` and travels to the secondary as EMULATOR_CONTEXT.

On the secondary, Xen loads it at every checkpoint with
``xen-load-devices-state``.  QEMU cannot survive that: the command always ends
by unregistering the migration yank instance, and QEMU aborts when it is not
there (``yank_unregister_instance: Assertion 'entry' failed``, seen on 7.2.22,
even on the first load; current QEMU sources unregister unconditionally too).
So colod never sends it.  It keeps the newest device state, atomically, and
at failover loads it the one way that works: as an incoming migration from a
file descriptor (``migrate-incoming fd:...``), which needs a QEMU started with
``-incoming defer``.  But such a QEMU keeps every block node inactive until
the migration ends, so replication cannot start on it: a device model with
replicated disks cannot have ``-incoming``, and then the state cannot be
loaded into it at all.  At failover colod therefore loads the state when QEMU
waits in ``inmigrate``, and otherwise runs the guest on the secondary device
model's own state, saying so, with the checkpoint's state kept on disk.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from colod.qmp import QMP

# The QEMU options a device model needs for its state to move like this: the
# stream must have no configuration section and no vmdesc, as Xen's has none;
# and no TPR-patching vapic (Xen emulates the APIC itself), whose state only
# loads next to the option ROM in guest RAM, which the device state lacks.
DEVICE_MODEL_MACHINE_OPTIONS = "suppress-vmdesc=on"
DEVICE_MODEL_ARGS = ("-global", "migration.send-configuration=off", "-global", "apic-common.vapic=off")
SECONDARY_ARGS = ("-incoming", "defer")

#: What a QEMU must offer to take the device state at failover.
LOAD_COMMANDS = frozenset({"query-status", "getfd", "migrate-incoming", "query-migrate", "cont"})

# How QEMU's status reads while the incoming migration that loads the state runs.
_MIGRATION_DONE = {"completed", "failed", "cancelled"}
# How often to ask QEMU whether the load has finished.
_POLL_INTERVAL = 0.01
_FD_NAME = "colod-device-state"

LOAD_POLICY = (
    "device state is kept at every checkpoint and loaded once, at failover, through an incoming "
    "migration if QEMU waits with -incoming defer; xen-load-devices-state would abort QEMU, and "
    "with replicated disks (no -incoming) the guest resumes on the device model's own state"
)
NOT_LOADABLE = (
    "QEMU is not waiting for an incoming migration (replicated disks rule out -incoming), and "
    "xen-load-devices-state would abort it: the guest resumes with this device model's own device "
    "state; the checkpoint's device state is kept in {path}"
)


class DeviceStateError(Exception):
    """Saving, keeping or loading the device state failed; says which and why."""


class DeviceModelEngine:
    """Suspend, resume and device state of one domain's QEMU device model."""

    log = Logger()

    def __init__(self, qmp: QMP, state_dir: str | Path, clock: IReactorTime,
                 load_timeout: float = 10.0) -> None:
        self._qmp = qmp
        self._state_dir = Path(state_dir)
        self._clock = clock
        self._load_timeout = load_timeout
        self._staged: Path = self._state_dir / "device-state"
        self._loaded = False
        version = qmp.info.version if qmp.info is not None else "(version not probed)"
        #: What happens to the device state on this QEMU, for the log and the status file.
        self.policy = f"QEMU {version}: {LOAD_POLICY}"
        self.log.info("{policy}", policy=self.policy)

    @property
    def staged_state(self) -> Path:
        """Where the secondary keeps the newest device state (survives a colod restart)."""
        return self._staged

    def suspend(self) -> Deferred[None]:
        """Stop the guest's vCPUs and devices."""
        return self._qmp.execute("stop").addCallback(lambda _: None)

    def resume(self) -> Deferred[None]:
        """Let the guest run again."""
        return self._qmp.execute("cont").addCallback(lambda _: None)

    def save_device_state(self) -> Deferred[bytes]:
        """Primary, guest suspended: the device state, as EMULATOR_CONTEXT carries it."""
        return Deferred.fromCoroutine(self._save())

    async def _save(self) -> bytes:
        self._state_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".save-", dir=self._state_dir)
        os.close(fd)
        try:
            await self._qmp.execute("xen-save-devices-state", {"filename": name, "live": False})
            return Path(name).read_bytes()
        finally:
            os.unlink(name)

    def stage_device_state(self, state: bytes) -> None:
        """Secondary: keep ``state`` as the newest, replacing the previous one atomically.

        A checkpoint that is cut short never leaves a half-written state: the
        new file only takes the old one's place once it is complete.
        """
        self._state_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".stage-", dir=self._state_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(state)
            os.replace(name, self._staged)
        except BaseException:
            os.unlink(name)
            raise

    def take_over(self) -> Deferred[None]:
        """Secondary failover: load the newest device state if QEMU can take it, and run the guest."""
        return Deferred.fromCoroutine(self._take_over())

    async def _take_over(self) -> None:
        status = (await self._qmp.execute("query-status"))["status"]
        if status == "inmigrate":
            await self._load()
        else:
            self.log.warn(NOT_LOADABLE, path=self._staged)
        await self._qmp.execute("cont")

    def load_staged_state(self) -> Deferred[None]:
        """Secondary: load the newest device state into QEMU, leaving the guest paused."""
        return Deferred.fromCoroutine(self._load())

    async def _load(self) -> None:
        if self._loaded:
            raise DeviceStateError("the device state was already loaded into this QEMU; "
                                   "a second load needs a new QEMU process")
        if not self._staged.exists():
            raise DeviceStateError(f"no device state to load: {self._staged} does not exist "
                                   "(no checkpoint was completed)")
        fd = os.open(self._staged, os.O_RDONLY)
        try:
            await self._qmp.send_fd(fd, _FD_NAME)
        finally:
            os.close(fd)
        self._loaded = True
        await self._qmp.execute("migrate-incoming", {"uri": f"fd:{_FD_NAME}"})
        status = await self._wait_for_load()
        if status != "completed":
            raise DeviceStateError(f"loading the device state from {self._staged} ended '{status}'")
        self.log.info("device state loaded from {path}", path=self._staged)

    async def _wait_for_load(self) -> str:
        waited = 0.0
        while True:
            status = (await self._qmp.execute("query-migrate")).get("status", "none")
            if status in _MIGRATION_DONE:
                return status
            if waited >= self._load_timeout:
                raise DeviceStateError(
                    f"loading the device state did not finish within {self._load_timeout:g} s "
                    f"(migration status '{status}')"
                )
            await deferLater(self._clock, _POLL_INTERVAL, lambda: None)
            waited += _POLL_INTERVAL
