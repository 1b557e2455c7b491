# -*- test-case-name: tests.devices.test_qdisk -*-
"""The secondary's replicated disks: the NBD server, one export per disk, replication.

The disks, overlays and replication nodes are on QEMU's command line
(colod.qemu_args); setup starts one NBD server for the domain, exports each
disk under its export name, then starts replication once for the process.

Failover stops the NBD server first, so that a primary that is only half dead
can no longer write, then stops replication with ``failover: true`` (libxl
omits it and so throws away the secondary's own writes), and waits until
QEMU's internal commit job has merged the overlays into the disk: the job
sends no event, so the block graph is polled until each replication node sits
directly on its disk again.

Teardown (protection ends without a failover) stops replication plainly: the
overlays are dropped and the disk keeps what the primary wrote, so the two
images stay identical.  QEMU 7.2 answers that stop with "Backup job was
cancelled unexpectedly" although it did stop.  Replication nodes cannot be
started twice, so protecting the domain again needs a new device model, as Xen
does.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from zope.interface import implementer

from colod.devices.interfaces import DeviceContext, ICheckpointDevice
from colod.devices.replication import ReplicatedDisks, block_graph, wait_for
from colod.qemu_args import DiskNodes
from colod.qmp import QMPCommandError

NBD_NOT_RUNNING = "NBD server not running"


@implementer(ICheckpointDevice)
class SecondaryDisks(ReplicatedDisks):
    """The secondary side of a domain's replicated disks."""

    primary = False

    def __init__(self, nodes: tuple[DiskNodes, ...], context: DeviceContext) -> None:
        super().__init__(nodes, context)
        self._server = False
        # block-export-add arrived in QEMU 5.2; nbd-server-add is its deprecated forerunner.
        info = context.qmp.info
        self._modern = info is None or "block-export-add" in info.commands

    def setup(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._setup())

    async def _setup(self) -> None:
        await self._start_server()
        await self._each("setup", self._export)
        await self._start_replication()

    async def _start_server(self) -> None:
        domain = self.context.domain
        self._server = True
        try:
            await self.qmp.execute("nbd-server-start", {"addr": {
                "type": "inet", "data": {"host": domain.nbd_host, "port": str(domain.nbd_port)}}})
        except QMPCommandError:
            self._server = False  # QEMU refused: no server of ours (maybe someone else's)
            raise

    async def _stop_server(self) -> None:
        if not self._server:
            return
        try:
            await self.qmp.execute("nbd-server-stop")
        except QMPCommandError as e:
            if e.description != NBD_NOT_RUNNING:
                raise
        self._server = False

    async def _export(self, n: DiskNodes) -> None:
        if self._modern:
            await self.qmp.execute("block-export-add", {
                "type": "nbd", "id": n.export, "node-name": n.export, "name": n.export, "writable": True})
        else:
            await self.qmp.execute("nbd-server-add", {"device": n.export, "name": n.export, "writable": True})

    async def _unexport(self, hook: str) -> None:
        """Close this domain's exports and their client connections, and wait until they are gone.

        Without block-export-add there is no export list either; nbd-server-stop,
        which follows, closes them.
        """
        if not self._modern:
            return
        ours = {n.export for n in self.nodes}

        async def left() -> set[str]:
            return {e["id"] for e in await self.qmp.execute("query-block-exports")} & ours

        present = await left()

        async def close(n: DiskNodes) -> None:
            if n.export in present:
                await self.qmp.execute("block-export-del", {"id": n.export, "mode": "hard"})

        await self._each(hook, close)

        async def gone() -> str | None:
            remaining = await left()
            return f"exports still open: {', '.join(sorted(remaining))}" if remaining else None

        await wait_for(self.context, "closing the NBD exports", gone)

    def teardown(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._teardown())

    async def _teardown(self) -> None:
        await self._stop_replication()
        await self._unexport("teardown")
        await self._stop_server()

    def failover(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._failover())

    async def _failover(self) -> None:
        await self._unexport("failover")
        await self._stop_server()
        await self._stop_replication(failover=True)

        async def committed() -> str | None:
            graph = await block_graph(self.context)
            pending = [n.disk.name for n in self.nodes
                       if graph.children(n.replication).get("file") != n.export]
            if pending:
                return f"overlays of {', '.join(pending)} not yet committed"
            return await self._status()

        await wait_for(self.context, "committing the overlays", committed)
