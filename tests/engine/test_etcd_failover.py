"""The etcd policy on the lab's two real daemons, with a real etcd-server and 3 s leases.

Each fault is watched by polling both guests: the primary's QEMU by its
process state (a fenced QEMU is SIGSTOPped, and QMP does not answer a stopped
process) and the secondary's by QMP; at no polled moment may both run.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor

from colod.failover.etcd import EtcdClient
from colod.testing.etcd import EtcdServer
from colod.testing.lab import Lab, LabError
from colod.testing.relay import Relay
from tests.cluster import ClusterTestCase, Direction, wait
from tests.rig import async_test, sleep

TTL = 3
#: Seconds from a fault to the secondary's takeover, at most: the lease's TTL, the claims' deadline, the load.
TAKEOVER = 30.0
#: Between two looks at both guests.
LOOK = 0.05


class EtcdFailoverTests(ClusterTestCase):
    async def start_etcd_cluster(self, *, relay_primary: bool = False, **settings: Any) -> Lab:
        """The lab's pair under the etcd policy, protected; the primary reaches etcd through a relay
        (self.relay) if asked."""
        etcd = EtcdServer(self.workdir)
        urls = {}
        if relay_primary:
            self.relay = Relay(reactor, etcd.client_port)
            self.addCleanup(self.relay.close)
            urls["host-a"] = self.relay.url
        lab = await self.start_cluster(etcd=etcd, etcd_lease_ttl=TTL, etcd_urls=urls, **settings)
        # Last in, first out: a QEMU or daemon left stopped is killed, not waited for, before the lab closes.
        self.addCleanup(lab.primary.kill_qemu)
        self.addCleanup(lab.primary.kill_daemon)
        return lab

    async def owner(self, lab: Lab) -> dict[str, Any] | None:
        assert lab.etcd is not None
        found = await EtcdClient([lab.etcd.url], reactor).get(f"/colod/{lab.domain}/owner".encode())
        return None if found is None else json.loads(found.value)

    async def watch(self, lab: Lab, until: Callable[[], bool], timeout: float, what: str) -> list[str]:
        """Poll both guests until ``until()``; what was seen, one letter pair per look ('R' running); fails
        the test at once if both ran."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                raise LabError(f"{what} not within {timeout:g} s" + lab.primary.context()
                               + lab.secondary.context())
            primary = "-" if lab.primary.qemu_stopped() else "R"
            secondary = "R" if lab.secondary.qemu_status() == "running" else "-"
            seen.append(primary + secondary)
            self.assertNotEqual(seen[-1], "RR", f"both guests ran at once after {len(seen)} looks")
            await sleep(LOOK)
        return seen

    def taken_over(self, lab: Lab) -> Callable[[], bool]:
        return lambda: bool((lab.secondary.status() or {}).get("failed_over"))

    async def assert_took_over(self, lab: Lab) -> None:
        status = lab.secondary.status()
        assert status is not None
        self.assertEqual((status["role"], status["state"], status["generation"]),
                         ("primary", "primary_unprotected", 2))
        self.assertEqual(await self.owner(lab), {"epoch": 2, "node": "host-b"})
        self.assertTrue(lab.primary.qemu_stopped())
        self.assertEqual(lab.secondary.qemu_status(), "running")

    @async_test
    async def test_a_protected_pair_is_owned_by_its_primary(self) -> None:
        lab = await self.start_etcd_cluster()
        status = lab.primary.status()
        assert status is not None
        self.assertEqual((status["state"], status["generation"]), ("protected", 1))
        self.assertEqual(await self.owner(lab), {"epoch": 1, "node": "host-a"})
        self.assertEqual((lab.secondary.state_dir / lab.domain / "generation").read_text(), "1\n")
        self.assertIn("this node owns it in etcd, epoch 1", lab.primary.logs())

    @async_test
    async def test_a_killed_primary_colod_is_fenced_by_its_guard(self) -> None:
        lab = await self.start_etcd_cluster()
        await wait(lab.until_checkpoints(3, 10.0))
        killed = time.monotonic()
        lab.primary.kill_daemon()
        seen = await self.watch(lab, self.taken_over(lab), TAKEOVER, "the takeover")
        print(f"\ntakeover {time.monotonic() - killed:.2f} s after the primary colod's SIGKILL; looks: "
              f"{''.join(seen[::10])}")
        self.assertEqual(seen[-1][0], "-", "the primary's guest was not stopped by the takeover")
        await self.assert_took_over(lab)
        self.assertIn("FENCED: colod is gone", lab.primary.logs())

    @async_test
    async def test_a_frozen_primary_colod_is_fenced_by_its_guard(self) -> None:
        lab = await self.start_etcd_cluster()
        await wait(lab.until_checkpoints(3, 10.0))
        lab.primary.signal_daemon(signal.SIGSTOP)
        await self.watch(lab, self.taken_over(lab), TAKEOVER, "the takeover")
        await self.assert_took_over(lab)
        self.assertIn("FENCED: the lease's safe deadline passed with no renewal from colod",
                      lab.primary.logs())

    @async_test
    async def test_a_primary_cut_from_etcd_fences_itself(self) -> None:
        lab = await self.start_etcd_cluster(relay_primary=True)
        await wait(lab.until_checkpoints(3, 10.0))
        self.relay.freeze()
        await self.watch(lab, self.taken_over(lab), TAKEOVER, "the takeover")
        await self.assert_took_over(lab)
        fenced = await wait(lab.until(lab.primary, lambda s: s["state"] == "fenced", 10.0, "fenced"))
        self.assertIn("FENCED: its etcd lease was not renewed in time", fenced["error"])

    @async_test
    async def test_a_cut_link_leaves_the_primary_running(self) -> None:
        lab = await self.start_etcd_cluster(proxy=True)
        await wait(lab.until_checkpoints(3, 10.0))
        self.proxy.hold(Direction.MAIN)
        self.proxy.hold(Direction.BACK)
        waiting = lambda: (lab.secondary.status() or {}).get("state") == "awaiting_operator"  # noqa: E731
        await self.watch(lab, waiting, TAKEOVER, "the secondary's no")
        status = lab.secondary.status()
        assert status is not None
        self.assertIn("not taking over: host-a still holds lab in etcd (epoch 1): its lease is alive",
                      status["error"])
        self.assertFalse(lab.primary.qemu_stopped())
        self.assertEqual(lab.primary.qemu_status(), "running")
        self.assertEqual(await self.owner(lab), {"epoch": 1, "node": "host-a"})
        await self.assertGuestRuns()
