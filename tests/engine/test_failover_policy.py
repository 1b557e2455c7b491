"""The failover policies on the lab's two real daemons: a secondary that lost its primary takes the
guest over only when its policy (or the operator) says so, and never while the primary's guest may run.

Each test kills the primary's colod and leaves its QEMU running (a stalled or crashed daemon on a host
that is still up: the case a heartbeat alone gets wrong), then checks what the secondary does.  The
primary's guest is then running, or paused if the kill came in a checkpoint (nothing resumes it: colod
on the primary is dead), and its QEMU is there either way: the secondary must not run its copy.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from colod.testing.lab import BIN, Lab
from tests.cluster import ClusterTestCase, wait
from tests.rig import async_test, sleep

#: Beyond the heartbeat timeout: how long a decision may take to show in the status.
SLACK = 10.0


def colod_failover(lab: Lab) -> subprocess.CompletedProcess[str]:
    """The operator's command line on the secondary's host."""
    return subprocess.run([str(BIN / "colod"), "failover", "--config", str(lab.secondary.config), lab.domain],
                          capture_output=True, text=True, timeout=30, check=False)


def fence_script(workdir: Path, exit_status: int) -> Path:
    """A fence agent: logs its arguments, kills the pid in ``fence.pid`` if there is one (the primary's
    QEMU: its host is fenced) and waits until it is gone, then exits ``exit_status`` after a line on
    stderr."""
    script = workdir / "fence.sh"
    script.write_text(f"""#!/bin/sh
echo "$@" >> {workdir}/fence.log
if [ -f {workdir}/fence.pid ]; then
    pid=$(cat {workdir}/fence.pid)
    kill -KILL $pid
    while kill -0 $pid 2>/dev/null && [ "$(cut -d" " -f3 /proc/$pid/stat)" != Z ]; do sleep 0.05; done
fi
echo "fence agent done with status {exit_status}" >&2
exit {exit_status}
""")
    script.chmod(0o755)
    return script


class FailoverPolicyTests(ClusterTestCase):
    async def lose_primary_daemon(self, lab: Lab) -> dict[str, object]:
        """Kill the primary's colod once protected (its guest runs on); the secondary's status once it
        has decided (or is waiting for the operator)."""
        await wait(lab.until_checkpoints(3, 10.0))
        lab.primary.kill_daemon()
        decided = ("awaiting_operator", "primary_unprotected", "failover_failed")
        return await wait(lab.until(lab.secondary, lambda s: s["state"] in decided,
                                    lab.heartbeat_timeout + SLACK, "a decision"))

    def assertPrimaryKeepsTheGuest(self, lab: Lab) -> None:
        self.assertIn(lab.primary.qemu_status(), ("running", "paused"))
        self.assertNotEqual(lab.secondary.qemu_status(), "running")
        self.assertFalse(lab.secondary.device_state_loaded())

    async def assertTakesOver(self, lab: Lab) -> None:
        status = await wait(lab.until(lab.secondary, lambda s: s["failed_over"], SLACK, "takeover"))
        self.assertEqual((status["role"], status["state"]), ("primary", "primary_unprotected"))
        self.assertEqual(lab.secondary.qemu_status(), "running")
        verdict = lab.verify(lab.secondary)
        self.assertTrue(verdict.ok, verdict.summary)

    @async_test
    async def test_manual_waits_for_the_operator(self) -> None:
        """The secondary keeps its copy paused while the primary's guest runs; the operator's command
        is refused until there is a decision to make, and then the secondary takes over."""
        lab = await self.start_cluster(failover='policy = "manual"')
        refused = colod_failover(lab)
        self.assertEqual(refused.returncode, 1, refused.stderr)
        self.assertIn("domain lab is not waiting for an operator's decision (its state is 'running'",
                      refused.stderr)
        status = await self.lose_primary_daemon(lab)
        self.assertEqual(status["state"], "awaiting_operator", lab.secondary.context())
        self.assertIn("not taking over: failover policy manual: the operator decides", str(status["error"]))
        await sleep(2 * lab.heartbeat_timeout)
        self.assertEqual(lab.secondary.status()["state"], "awaiting_operator")  # type: ignore[index]
        self.assertPrimaryKeepsTheGuest(lab)

        lab.stop_writer()
        lab.primary.kill_qemu()  # the operator made sure the primary's guest is down
        asked = colod_failover(lab)
        self.assertEqual(asked.returncode, 0, asked.stderr)
        await self.assertTakesOver(lab)
        self.assertIn("the operator asked for it (colod failover by", lab.secondary.logs())

    @async_test
    async def test_fence_that_succeeds(self) -> None:
        """The fence agent runs with the domain and the peer filled in; the takeover comes only after it
        exited 0, when the primary's guest is gone."""
        script = fence_script(self.workdir, 0)
        lab = await self.start_cluster(
            failover=f'policy = "fence"\nfence_command = ["{script}", "{{domain}}", "{{peer}}"]\n'
                     'fence_timeout = 20.0')
        primary_qemu = lab.primary.qemu
        assert primary_qemu is not None
        (self.workdir / "fence.pid").write_text(str(primary_qemu.pid))
        status = await self.lose_primary_daemon(lab)
        self.assertEqual(status["state"], "primary_unprotected", lab.secondary.context())
        await self.assertTakesOver(lab)
        self.assertEqual((self.workdir / "fence.log").read_text(), f"{lab.domain} {lab.primary.name}\n")
        self.assertFalse(primary_qemu.running())
        log = lab.secondary.logs()
        self.assertIn("taking over from checkpoint", log)
        self.assertIn(f"{lab.domain} {lab.primary.name} exited 0", log)

    @async_test
    async def test_fence_that_fails_leaves_it_to_the_operator(self) -> None:
        """A fence agent that fails: no takeover; the primary's guest runs on; the reason is in the
        status, words of the agent included."""
        script = fence_script(self.workdir, 1)
        lab = await self.start_cluster(
            failover=f'policy = "fence"\nfence_command = ["{script}", "{{domain}}"]')
        status = await self.lose_primary_daemon(lab)
        self.assertEqual(status["state"], "awaiting_operator", lab.secondary.context())
        self.assertIn("exited 1 (it said: fence agent done with status 1)", str(status["error"]))
        self.assertPrimaryKeepsTheGuest(lab)

        lab.stop_writer()
        lab.primary.kill_qemu()  # the operator fenced the primary by hand
        asked = lab.secondary.ctl("failover", lab.domain)
        self.assertEqual(asked.returncode, 0, asked.stderr)
        await self.assertTakesOver(lab)
        self.assertIn("the operator asked for it (colodctl, on the control socket)", lab.secondary.logs())
