# -*- test-case-name: tests.xen.test_setup -*-
"""
What the daemon needs to protect a Xen domain (``[domain.xen]``): the
domain's id and its device model's QMP socket on the primary, and each
side's guest engine (L{colod.xen.guest}).
"""

from __future__ import annotations

import re
from pathlib import Path

from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.internet.utils import getProcessOutputAndValue

from colod.config import XenConfig
from colod.qmp import QMPCommands
from colod.xen.domain import XenDomain, load_bindings
from colod.xen.guest import XenPrimaryGuest, XenSecondaryGuest
from colod.xen.receiver import receive_command

#: What colod asks of a Xen domain's device model (libxl's QEMU has no replication commands).
DEVICE_MODEL_COMMANDS = frozenset({"stop", "cont", "xen-save-devices-state", "xen-set-global-dirty-log"})

_NAME = re.compile(r"""^\s*name\s*=\s*(["'])(?P<name>[^"'\n]*)\1""", re.MULTILINE)


class XenSetupError(Exception):
    """The Xen domain or its tools are not there; says which and why."""


async def domain_id(reactor: IReactorProcess, xen: XenConfig, timeout: float) -> int:
    """The id of the running domain C{xen.domain} (``xl domid``)."""
    run = getProcessOutputAndValue(xen.xl, ["domid", xen.domain], env=None, reactor=reactor)
    out, err, code = await run.addTimeout(timeout, reactor)
    if code != 0:
        said = err.decode(errors="replace").strip() or f"exit status {code}"
        raise XenSetupError(f"no running Xen domain {xen.domain!r} ({xen.xl} domid: {said})")
    return int(out)


def primary_guest(xen: XenConfig, domid: int, qmp: QMPCommands, reactor: IReactorProcess,
                  state_dir: Path, timeout: float) -> XenPrimaryGuest:
    """The primary's guest engine for domain C{domid}; its device state is saved in C{state_dir}."""
    xc, xs = load_bindings()
    state_dir.mkdir(parents=True, exist_ok=True)
    domain = XenDomain(domid, xc.xc(), xs.xs(), qmp, IReactorTime(reactor), state_dir / "device-state",
                       timeout)
    return XenPrimaryGuest(domain, reactor, timeout=timeout, binary=xen.save_helper)


def secondary_guest(xen: XenConfig, reactor: IReactorProcess, timeout: float) -> XenSecondaryGuest:
    """The secondary's guest engine: Xen's receiver, started with this host's xl configuration."""
    assert xen.xl_config is not None  # the configuration requires it on a secondary
    try:
        config = Path(xen.xl_config).read_bytes()
    except OSError as error:
        raise XenSetupError(
            f"cannot read the guest's xl configuration {xen.xl_config}: {error.strerror}") from None
    named = config_name(config)
    if named != xen.domain:
        raise XenSetupError(f"the xl configuration {xen.xl_config} names the guest {named!r}, but "
                            f"[domain.xen] domain is {xen.domain!r}: they must be the same, for the "
                            f"receiver's copy is {named}--incoming until it takes over")
    return XenSecondaryGuest(reactor, receive_command(xen.domain, xen.xl), config, timeout=timeout)


def config_name(config: bytes) -> str | None:
    """The guest's ``name`` in the text of an xl configuration file, or None if it has none."""
    found = _NAME.search(config.decode(errors="replace"))
    return found.group("name") if found else None
