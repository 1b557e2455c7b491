"""A primary that was taken over from learns it once the link heals, and stops its guest for good.

The lab's pair runs with heartbeat-only (the policy that takes over on silence alone): the primary's colod
is frozen (SIGSTOP) past the heartbeat timeout while its guest runs, the secondary takes over and begins
generation 1, and then the primary's colod is let go on.  Both guests run in between: that is what
heartbeat-only means.  After the heal exactly one must run, the new primary's, and the old primary must
say what it is.
"""

from __future__ import annotations

import signal
from contextlib import closing

from colod.testing.lab import Poll
from colod.testing.qmp_blocking import QMPClient
from tests.cluster import ClusterTestCase, wait
from tests.rig import async_test

#: Beyond the heartbeat timeout: the takeover, then the old primary's next dial and its verdict.
SLACK = 20.0


class SupersededTests(ClusterTestCase):
    @async_test
    async def test_a_frozen_primary_finds_it_was_taken_over_from(self) -> None:
        lab = await self.start_cluster()
        await wait(lab.until_checkpoints(3, 10.0))
        lab.primary.signal_daemon(signal.SIGSTOP)
        taken = await wait(lab.until(lab.secondary, lambda s: s["failed_over"], lab.heartbeat_timeout + SLACK,
                                     "takeover"))
        self.assertEqual((taken["role"], taken["generation"]), ("primary", 1))
        self.assertEqual((lab.secondary.state_dir / lab.domain / "generation").read_text(), "1\n")
        lab.primary.signal_daemon(signal.SIGCONT)

        old = await wait(lab.until(lab.primary, lambda s: s["state"] == "superseded", SLACK, "superseded"))
        self.assertEqual((old["protected"], old["generation"]), (False, 0))
        self.assertIn("SUPERSEDED: host-b is at generation 1, this node at 0: the domain was taken over from "
                      "this node; the guest here is stopped for good", old["error"])
        await wait(lab.until(lab.primary, lambda s: lab.primary.qemu_status() == "paused" or None, 10.0,
                             "the old primary's guest stopped"))
        self.assertEqual(lab.secondary.qemu_status(), "running")
        self.assertIn("refused the link with primary host-a", lab.secondary.logs())
        self.assertIn("host-a is at generation 0, older than this node's 1: the domain was taken over from "
                      "it, it must not run the guest", lab.secondary.logs())

        # A cold start of the old primary, its peer out of reach and its guest run again (as a toolstack
        # would): the mark on its disk makes it halt the guest and refuse, whatever its configuration says.
        mark = lab.primary.state_dir / lab.domain / "superseded"
        self.assertEqual(mark.read_text(), "generation 1, taken over by host-b\n")
        self.assertEqual(lab.primary.stop_daemon(), 0)
        lab.secondary.stop_daemon()
        with closing(QMPClient(str(lab.primary.monitor))) as qmp:
            qmp.execute("cont")
        lab.primary.start_daemon()
        await wait(Poll(lambda: None if lab.primary.daemon_running() else True, 30.0, "colod's end",
                        lab.primary.context))
        self.assertEqual(lab.primary.stop_daemon(), 1)
        self.assertIn(f"this node was taken over from ({mark}: generation 1, taken over by host-b): it must "
                      "never run the guest as primary", lab.primary.logs())
        self.assertIn("its guest here is halted", lab.primary.logs())
        self.assertEqual(lab.primary.qemu_status(), "paused")
