# -*- test-case-name: tests.devices.test_cli -*-
"""The QEMU command-line arguments colod needs on a domain's device model, on either side.

The disks are part of the device model's command line, as Xen starts it;
colod adds only what changes at run time over QMP (the NBD server and exports
on the secondary, the replication child on the primary).  Every node gets an
explicit name, so that colod, qemu-io and admins can address it; the names of
the nodes colod derives are listed by DiskNodes, the one place they are made.

Primary, per disk:   quorum (quorum_node) -> local image (colodN-disk)
Secondary, per disk: quorum (quorum_node) -> replication (colodN-rep, secondary)
                     -> active overlay -> hidden overlay -> disk (export_name),
                     which the NBD server exports to the primary.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from colod.config import NODE_PREFIX, DiskConfig, DomainConfig
from colod.guest.device_model import DEVICE_MODEL_ARGS, DEVICE_MODEL_MACHINE_OPTIONS, SECONDARY_ARGS
from colod.role import Role


@attrs.frozen
class DiskNodes:
    """The QEMU node names of one disk (the index-th of its domain).

    Those colod makes up are ``NODE_PREFIX<index>-<part>``, a form the
    configuration refuses for the names it sets (colod.config).
    """

    index: int
    disk: DiskConfig

    def _name(self, part: str) -> str:
        return f"{NODE_PREFIX}{self.index}-{part}"

    @property
    def quorum(self) -> str:
        """The guest-facing node (both sides)."""
        return self.disk.quorum_node

    @property
    def export(self) -> str:
        """Secondary: the disk itself, exported over NBD under the same name."""
        return self.disk.export_name

    @property
    def local(self) -> str:
        """Primary: the disk itself, the quorum's first child."""
        return self._name("disk")

    @property
    def image_file(self) -> str:
        return self._name("file")

    @property
    def active(self) -> str:
        return self._name("active")

    @property
    def active_file(self) -> str:
        return self._name("active-file")

    @property
    def hidden(self) -> str:
        return self._name("hidden")

    @property
    def hidden_file(self) -> str:
        return self._name("hidden-file")

    @property
    def replication(self) -> str:
        """The replication node: on the command line (secondary) or added by colod (primary)."""
        return self._name("rep")

    @property
    def nbd(self) -> str:
        """Primary: the NBD client under the replication node (named so it can be yanked)."""
        return self._name("nbd")


def disk_nodes(domain: DomainConfig) -> list[DiskNodes]:
    """The node names of each disk of ``domain``."""
    return [DiskNodes(i, disk) for i, disk in enumerate(domain.disks)]


def _format_node(node_name: str, driver: str, filename: str, file_node: str) -> dict[str, Any]:
    return {"driver": driver, "node-name": node_name,
            "file": {"driver": "file", "filename": filename, "node-name": file_node}}


def _quorum(n: DiskNodes, child: str) -> dict[str, Any]:
    # fifo: reads come from the first child; the replication child cannot be read.
    return {"driver": "quorum", "node-name": n.quorum, "vote-threshold": 1,
            "read-pattern": "fifo", "children": [child]}


def primary_blockdevs(n: DiskNodes) -> list[dict[str, Any]]:
    return [
        _format_node(n.local, n.disk.format, n.disk.image, n.image_file),
        _quorum(n, n.local),
    ]


def secondary_blockdevs(n: DiskNodes) -> list[dict[str, Any]]:
    # The overlays' backing links are made here, not in their image headers.
    hidden = _format_node(n.hidden, "qcow2", n.disk.hidden_image, n.hidden_file)
    hidden["backing"] = n.export
    active = _format_node(n.active, "qcow2", n.disk.active_image, n.active_file)
    active["backing"] = n.hidden
    return [
        _format_node(n.export, n.disk.format, n.disk.image, n.image_file),
        hidden,
        active,
        {"driver": "replication", "node-name": n.replication, "mode": "secondary",
         "top-id": n.quorum, "file": n.active},
        _quorum(n, n.replication),
    ]


def device_model_args(incoming: bool = False) -> list[str]:
    """What makes the device state loadable (colod.guest.device_model); QEMU merges ``-machine``.

    ``incoming`` is for the secondary's separate device model
    (``device_model_socket``), which waits for the state to load at failover.
    Never ``-incoming`` where the disks are: QEMU keeps every block node
    inactive until an incoming migration ends, and replication cannot start.
    """
    args = ["-machine", DEVICE_MODEL_MACHINE_OPTIONS, *DEVICE_MODEL_ARGS]
    return [*args, *SECONDARY_ARGS] if incoming else args


def json_args(option: str, values: list[dict[str, Any]]) -> list[str]:
    """``option`` once per value, each in QEMU's JSON form (no comma escaping to get wrong)."""
    return [arg for value in values for arg in (option, json.dumps(value, separators=(",", ":")))]


def qemu_args(domain: DomainConfig, role: Role) -> list[str]:
    """The device-model options and ``domain``'s disks' ``-blockdev`` arguments for a QEMU on ``role``."""
    build = {Role.PRIMARY: primary_blockdevs, Role.SECONDARY: secondary_blockdevs}[role]
    return device_model_args() + json_args("-blockdev", [b for n in disk_nodes(domain) for b in build(n)])
