# -*- test-case-name: tests.xenlab -*-
"""
A running Xen domain as libxl's save path touches it: suspend, resume,
log-dirty and the device model's state.

The order and the checks are libxl 4.17's (libxl_dom_suspend.c,
libxl_dom_save.c, libxl_qmp.c): a guest with PV drivers (its callback IRQ
is set, and it is not in an ACPI sleep state) is asked through xenstore
(C{control/shutdown} = C{suspend}) and must acknowledge by clearing the node;
any other HVM guest is suspended by the hypervisor (SHUTDOWN_suspend).
Either way the domain must then be shut down with the reason "suspend"
before the device model is stopped and its state saved (QMP C{stop},
C{xen-save-devices-state}).  Resume is QMP C{cont}, then a fast resume
(C{xc_domain_resume(domid, 1)}) and xenstore's resume, in that order.

libxc and xenstore are reached through the Python bindings that Debian's
xen-utils-4.17 ships (L{load_bindings}); their calls are hypercalls and
xenstore round trips that return at once, so they are made on the reactor,
and every wait between them polls with a deadline.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from colod.qmp import QMPCommands

#: Where Debian's xen-utils-4.17 puts the bindings (not on sys.path by default).
BINDINGS_PATH = "/usr/lib/xen-4.17/lib/python"
#: xen/include/public/sched.h
SHUTDOWN_SUSPEND = 2
SHUTDOWN_REASONS = {0: "poweroff", 1: "reboot", 2: "suspend", 3: "crash", 4: "watchdog", 5: "soft reset"}
#: xen/include/public/hvm/params.h
HVM_PARAM_CALLBACK_IRQ = 0
HVM_PARAM_ACPI_S_STATE = 14
#: Seconds between two looks while waiting for the guest.
POLL_INTERVAL = 0.002


class DomainError(Exception):
    """The domain could not be suspended or resumed, or is gone; says which step and why."""


def load_bindings(path: str = BINDINGS_PATH) -> tuple[ModuleType, ModuleType]:
    """Xen's C{xen.lowlevel.xc} and C{xen.lowlevel.xs}.  @raise DomainError: they are not there."""
    if path not in sys.path:
        sys.path.append(path)
    try:
        return importlib.import_module("xen.lowlevel.xc"), importlib.import_module("xen.lowlevel.xs")
    except ImportError as error:
        raise DomainError(f"Xen's Python bindings are missing ({error}); install xen-utils-4.17") from None


def qmp_socket(domid: int) -> str:
    """The device model's QMP socket that libxl uses for domain C{domid}."""
    return f"/var/run/xen/qmp-libxl-{domid}"


class XenDomain:
    """One running domain on this dom0, suspended and resumed as libxl does."""

    def __init__(self, domid: int, xc: Any, xs: Any, qmp: QMPCommands, clock: IReactorTime, state_file: Path,
                 timeout: float) -> None:
        self.domid = domid
        self._xc = xc
        self._xs = xs
        self._qmp = qmp
        self._clock = clock
        #: Where the device model writes its state at each suspend (it must be able to: dom0's QEMU).
        self.state_file = state_file
        self._timeout = timeout
        self.how = ""
        #: A suspend was asked for and taken up: the guest is suspended, or on its way there.
        self._going_down = False

    def info(self) -> dict[str, Any]:
        """libxc's domain info.  @raise DomainError: the domain is gone."""
        found = self._xc.domain_getinfo(self.domid, 1)
        if not found or found[0]["domid"] != self.domid:
            raise DomainError(f"domain {self.domid} is gone")
        return dict(found[0])

    async def suspend(self) -> None:
        """The guest stopped at a consistent point and the device model's state saved."""
        control = f"/local/domain/{self.domid}/control/shutdown"
        pv_drivers = self._xc.hvm_get_param(self.domid, HVM_PARAM_CALLBACK_IRQ)
        asleep = self._xc.hvm_get_param(self.domid, HVM_PARAM_ACPI_S_STATE)
        if pv_drivers and not asleep:
            self.how = "xenstore control/shutdown"
            self._xs.write("", control, "suspend")
            try:
                await self._until(lambda: self._acknowledged(control), "acknowledge the suspend request")
            except DomainError:
                self._xs.write("", control, "")  # withdrawn, as libxl does: no late suspend
                raise
        else:
            self.how = "SHUTDOWN_suspend"
            self._xc.domain_shutdown(self.domid, SHUTDOWN_SUSPEND)
        self._going_down = True
        await self._until(self._suspended, "suspend")
        await self._qmp.execute("stop")
        await self._qmp.execute("xen-save-devices-state", {"filename": str(self.state_file), "live": True})

    async def resume(self) -> None:
        """
        The guest runs again from where it was suspended (libxl's fast resume).

        After a suspend that failed half-way the guest may not be suspended:
        one that acknowledged the request is still on its way down and is let
        finish first (a fast resume in the middle of the guest's own suspend
        path crashes it); one that never got the request, or refused it, is
        running, and only its device model is let go.
        """
        if self._going_down and not self._suspended():
            await self._until(self._suspended, "finish suspending")
        self._going_down = False
        await self._qmp.execute("cont")
        if self._suspended():
            self._xc.domain_resume(self.domid, 1)
            self._xs.resume_domain(self.domid)

    async def pause(self) -> None:
        """The guest's vCPUs paused by Xen and its device model stopped, for good (no checkpoint)."""
        self._xc.domain_pause(self.domid)
        await self._qmp.execute("stop")

    async def set_log_dirty(self, enable: bool) -> None:
        """The device model tracks the pages it writes too (libxl's switch_qemu_logdirty)."""
        await self._qmp.execute("xen-set-global-dirty-log", {"enable": enable})

    def device_state(self) -> bytes:
        """The state the device model saved at the last suspend."""
        return self.state_file.read_bytes()

    def _read(self, path: str) -> str | None:
        value = self._xs.read("", path)
        return value.decode() if isinstance(value, bytes) else value

    def _acknowledged(self, control: str) -> bool:
        """The guest took the request up; a guest that died or shut down meanwhile (a triple
        fault is a reboot) never will, and says so at once, not at the deadline."""
        if self._read(control) != "suspend":
            return True
        self._suspended()
        return False

    def _suspended(self) -> bool:
        info = self.info()
        if not info["shutdown"]:
            return False
        if info["shutdown_reason"] != SHUTDOWN_SUSPEND:
            reason = SHUTDOWN_REASONS.get(info["shutdown_reason"], "an unknown reason")
            raise DomainError(f"domain {self.domid} shut down ({reason}, {info['shutdown_reason']}) "
                              "instead of suspending")
        return True

    async def _until(self, check: Callable[[], bool], what: str) -> None:
        """Poll ``check`` until it is true.  @raise DomainError: the guest did not in time."""
        deadline = self._clock.seconds() + self._timeout
        while not check():
            if self._clock.seconds() > deadline:
                raise DomainError(f"domain {self.domid} did not {what} within {self._timeout:g} s")
            await deferLater(self._clock, POLL_INTERVAL, lambda: None)
