"""The two engines in one process, over real TCP, driving two real QEMUs with replicated disks.

These check the engines' own logic (states, the request API, what each side
does when the other goes away or misbehaves) where the test can reach in;
tests/engine/test_daemons.py and its neighbours check the same through two
twistd processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint

from colod.engine.core import EngineCore
from colod.engine.generation import Generation
from colod.engine.primary import CheckpointRefused, PrimaryEngine, PrimaryState
from colod.engine.secondary import SecondaryEngine, SecondaryState
from colod.engine.status import StatusFile
from colod.failover.policy import HeartbeatOnly, OperatorRequest
from colod.guest.device_model import DeviceModelEngine
from colod.guest.memory_image import MemoryImage
from colod.guest.qemu_guest import QemuGuest
from colod.protocol import CheckpointId, CheckpointState, EmulatorContext
from colod.protocol.handshake import Hello, Role
from colod.protocol.peer import LinkTiming, PeerLink, PeerLinkFactory
from colod.testing.qemu_process import QemuProcess
from tests.cluster import Direction, LinkProxy, record_of
from tests.devices.pair import SIZE, TIMEOUT, ReplicationTestCase, Side, within
from tests.qmp_proxy import QMPProxy
from tests.rig import async_test, sleep

PAGES = 64
TIMING = LinkTiming(heartbeat_interval=0.1, silence_timeout=0.5)


class Node:
    """One side: its QEMU (Side), memory image, guest engine and checkpoint engine."""

    def __init__(self, side: Side, image: MemoryImage, engine: EngineCore) -> None:
        self.side = side
        self.image = image
        self.engine = engine


class EnginePairTestCase(ReplicationTestCase):
    #: The link proxy between the engines, when pair() was asked for one.
    link_proxy: LinkProxy
    #: By role: the QMP proxies in front of the QEMUs that pair() was asked to proxy.
    qmp_proxies: dict[str, QMPProxy]
    _proxy_qmp: frozenset[str] = frozenset()

    async def pair(self, interval: float = 3600.0, checkpoint_timeout: float = TIMEOUT, *,
                   proxy_link: bool = False, proxy_qmp: Sequence[str] = ()) -> tuple[Node, Node]:
        """A primary and a secondary engine, linked, after their first checkpoint.

        ``proxy_link``: the primary connects through a LinkProxy (tests/cluster.py);
        ``proxy_qmp``: the roles whose QEMU everyone reaches through a QMPProxy.
        """
        self.qmp_proxies = {}
        self._proxy_qmp = frozenset(proxy_qmp)
        self.make_images(1)
        nodes = {}
        for role in ("secondary", "primary"):
            side = await self.start_side(role, self.write_config(role, [0]))
            path = self.workdir / f"{role}.ram"
            image = MemoryImage.create(path, PAGES)
            self.addCleanup(image.close)
            guest = QemuGuest(role, DeviceModelEngine(side.qmp, self.workdir / f"{role}-state", reactor),
                              str(path), reactor, timeout=TIMEOUT)
            self.addCleanup(guest.close)
            common = (side.domain, role, guest, side.group, reactor, StatusFile(self.workdir / role, reactor),
                      side.qmp)
            engine: EngineCore
            if role == "primary":
                engine = PrimaryEngine(*common, generation=Generation(self.workdir / role), interval=interval,
                                       checkpoint_timeout=checkpoint_timeout)
            else:
                engine = SecondaryEngine(*common, generation=Generation(self.workdir / role),
                                         policy=HeartbeatOnly(),
                                         requests=OperatorRequest(self.workdir, "guest"))
            nodes[role] = Node(side, image, engine)
        primary, secondary = nodes["primary"], nodes["secondary"]
        port = reactor.listenTCP(0, PeerLinkFactory(
            Hello(Role.SECONDARY, "guest", "secondary"), "primary", secondary.engine, reactor, TIMING),
            interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        target = port.getHost().port
        if proxy_link:
            self.link_proxy = LinkProxy(target)
            target = self.link_proxy.listen()
            self.addCleanup(self.link_proxy.close)
        link = await TCP4ClientEndpoint(reactor, "127.0.0.1", target).connect(PeerLinkFactory(
            Hello(Role.PRIMARY, "guest", "primary"), "secondary", primary.engine, reactor, TIMING))
        self.addCleanup(self.shut_down, primary, secondary, link)
        await self.until(lambda: primary.engine.checkpoints >= 1 and secondary.engine.checkpoints >= 1)
        return primary, secondary

    def start_qemu(self, name: str, args: Sequence[str] = (), **kwargs: str) -> QemuProcess:
        """As QemuTestCase's; a QEMU named in pair()'s ``proxy_qmp`` is then reached through a QMPProxy."""
        qemu = super().start_qemu(name, args, **kwargs)
        if name in self._proxy_qmp:
            proxy = self.qmp_proxies[name] = QMPProxy(qemu.qmp_socket)
            qemu.qmp_socket = proxy.listen(str(self.workdir / f"{name}-proxy.qmp"))
            self.addCleanup(proxy.close)
        return qemu

    async def shut_down(self, primary: Node, secondary: Node, link: PeerLink) -> None:
        for node in (primary, secondary):
            await within(TIMEOUT, node.engine.shutdown())
        link.transport.abortConnection()

    async def until(self, condition: Any, timeout: float = TIMEOUT) -> None:
        deadline = reactor.seconds() + timeout
        while not condition():
            if reactor.seconds() > deadline:
                self.fail(f"condition not met within {timeout} s")
            await sleep(0.01)

    async def qemu_status(self, node: Node) -> str:
        return (await node.side.qmp.execute("query-status"))["status"]


class CheckpointTests(EnginePairTestCase):
    @async_test
    async def test_requested_checkpoints_carry_memory_and_disk(self) -> None:
        """Each requested checkpoint makes the secondary's memory and disk the primary's."""
        primary, secondary = await self.pair()
        self.assertEqual((primary.engine.state, secondary.engine.state),
                         (PrimaryState.PROTECTED, SecondaryState.RUNNING))
        self.assertEqual(await self.qemu_status(primary), "running")
        numbers = []
        for n in range(5):
            primary.image.write(1 + n, bytes([0x40 + n]) * 100, offset=n)
            await primary.side.write("colo-disk0", 0x60 + n, n * 65536, 4096)
            numbers.append(await within(TIMEOUT, primary.engine.request_checkpoint()))
            self.assertEqual(secondary.image.read_pages(range(PAGES)), primary.image.read_pages(range(PAGES)))
        self.assertEqual(numbers, [2, 3, 4, 5, 6])
        self.assertEqual(self.image("secondary", 0).read_bytes(), self.image("primary", 0).read_bytes())
        pause = primary.engine.pauses.recent[-1]
        self.assertGreater(pause.seconds, 0)
        self.assertGreater(pause.in_qemu, 0)
        self.assertLessEqual(pause.in_qemu + pause.copying, pause.seconds)

    @async_test
    async def test_secondary_keeps_the_last_checkpoints_device_state(self) -> None:
        """What the secondary would load at failover is the device state the primary sent last."""
        primary, secondary = await self.pair(proxy_link=True)
        staged = self.workdir / "secondary-state" / "device-state"
        sent: list[bytes] = []
        for _ in range(3):
            crossed = self.link_proxy.when(Direction.MAIN, record_of(EmulatorContext), lambda: None)
            await within(TIMEOUT, primary.engine.request_checkpoint())
            sent.append(bytes((await within(TIMEOUT, crossed)).blob))
            self.assertEqual(staged.read_bytes(), sent[-1])
        self.assertEqual(sent[-1][:4], b"QEVM")
        # QEMU's clock moves with every suspend, so each state is new: an older one would not pass.
        self.assertEqual(len(set(sent)), len(sent))

    @async_test
    async def test_interval_triggers_checkpoints(self) -> None:
        primary, secondary = await self.pair(interval=0.02)
        await self.until(lambda: secondary.engine.checkpoints >= 20)
        self.assertTrue(primary.engine.protected and secondary.engine.protected)

    @async_test
    async def test_secondary_dirty_pages_are_restored(self) -> None:
        """Pages the secondary's guest dirtied come back from the primary at the next checkpoint."""
        primary, secondary = await self.pair()
        secondary.image.write(7, b"secondary's own write")
        await within(TIMEOUT, primary.engine.request_checkpoint())
        self.assertEqual(secondary.image.read(7), primary.image.read(7))


class PeerLossTests(EnginePairTestCase):
    @async_test
    async def test_secondary_takes_over_from_the_last_checkpoint(self) -> None:
        primary, secondary = await self.pair()
        primary.image.write(3, b"checkpointed")
        await primary.side.write("colo-disk0", 0x71, 0, 4096)
        await within(TIMEOUT, primary.engine.request_checkpoint())
        memory = primary.image.read_pages(range(PAGES))
        disk = self.image("primary", 0).read_bytes()
        primary.image.write(3, b"lost with the primary")
        await primary.side.write("colo-disk0", 0x72, 0, 8192)
        primary.engine.link.transport.abortConnection()  # type: ignore[union-attr]
        await self.until(lambda: secondary.engine.state is SecondaryState.PRIMARY_UNPROTECTED)
        self.assertEqual(secondary.image.read_pages(range(PAGES)), memory)
        self.assertEqual(await self.qemu_status(secondary), "running")
        await secondary.side.qmp.execute("human-monitor-command",
                                         {"command-line": "qemu-io colo-disk0 flush"})
        self.assertEqual(self.image("secondary", 0).read_bytes(), disk)
        self.assertEqual(len(disk), SIZE)

    @async_test
    async def test_primary_drops_a_lost_secondary(self) -> None:
        primary, secondary = await self.pair()
        secondary.engine.link.transport.abortConnection()  # type: ignore[union-attr]
        await self.until(lambda: primary.engine.state is PrimaryState.UNPROTECTED)
        self.assertIn("replication ended", primary.engine.error)
        self.assertEqual(await self.qemu_status(primary), "running")
        await primary.side.write("colo-disk0", 0x73, 0, 4096)
        with self.assertRaises(CheckpointRefused) as caught:
            await primary.engine.request_checkpoint()
        self.assertEqual(str(caught.exception), "domain guest is not protected (unprotected)")

    @async_test
    async def test_hung_secondary_is_dropped_after_the_checkpoint_timeout(self) -> None:
        """A secondary that heartbeats but never answers does not keep the guest suspended."""
        primary, secondary = await self.pair(checkpoint_timeout=0.5, proxy_qmp=["secondary"])
        # The secondary's QEMU never answers its postsuspend's status query, so no SVM_SUSPENDED
        # comes, while its colod (in this process) heartbeats on.
        stalled = self.qmp_proxies["secondary"].stall("query-xen-replication-status", times=1)
        started = reactor.seconds()
        with self.assertRaises(CheckpointRefused) as caught:
            await within(TIMEOUT, primary.engine.request_checkpoint())
        self.assertLess(reactor.seconds() - started, 0.5 + 2.0)
        self.assertEqual(str(caught.exception),
                         "domain guest: replication ended: checkpoint 2 not complete after 0.5 s")
        self.assertEqual(stalled.hits, 1)
        self.assertIs(primary.engine.state, PrimaryState.DROPPING_SECONDARY)
        await self.until(lambda: primary.engine.state is PrimaryState.UNPROTECTED)
        self.assertIn("checkpoint 2 not complete after 0.5 s", primary.engine.error)
        self.assertEqual(await self.qemu_status(primary), "running")

    @async_test
    async def test_a_failed_drop_is_kept_in_the_error(self) -> None:
        """The primary's QEMU refuses to detach the secondary's disk: said in the error, the guest runs on."""
        primary, secondary = await self.pair(proxy_qmp=["primary"])
        refusal = self.qmp_proxies["primary"].fail("x-blockdev-change", "detaching refused", times=1)
        secondary.engine.link.transport.abortConnection()  # type: ignore[union-attr]
        await self.until(lambda: primary.engine.state is PrimaryState.UNPROTECTED)
        self.assertEqual(refusal.hits, 1)
        self.assertIn("; detaching the secondary's replication failed: drop_secondary failed for xvda: "
                      "QMP x-blockdev-change failed: GenericError: detaching refused", primary.engine.error)
        self.assertEqual(await self.qemu_status(primary), "running")

    @async_test
    async def test_wrong_record_ends_replication_on_both_sides(self) -> None:
        """SVM_SUSPENDED before any NEW is legal on the wire but not in the protocol."""
        primary, secondary = await self.pair()
        secondary.engine.link.sendRecord(CheckpointState(CheckpointId.SVM_SUSPENDED))  # type: ignore[union-attr]
        await self.until(lambda: primary.engine.state is PrimaryState.UNPROTECTED
                         and secondary.engine.state is SecondaryState.ENDED)
        self.assertIn("protocol error: CHECKPOINT_STATE(SVM_SUSPENDED) is not allowed while protected",
                      primary.engine.error)
        self.assertIn("the peer ended replication: protocol error: CHECKPOINT_STATE(SVM_SUSPENDED)",
                      secondary.engine.error)
        self.assertEqual(await self.qemu_status(primary), "running")

    @async_test
    async def test_primary_shutdown_is_no_failover(self) -> None:
        primary, secondary = await self.pair()
        await within(TIMEOUT, primary.engine.shutdown())
        await self.until(lambda: secondary.engine.state is SecondaryState.ENDED)
        self.assertEqual(secondary.engine.error, "replication ended: the peer ended replication: shutdown: "
                                                 "colod on the primary is stopping; its guest runs on")
        self.assertEqual(await self.qemu_status(primary), "running")
