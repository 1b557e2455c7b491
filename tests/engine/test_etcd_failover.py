"""The etcd policy on the lab's two real daemons, with a real etcd-server and 3 s leases.

Each fault is watched by polling both guests: the primary's QEMU by its
process state (a fenced QEMU is SIGSTOPped, and QMP does not answer a stopped
process) and the secondary's by QMP; at no polled moment may both run.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from contextlib import closing
from typing import Any

from twisted.internet import reactor

from colod.config import FailoverConfig, PolicyName
from colod.failover.etcd import EtcdClient
from colod.failover.etcd_policy import EtcdSeat
from colod.failover.monotonic import MonotonicClock
from colod.reactor import asyncio_loop
from colod.testing.etcd import EtcdServer
from colod.testing.lab import BIN, Lab, LabError, Poll
from colod.testing.qmp_blocking import QMPClient
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
        ports = {}
        if relay_primary:
            self.relay = Relay(reactor, etcd.client_port)
            self.addCleanup(self.relay.close)
            ports["host-a"] = self.relay.port
        lab = await self.start_cluster(etcd=etcd, etcd_lease_ttl=TTL, etcd_ports=ports, **settings)
        # Last in, first out: a QEMU or daemon left stopped is killed, not waited for, before the lab closes.
        self.addCleanup(lab.primary.kill_qemu)
        self.addCleanup(lab.primary.kill_daemon)
        return lab

    def prepared(self) -> Lab:
        """The lab under the etcd policy, its etcd and QEMUs started, its daemons not."""
        self.lab = lab = Lab(self.workdir, etcd=EtcdServer(self.workdir), etcd_lease_ttl=TTL)
        self.addCleanup(lab.close)
        lab.prepare()
        lab.start_qemus()
        return lab

    def run_guest(self, lab: Lab) -> None:
        """The primary's guest runs, as it does before colod starts."""
        with closing(QMPClient(str(lab.primary.monitor))) as qmp:
            qmp.execute("cont")
        self.assertEqual(lab.primary.qemu_status(), "running")

    async def owner(self, lab: Lab) -> dict[str, Any] | None:
        assert lab.etcd is not None
        found = await EtcdClient([lab.etcd.url], reactor, tls=lab.etcd.tls).get(
            f"/colod/{lab.domain}/owner".encode())
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
        # An operator's request is refused too: the primary holds its lease.
        command = [str(BIN / "colod"), "failover", "--config", str(lab.secondary.config), lab.domain]
        asked = subprocess.run(command, capture_output=True, text=True, timeout=30)
        self.assertEqual(asked.returncode, 0, asked.stderr)
        await wait(Poll(lambda: "the operator's takeover request (colod failover by" in lab.secondary.logs()
                        or None, 10.0, "the request's refusal", lab.secondary.context))
        self.assertIn("is refused: host-a still holds lab in etcd", lab.secondary.logs())
        self.assertEqual((lab.secondary.status() or {}).get("state"), "awaiting_operator")
        self.assertEqual(lab.primary.qemu_status(), "running")

    @async_test
    async def test_a_primary_waits_for_etcd_and_leaves_its_guest_alone(self) -> None:
        lab = self.prepared()
        assert lab.etcd is not None
        lab.etcd.stop()
        self.run_guest(lab)
        lab.start_daemons()
        await wait(Poll(lambda: lab.primary.logs().count("no etcd lease yet") >= 2 or None, 20.0,
                        "two tries to reach etcd", lab.primary.context))
        self.assertIsNone(lab.primary.status())
        self.assertEqual(lab.primary.qemu_status(), "running")
        lab.etcd.start()
        protected = await wait(lab.until_protected())
        self.assertEqual(protected["generation"], 1)
        self.assertEqual(await self.owner(lab), {"epoch": 1, "node": "host-a"})

    @async_test
    async def test_a_primary_that_meets_another_owner_halts_its_guest(self) -> None:
        lab = self.prepared()
        assert lab.etcd is not None
        failover = FailoverConfig(PolicyName.ETCD, etcd_endpoints=(lab.etcd.url,), etcd_lease_ttl=TTL,
                                  etcd_tls=lab.etcd.tls)
        other = EtcdSeat(failover, lab.domain, "host-b", reactor, MonotonicClock(asyncio_loop()))
        self.addCleanup(other.stop)
        self.assertTrue((await other.own(0)).won)
        self.run_guest(lab)
        lab.primary.start_daemon()
        await wait(Poll(lambda: None if lab.primary.daemon_running() else True, 30.0, "colod's end",
                        lab.primary.context))
        self.assertEqual(lab.primary.stop_daemon(), 1)
        self.assertIn("domain lab: etcd says host-b owns it in epoch 1, and this node's generation is 0: "
                      "this node must never run it as primary; its guest here is halted; colod stops (exit "
                      "status 1)", lab.primary.logs())
        self.assertEqual(lab.primary.qemu_status(), "paused")
        self.assertFalse((lab.primary.state_dir / lab.domain / "generation").exists())

    @async_test
    async def test_a_clean_stop_lets_the_guard_go_and_revokes_the_lease(self) -> None:
        lab = await self.start_etcd_cluster()
        await wait(lab.until_checkpoints(3, 10.0))
        self.assertEqual(lab.primary.stop_daemon(), 0)
        self.assertIn("colod guard: domain lab: colod stopped cleanly; not fencing", lab.primary.logs())
        self.assertIsNone(await self.owner(lab))
        await sleep(TTL)  # past any deadline the guard had
        self.assertFalse(lab.primary.qemu_stopped())
        await self.assertGuestRuns()
