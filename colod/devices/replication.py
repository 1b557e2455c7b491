# -*- test-case-name: tests.devices.test_qdisk -*-
"""QEMU block replication over QMP, and what both sides' disk handlers share.

QEMU's replication commands act on every replication node of the process at
once (``replication_start_all`` and friends), so they are sent once per
domain, never once per disk.  QEMU 7.2's pitfalls, from the lab notes, are
handled here:

- ``query-xen-replication-status`` answers ``{"error": true, "desc": ...}``
  instead of failing; the error is turned into ReplicationError;
- a secondary start that failed with ``No top_bs or it is invalid`` leaves the
  replication node half-started, and any later ``xen-set-replication`` aborts
  QEMU: after it colod never sends that command to this QEMU again;
- a plain secondary stop always answers ``Backup job was cancelled
  unexpectedly`` although it did stop, and since QEMU gives up at the first
  error, only the first disk is stopped: the stop is repeated until all are;
- internal jobs (backup, failover commit) send no events and are not in
  ``query-jobs``: their effect is read from ``x-debug-query-block-graph``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Sequence
from functools import partial
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import deferLater

from colod.devices.errors import DeviceError, ReplicationError, ReplicationUnusable
from colod.devices.interfaces import DeviceContext, DeviceHealth
from colod.devices.parallel import run_all
from colod.qemu_args import DiskNodes
from colod.qmp import QMPCommandError, QMPFailure

BACKUP_CANCELLED = "Backup job was cancelled unexpectedly"
NOT_RUNNING = "Block replication is not running"
NO_TOP_BS = "No top_bs or it is invalid"
# How often a wait for an internal QEMU job looks again.
POLL_INTERVAL = 0.02


@attrs.frozen
class BlockGraph:
    """QEMU's block graph: node names and the named edges between them."""

    ids: dict[str, int]
    edges: tuple[tuple[int, str, int], ...]

    @classmethod
    def from_qmp(cls, reply: dict[str, Any]) -> BlockGraph:
        ids = {n["name"]: n["id"] for n in reply["nodes"] if n["type"] == "block-driver" and n["name"]}
        edges = tuple((e["parent"], e["name"], e["child"]) for e in reply["edges"])
        return cls(ids, edges)

    def has(self, node: str) -> bool:
        return node in self.ids

    def children(self, parent: str) -> dict[str, str]:
        """The children of ``parent``: edge name (``children.1``, ``file``...) to node name."""
        names = {i: name for name, i in self.ids.items()}
        pid = self.ids.get(parent)
        return {edge: names.get(child, "") for p, edge, child in self.edges if p == pid}

    def edge(self, parent: str, child: str) -> str | None:
        """The name under which ``parent`` holds ``child``, if it does."""
        for edge, node in self.children(parent).items():
            if node == child:
                return edge
        return None


async def block_graph(context: DeviceContext) -> BlockGraph:
    return BlockGraph.from_qmp(await context.qmp.execute("x-debug-query-block-graph"))


async def wait_for(context: DeviceContext, what: str, done: Callable[[], Awaitable[str | None]]) -> None:
    """Poll ``done`` (None when finished, else what is still awaited) until the deadline."""
    deadline = context.clock.seconds() + context.timeout
    while True:
        waiting = await done()
        if waiting is None:
            return
        if context.clock.seconds() >= deadline:
            raise DeviceError(f"{what} not done within {context.timeout:g} s ({waiting})")
        await deferLater(context.clock, POLL_INTERVAL, lambda: None)


def _start(step: Callable[[DiskNodes], Coroutine[Any, Any, Any]], n: DiskNodes) -> Deferred[Any]:
    return Deferred.fromCoroutine(step(n))


class ReplicatedDisks:
    """The disks of one domain replicated through one QEMU: the part both roles share."""

    primary: bool

    def __init__(self, nodes: Sequence[DiskNodes], context: DeviceContext) -> None:
        self.nodes = tuple(nodes)
        self.names = tuple(n.disk.name for n in self.nodes)
        self.context = context
        self.qmp = context.qmp
        # Set once a start has been sent (even one that failed: with several
        # disks some may have started); cleared once replication is stopped.
        self._replicating = False
        self._unusable = False

    def _each(self, hook: str, step: Callable[[DiskNodes], Coroutine[Any, Any, Any]]) -> Deferred[list[Any]]:
        """Run ``step`` on every disk in parallel; failures are reported per disk."""
        tasks = [((n.disk.name,), partial(_start, step, n)) for n in self.nodes]
        return Deferred.fromCoroutine(run_all(hook, tasks))

    # -- the per-process replication commands ------------------------------

    async def _start_replication(self) -> None:
        if self._unusable:
            raise ReplicationUnusable(
                f"QEMU refused to start replication earlier ({NO_TOP_BS}) and would abort if asked "
                "again: restart the device model")
        self._replicating = True
        try:
            await self.qmp.execute("xen-set-replication", {"enable": True, "primary": self.primary})
        except QMPCommandError as e:
            if e.description == NO_TOP_BS:
                self._unusable = True
                self._replicating = False
            raise ReplicationError("xen-set-replication", e.description) from None

    async def _stop_replication(self, failover: bool = False) -> None:
        """Stop replication on every node of the process; "it is stopped" answers count as success.

        QEMU stops the nodes one after the other and gives up at the first
        error, and a plain secondary stop always ends in one (BACKUP_CANCELLED,
        after stopping that node): so each such answer means one node more is
        stopped, and the command is repeated until QEMU answers without error.
        """
        if not self._replicating:
            return
        arguments = {"enable": False, "primary": self.primary}
        if failover:
            arguments["failover"] = True
        for _attempt in range(len(self.nodes) + 1):
            try:
                await self.qmp.execute("xen-set-replication", arguments)
                break
            except QMPCommandError as e:
                if e.description == NOT_RUNNING:
                    break  # never started (a failed setup): nothing to stop
                if e.description != BACKUP_CANCELLED:
                    raise ReplicationError("xen-set-replication", e.description) from None
        else:
            raise ReplicationError("xen-set-replication", f"still running after {len(self.nodes) + 1} stops")
        self._replicating = False

    async def _status(self) -> str | None:
        """QEMU's replication error for this process, or None when there is none."""
        status = await self.qmp.execute("query-xen-replication-status")
        if status["error"]:
            return str(status.get("desc", "unspecified replication error"))
        return None

    async def _check_status(self) -> None:
        problem = await self._status()
        if problem is not None:
            raise ReplicationError("query-xen-replication-status", problem)

    async def _checkpoint(self) -> None:
        try:
            await self.qmp.execute("xen-colo-do-checkpoint")
        except QMPCommandError as e:
            raise ReplicationError("xen-colo-do-checkpoint", e.description) from None

    # -- the checkpoint hooks (the same on both sides) -------------------------

    def postsuspend(self) -> Deferred[None]:
        """Both guests are stopped: this is where a replication error must surface."""
        return Deferred.fromCoroutine(self._check_status())

    def preresume(self) -> Deferred[None]:
        """The checkpoint is taken: the secondary empties its overlays (a no-op on the primary)."""
        return Deferred.fromCoroutine(self._checkpoint())

    def commit(self) -> Deferred[None]:
        return succeed(None)

    # -- losing the peer: each side overrides its own ----------------------------

    def failover(self) -> Deferred[None]:
        return fail(DeviceError("only the secondary's disks fail over"))

    def drop_secondary(self) -> Deferred[None]:
        return fail(DeviceError("only the primary's disks have a secondary to drop"))

    def health(self) -> Deferred[Sequence[DeviceHealth]]:
        return Deferred.fromCoroutine(self._health())

    async def _health(self) -> Sequence[DeviceHealth]:
        if not self._replicating:
            problem: str | None = "replication is not running"
        else:
            try:
                problem = await self._status()
            except QMPFailure as e:
                problem = str(e)
        return [DeviceHealth(name, problem is None, problem or "") for name in self.names]
