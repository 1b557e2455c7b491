# -*- test-case-name: tests.devices.test_qdisk -*-
"""The primary's replicated disks: a replication child over NBD on each guest quorum.

Setup adds, per disk, a ``replication`` node in primary mode over an NBD
client connected to the secondary's export (``blockdev-add``; no HMP
``drive_add``), attaches it to the disk's quorum with ``x-blockdev-change``,
and then starts replication once for the process.  The secondary must be
ready first: the NBD client connects as it is added, under TLS unless the
configuration says otherwise, to a server whose certificate names the
secondary (colod.devices.nbd_tls).

Removing a child uses the edge name read from the block graph, never an
assumed ``children.1``.  drop_secondary first yanks the NBD clients out of
band: a hung secondary stalls the quorum's writes and, through them, every
in-band QMP command that drains the disk.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from zope.interface import implementer

from colod.devices.interfaces import ICheckpointDevice
from colod.devices.nbd_tls import check_objects, client_arguments
from colod.devices.replication import ReplicatedDisks, block_graph
from colod.qemu_args import DiskNodes
from colod.qmp import QMPCommandError


@implementer(ICheckpointDevice)
class PrimaryDisks(ReplicatedDisks):
    """The primary side of a domain's replicated disks."""

    primary = True

    def setup(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._setup())

    async def _setup(self) -> None:
        await check_objects(self.qmp, self.context.domain, self.context.role)
        await self._each("setup", self._attach)
        await self._start_replication()

    async def _attach(self, n: DiskNodes) -> None:
        domain = self.context.domain
        await self.qmp.execute("blockdev-add", {
            "driver": "replication", "node-name": n.replication, "mode": "primary",
            "file": {
                "driver": "nbd", "node-name": n.nbd, "export": n.export,
                "server": {"type": "inet", "host": domain.nbd_host, "port": str(domain.nbd_port)},
                **client_arguments(domain),
            },
        })
        await self.qmp.execute("x-blockdev-change", {"parent": n.quorum, "node": n.replication})

    def teardown(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._remove("teardown"))

    def drop_secondary(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._drop())

    async def _drop(self) -> None:
        await self._each("drop_secondary", self._yank)
        await self._remove("drop_secondary")

    async def _yank(self, n: DiskNodes) -> None:
        """Break the NBD connection at once, so that stuck writes fail instead of hanging."""
        try:
            await self.qmp.execute(
                "yank", {"instances": [{"type": "block-node", "node-name": n.nbd}]}, oob=True)
        except QMPCommandError:
            pass  # no such connection (never added, or gone): nothing is stuck on it

    async def _remove(self, hook: str) -> None:
        """Detach and delete whatever of the replication children exists, in the safe order."""
        graph = await block_graph(self.context)

        async def detach(n: DiskNodes) -> None:
            edge = graph.edge(n.quorum, n.replication)
            if edge is not None:
                await self.qmp.execute("x-blockdev-change", {"parent": n.quorum, "child": edge})

        async def delete(n: DiskNodes) -> None:
            if graph.has(n.replication):
                await self.qmp.execute("blockdev-del", {"node-name": n.replication})

        await self._each(hook, detach)
        await self._stop_replication()
        await self._each(hook, delete)
