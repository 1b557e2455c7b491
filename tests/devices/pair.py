"""Two real QEMUs, a primary and a secondary, started from ``colod qemu-args``.

Each side is a qemu-system-x86_64 whose disk arguments are exactly what the
``colod qemu-args`` command prints for the test's configuration file, with a
QMP connection and a DeviceGroup.  Guest writes are HMP ``qemu-io`` commands,
whose output QEMU prints on its stdout.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import socket
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.defer import Deferred

from colod import cli, config
from colod.config import Config, DomainConfig
from colod.devices import DeviceGroup, ProviderRegistry
from colod.qmp import QMPConnection
from colod.role import Role
from colod.testing.processes import free_port
from colod.testing.qemu_process import QemuProcess
from tests import certs
from tests.rig import QemuTestCase, sleep

MiB = 1 << 20
#: Each role's node (tests.certs makes their certificates).
NODES = {Role.PRIMARY: "host-a", Role.SECONDARY: "host-b"}
SIZE = 8 * MiB
# Group deadline: generous for a loaded 2-core machine, far below trial's 120 s.
TIMEOUT = 15.0
_MAP_LINE = re.compile(r"\((0x[0-9a-f]+)\) bytes\s+(not )?allocated at offset .*\((0x[0-9a-f]+)\)")


def within(seconds: float, d: Deferred[Any]) -> Deferred[Any]:
    """``d``, failing with TimeoutError if it has not fired after ``seconds``."""
    from twisted.internet import reactor

    return d.addTimeout(seconds, reactor)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def base_pattern(index: int) -> int:
    """The byte each disk's images start with (both sides), distinct per disk."""
    return 0x11 + index


@attrs.define
class Side:
    """One node's QEMU, its QMP connection and its device group."""

    role: str
    config: Config
    qemu: QemuProcess
    qmp: QMPConnection
    group: DeviceGroup

    @property
    def domain(self) -> DomainConfig:
        return self.config.domains[0]

    async def hmp_qemu_io(self, node: str, command: str) -> str:
        """Run ``qemu-io`` on ``node`` inside QEMU; returns what it printed."""
        before = len(self.qemu.output())
        reply = await self.qmp.execute(
            "human-monitor-command", {"command-line": f'qemu-io {node} "{command}"'})
        assert reply == "", f"HMP refused qemu-io {node}: {reply!r}"
        for _ in range(100):  # qemu-io prints before the reply; line buffering may lag a little
            printed = self.qemu.output()[before:]
            if printed.endswith("\n"):
                return printed
            await sleep(0.01)
        raise AssertionError(f"qemu-io {node} {command!r} printed nothing")

    async def write(self, node: str, pattern: int, offset: int, length: int) -> None:
        printed = await self.hmp_qemu_io(node, f"write -P {pattern:#x} {offset} {length}")
        assert f"wrote {length}/{length} bytes at offset {offset}" in printed, printed

    async def allocated(self, node: str) -> list[tuple[int, int]]:
        """The (offset, length) ranges ``node`` holds itself (not through its backing chain)."""
        printed = await self.hmp_qemu_io(node, "map")
        ranges = [m for m in _MAP_LINE.finditer(printed)]
        assert ranges, printed
        return [(int(m[3], 16), int(m[1], 16)) for m in ranges if not m[2]]

    async def node_names(self) -> set[tuple[str, str]]:
        return {(n["node-name"], n["drv"]) for n in await self.qmp.execute("query-named-block-nodes")}

    async def graph_children(self, parent: str) -> dict[str, str]:
        graph = await self.qmp.execute("x-debug-query-block-graph")
        names = {n["id"]: n["name"] for n in graph["nodes"]}
        pid = [n["id"] for n in graph["nodes"] if n["name"] == parent][0]
        return {e["name"]: names[e["child"]] for e in graph["edges"] if e["parent"] == pid}


def qcow2_data(path: Path) -> list[dict[str, Any]]:
    """The ranges of a qcow2 image that hold data of their own (read offline)."""
    out = subprocess.run(["qemu-img", "map", "--output=json", "-f", "qcow2", str(path)],
                         check=True, capture_output=True, text=True, timeout=30).stdout
    return [r for r in json.loads(out) if r["data"]]


class Image:
    """The content a disk image must have: its base pattern plus the writes applied."""

    def __init__(self, index: int) -> None:
        self.data = bytearray([base_pattern(index)]) * SIZE

    def write(self, pattern: int, offset: int, length: int) -> Image:
        self.data[offset:offset + length] = bytes([pattern]) * length
        return self


class ReplicationTestCase(QemuTestCase):
    """Builds configuration files and images, and starts QEMUs from ``colod qemu-args``."""

    def setUp(self) -> None:
        super().setUp()
        self.port = free_port()

    def image(self, role: str, index: int) -> Path:
        return self.workdir / f"{role[0]}{index}.img"

    def overlay(self, kind: str, index: int) -> Path:
        return self.workdir / f"s{index}-{kind}.qcow2"

    def make_images(self, disks: int, overlay_size: int = SIZE) -> None:
        """Both sides' disks, identical, and the secondary's empty overlays."""
        for i in range(disks):
            for role in Role:
                self.image(role, i).write_bytes(bytes([base_pattern(i)]) * SIZE)
            for kind in ("active", "hidden"):
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(self.overlay(kind, i)),
                                str(overlay_size)], check=True, timeout=30)

    def write_config(self, role: str, disks: Iterable[int], quorum_nodes: dict[int, str] | None = None,
                     name: str = "", nbd_tls: bool = True, node: str | None = None) -> Path:
        """A colod.toml for ``role`` with the given disks of one domain.

        The nodes are NODES' (``node`` for another of tests.certs'), with their certificates; NBD is
        under TLS, colod's default, unless ``nbd_tls`` is False (the peer link is not used here).
        """
        quorum_nodes = quorum_nodes or {}
        node = node or NODES[role]
        peer = NODES[Role.SECONDARY if role == Role.PRIMARY else Role.PRIMARY]
        lines = [
            "[colod]", f'role = "{role}"', f'node_name = "{node}"',
            f'state_dir = "{self.workdir}/{role}-state"',
            "[peer]", 'listen = "tcp:9000"', 'connect = "tcp:host=127.0.0.1:port=9000"',
            f'node_name = "{peer}"', certs.files(node).toml(),
            "[failover]", 'policy = "manual"',
            "[[domain]]", 'name = "guest"', f'qmp_socket = "{self.workdir}/unused.qmp"',
            'nbd_host = "127.0.0.1"', f"nbd_port = {self.port}", "" if nbd_tls else "nbd_tls = false",
        ]
        for i in disks:
            lines += [
                "[[domain.disk]]", f'name = "xvd{"abcdefgh"[i]}"',
                f'quorum_node = "{quorum_nodes.get(i, f"colo-disk{i}")}"',
                f'image = "{self.image(role, i)}"', f'export_name = "guest-xvd{"abcdefgh"[i]}"',
                f'active_image = "{self.overlay("active", i)}"',
                f'hidden_image = "{self.overlay("hidden", i)}"',
            ]
        path = self.workdir / f"{role}{name}.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def qemu_args(self, role: str, path: Path) -> list[str]:
        """What ``colod qemu-args`` prints for ``path``, split as a shell would."""
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = cli.main(["qemu-args", "--role", role, "--config", str(path)])
        self.assertEqual(status, 0)
        return shlex.split(out.getvalue())

    async def start_side(self, role: str, path: Path, *, qemu_config: Path | None = None,
                         extra_args: tuple[str, ...] = (),
                         registry: ProviderRegistry | None = None) -> Side:
        """A QEMU started from ``qemu_config``'s (default: ``path``'s) arguments, and a group for ``path``."""
        args = self.qemu_args(role, qemu_config or path) + list(extra_args)
        qemu = self.start_qemu(role, args)
        qmp = QMPConnection(qemu.qmp_socket, name=role)
        self.addCleanup(lambda: within(TIMEOUT, qmp.disconnect()))
        await qmp.connect()
        from twisted.internet import reactor

        loaded = config.load(path, role)
        group = DeviceGroup(loaded.domains[0], role, qmp, reactor, registry=registry, timeout=TIMEOUT)
        return Side(role, loaded, qemu, qmp, group)

    async def protected_pair(self, disks: int = 1) -> tuple[Side, Side]:
        """A primary and a secondary with their disks replicated (secondary set up first)."""
        self.make_images(disks)
        secondary = await self.start_side("secondary", self.write_config("secondary", range(disks)))
        primary = await self.start_side("primary", self.write_config("primary", range(disks)))
        await secondary.group.setup()
        await primary.group.setup()
        return primary, secondary

    async def checkpoint(self, primary: Side, secondary: Side) -> None:
        """The device steps of one checkpoint (xen-colo-protocol.md §3.4) on both sides."""
        await primary.group.postsuspend()
        await secondary.group.postsuspend()
        await secondary.group.preresume()
        await primary.group.preresume()
        await primary.group.commit()
        await secondary.group.commit()

    def assertImage(self, path: Path, expected: Image) -> None:
        """``path`` holds exactly ``expected`` (read after its QEMU exited)."""
        data = path.read_bytes()
        self.assertEqual(len(data), len(expected.data))
        if data != expected.data:
            first = next(i for i, (a, b) in enumerate(zip(data, expected.data, strict=True)) if a != b)
            self.fail(f"{path.name} differs first at offset {first:#x}: "
                      f"{data[first]:#04x} instead of {expected.data[first]:#04x}")
