# -*- test-case-name: tests.devices.test_qdisk -*-
"""The secondary's replicated disks: the NBD server, one export per disk, replication.

The disks, overlays and replication nodes are on QEMU's command line
(colod.qemu_args); setup starts one NBD server for the domain, exports each
disk under its export name, then starts replication once for the process.
The server is TLS unless the configuration says otherwise, and lets in only
the primary's certificate (colod.devices.nbd_tls).

Failover stops the NBD server first, so that a primary that is only half dead
can no longer write, then stops replication with ``failover: true`` (libxl
omits it and so throws away the secondary's own writes), and waits until
QEMU's internal commit job has merged the overlays into the disk: the job
sends no event, so the block graph is polled until each replication node sits
directly on its disk again.

Setup first looks for what an earlier colod left in this QEMU (killed, it
cleaned nothing up): this domain's exports and the NBD server serving them are
closed and made again; replication still running is taken over as it is
(QEMU cannot start a replication node twice, and the first checkpoint empties
its overlays anyway).  What colod cannot prove its own, or cannot use, is
refused by name, before anything is changed: an export under another id (the
NBD server is shared), or replication that was started and then stopped or
failed over (single use: the device model must be restarted).

Teardown (protection ends without a failover) stops replication plainly: the
overlays are dropped and the disk keeps what the primary wrote, so the two
images stay identical.  QEMU 7.2 answers that stop with "Backup job was
cancelled unexpectedly" although it did stop.  Replication nodes cannot be
started twice, so protecting the domain again needs a new device model, as Xen
does.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from colod.devices.errors import DeviceError
from colod.devices.interfaces import DeviceContext, ICheckpointDevice
from colod.devices.nbd_tls import check_objects, server_arguments
from colod.devices.replication import BlockGraph, ReplicatedDisks, block_graph, wait_for
from colod.qemu_args import DiskNodes
from colod.qmp import QMPCommandError

NBD_NOT_RUNNING = "NBD server not running"
#: The replication node's child while replication runs or ran (QEMU's name for it).
SECONDARY_DISK = "secondary disk"


class LeftoverError(DeviceError):
    """QEMU holds something from an earlier run that colod cannot prove its own, or cannot use again."""


def replication_stage(graph: BlockGraph, n: DiskNodes) -> str:
    """Where the disk's replication node stands: 'fresh', 'running', or 'used' (stopped or failed over).

    Read from the block graph, the one place QEMU shows it: a started node holds
    the disk as its secondary disk, through the backup job's copy-before-write
    filter while it runs, directly once stopped; a failed-over one sits on the disk.
    """
    if not graph.has(n.replication):
        return "fresh"  # not in this QEMU at all: exporting the disk will say so
    children = graph.children(n.replication)
    if children.get("file") != n.active:
        return "used"
    if SECONDARY_DISK not in children:
        return "fresh"
    return "used" if children[SECONDARY_DISK] == n.export else "running"


@implementer(ICheckpointDevice)
class SecondaryDisks(ReplicatedDisks):
    """The secondary side of a domain's replicated disks."""

    primary = False
    log = Logger()

    def __init__(self, nodes: tuple[DiskNodes, ...], context: DeviceContext) -> None:
        super().__init__(nodes, context)
        self._server = False
        # The node each disk is exported from: its own, or, while an earlier run's replication
        # goes on, the backup job's filter above it (where QEMU moved that run's export).
        self._exported: dict[str, str] = {n.export: n.export for n in self.nodes}
        # block-export-add arrived in QEMU 5.2; nbd-server-add is its deprecated forerunner.
        info = context.qmp.info
        self._modern = info is None or "block-export-add" in info.commands

    def setup(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._setup())

    async def _setup(self) -> None:
        await check_objects(self.qmp, self.context.domain, self.context.role)  # before changing anything
        running = await self._reclaim()
        await self._start_server()
        await self._each("setup", self._export)
        if running:
            self._replicating = True  # an earlier run's: it cannot be started again, and needs not be
        else:
            await self._start_replication()

    async def _reclaim(self) -> bool:
        """Clear what an earlier colod left in this QEMU, or refuse it; True if its replication runs.

        Everything is checked before anything is changed, so a refusal leaves QEMU as it was.
        """
        if self._unusable:
            return False  # this run's own failed start, not an earlier run's: starting again says why
        graph = await block_graph(self.context)
        stages = {n.disk.name: replication_stage(graph, n) for n in self.nodes}
        used = sorted(name for name, stage in stages.items() if stage == "used")
        if used:
            raise LeftoverError(f"replication of {', '.join(used)} was started in this QEMU before and "
                                "has stopped; a replication node cannot start twice: restart the QEMU")
        running = set(stages.values()) == {"running"}
        if "running" in stages.values() and not running:
            raise LeftoverError(f"replication runs for some disks only ({stages}): restart the QEMU")
        if running:
            self._exported = {n.export: graph.children(n.replication)[SECONDARY_DISK] for n in self.nodes}
        exports: set[str] = set()
        if self._modern:
            exports = {e["id"] for e in await self.qmp.execute("query-block-exports")}
            strangers = exports - {n.export for n in self.nodes}
            if strangers:
                raise LeftoverError(f"QEMU has NBD exports colod did not make for domain "
                                    f"{self.context.domain.name}: {', '.join(sorted(strangers))}; remove "
                                    "them (colod's NBD server would serve them) or restart the QEMU")
        if not (self._modern or running):
            return False  # no export list to prove a server colod's: nbd-server-start will say
        await self._unexport("setup")
        server = await self._nbd_server_stop()
        if exports or server or running:
            self.log.warn("domain {domain}: cleared what an earlier colod left in QEMU: exports: {exports}; "
                          "NBD server: {server}; replication: {replication}", domain=self.context.domain.name,
                          exports=", ".join(sorted(exports)) or "none",
                          server="stopped" if server else "none",
                          replication="running, taken over" if running else "none")
        return running

    async def _start_server(self) -> None:
        domain = self.context.domain
        self._server = True
        try:
            await self.qmp.execute("nbd-server-start", {"addr": {
                "type": "inet", "data": {"host": domain.nbd_host, "port": str(domain.nbd_port)}},
                **server_arguments(domain)})
        except QMPCommandError:
            self._server = False  # QEMU refused: no server of ours (maybe someone else's)
            raise

    async def _stop_server(self) -> None:
        if self._server:
            await self._nbd_server_stop()
            self._server = False

    async def _nbd_server_stop(self) -> bool:
        """Stop QEMU's NBD server; False if none was running."""
        try:
            await self.qmp.execute("nbd-server-stop")
        except QMPCommandError as e:
            if e.description != NBD_NOT_RUNNING:
                raise
            return False
        return True

    async def _export(self, n: DiskNodes) -> None:
        node = self._exported[n.export]
        if self._modern:
            await self.qmp.execute("block-export-add", {
                "type": "nbd", "id": n.export, "node-name": node, "name": n.export, "writable": True})
        else:
            await self.qmp.execute("nbd-server-add", {"device": node, "name": n.export, "writable": True})

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
        if self._server:  # else the exports are not this run's (a refused setup leaves them)
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
