"""colodctl against the two real daemons of the lab (colod.testing.lab: two ``twistd colod``, real QEMUs,
the guest writer): status on both sides while checkpoints go by and after a takeover; checkpoint, pause,
resume and drop on request; what is refused and why; watch, log-level, the JSON lines; and one colod per
control socket."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from twisted.logger import eventsFromJSONLogFile

from colod.testing.lab import BIN, Node, Poll
from tests.cluster import ClusterTestCase, wait
from tests.rig import ScratchTestCase, async_test, sleep


class ColodctlTests(ClusterTestCase):
    def ctl_ok(self, node: Node, *args: str) -> str:
        done = node.ctl(*args)
        self.assertEqual((done.returncode, done.stderr), (0, ""), f"colodctl {' '.join(args)}")
        return str(done.stdout)

    def ctl_fails(self, node: Node, status: int, *args: str) -> str:
        done = node.ctl(*args)
        self.assertEqual((done.returncode, done.stdout), (status, ""), done.stderr)
        self.assertEqual(len(done.stderr.splitlines()), 1, done.stderr)
        return str(done.stderr)

    async def until_state(self, node: Node, state: str) -> dict[str, Any]:
        """``colodctl status --json``'s domain once its state is ``state``."""
        def check() -> dict[str, Any] | None:
            status: dict[str, Any] = node.ctl_status()["domains"][0]
            return status if status["state"] == state else None
        return await wait(Poll(check, 10.0, f"{node.name} {state}", node.context))

    @async_test
    async def test_status_on_both_sides_during_checkpoints(self) -> None:
        lab = await self.start_cluster()
        before = lab.primary.ctl_status()["domains"][0]
        await sleep(0.5)
        primary, secondary = (node.ctl_status() for node in lab.nodes)
        self.assertEqual((primary["colod"]["node"], primary["colod"]["role"]), ("host-a", "primary"))
        p, s = primary["domains"][0], secondary["domains"][0]
        self.assertGreater(p["checkpoint"]["number"], before["checkpoint"]["number"])
        self.assertEqual((p["role"], p["state"], p["protected"], p["failed_over"], p["error"]),
                         ("primary", "protected", True, False, None))
        self.assertEqual((p["peer"]["node"], p["peer"]["linked"]), ("host-b", True))
        self.assertGreater(p["peer"]["round_trip_ms"], 0)
        self.assertEqual(p["epoch"], 0)
        self.assertEqual(p["devices"], [{"name": "xvda", "healthy": True, "detail": ""}])
        self.assertTrue(p["qemu"].startswith("7.2"), p["qemu"])
        self.assertIn("memory image", p["guest"])
        self.assertIn("device state is kept at every checkpoint", p["guest"])
        self.assertLess(p["checkpoint"]["age_s"], 5.0)
        self.assertEqual(p["checkpoint"]["by_trigger"]["first"], 1)
        self.assertGreaterEqual(p["pause"]["count"], p["checkpoint"]["number"] - 1)
        self.assertEqual(p["pause"]["buckets"][-1], ["+Inf", p["pause"]["count"]])
        self.assertIsNotNone(p["pause"]["p99_ms"])
        self.assertEqual((s["role"], s["state"], s["protected"], s["peer"]["node"], s["peer"]["linked"]),
                         ("secondary", "running", True, "host-a", True))
        self.assertIn(s["step"], {"applying", "resuming", "running", "suspending", "receiving_checkpoint"})
        self.assertGreater(s["checkpoint"]["number"], 0)
        self.assertEqual(s["pause"]["count"], 0)  # the pause is the primary's guest's
        # The human form says the same, and one domain can be asked for.
        text = self.ctl_ok(lab.primary, "status", "lab")
        self.assertIn("lab on host-a: primary, protected since ", text)
        self.assertIn("  peer        host-b: linked at 127.0.0.1:", text)
        self.assertIn("  devices     xvda healthy", text)
        self.assertIn("lab on host-b: secondary, running since ", self.ctl_ok(lab.secondary, "status"))
        self.assertIn("unknown-domain: no domain 'other' here; this colod protects lab",
                      self.ctl_fails(lab.primary, 1, "status", "other"))

    @async_test
    async def test_checkpoint_pause_and_resume_on_request(self) -> None:
        lab = await self.start_cluster()
        self.assertRegex(self.ctl_ok(lab.primary, "pause", "lab"), r"^domain lab: pause done \(at checkpoint "
                         r"[0-9]+, [a-z ]+\)\n$")
        await sleep(0.3)  # a checkpoint under way ends
        paused = lab.primary.ctl_status()["domains"][0]
        await sleep(0.5)
        self.assertEqual(lab.primary.ctl_status()["domains"][0]["checkpoint"]["number"],
                         paused["checkpoint"]["number"])
        self.assertTrue(paused["checkpoints_paused"])
        number = paused["checkpoint"]["number"]
        self.assertEqual(self.ctl_ok(lab.primary, "checkpoint", "lab"),
                         f"domain lab: checkpoint {number + 1} complete\n")
        status = lab.primary.ctl_status()["domains"][0]
        self.assertEqual((status["checkpoint"]["number"], status["checkpoint"]["by_trigger"].get("request")),
                         (number + 1, 1))
        # Resuming starts a checkpoint at once: it may be under way.
        self.assertRegex(self.ctl_ok(lab.primary, "resume", "lab"),
                         rf"^domain lab: resume done \(at checkpoint {number + 1}, [a-z ]+\)\n$")
        await wait(lab.until_checkpoints(number + 10, 10.0))
        self.assertFalse(lab.primary.ctl_status()["domains"][0]["checkpoints_paused"])
        # What the secondary cannot do, refused by name.
        secondary = "refused: domain lab: this node is the secondary; checkpoints are the primary's"
        self.assertIn(f"{secondary} to start",
                      self.ctl_fails(lab.secondary, 1, "checkpoint", "lab"))
        self.assertIn(f"{secondary} to pause",
                      self.ctl_fails(lab.secondary, 1, "pause", "lab"))
        self.assertRegex(self.ctl_fails(lab.secondary, 1, "failover", "lab"),
                         r"refused: domain lab is not waiting for a failover decision \(it is [a-z ]+\)")
        self.assertRegex(self.ctl_fails(lab.primary, 1, "failover", "lab"),
                         r"refused: domain lab is the primary here \([a-z ]+\): there is nothing to take "
                         r"over")
        self.assertTrue(lab.secondary.ctl_status()["domains"][0]["protected"])

    @async_test
    async def test_drop_on_request(self) -> None:
        """The primary drops its secondary: the secondary is told and does not take over; the guest runs."""
        lab = await self.start_cluster()
        self.assertRegex(self.ctl_ok(lab.primary, "drop", "lab"),
                         r"^domain lab: drop done \(at checkpoint [0-9]+, dropping secondary\)\n$")
        primary = await self.until_state(lab.primary, "unprotected")
        self.assertEqual((primary["protected"], primary["peer"]["linked"], primary["epoch"]),
                         (False, False, 0))  # a drop is no takeover: the domain's epoch stays
        self.assertEqual(primary["error"], "dropped on request on host-a (colodctl drop)")
        secondary = await self.until_state(lab.secondary, "ended")
        self.assertEqual((secondary["role"], secondary["failed_over"]), ("secondary", False))
        self.assertIn("the peer ended replication: shutdown: dropped on request on host-a",
                      secondary["error"])
        self.assertFalse(lab.secondary.device_state_loaded())
        await self.assertGuestRuns()
        self.assertIn("refused: domain lab is unprotected: no replication to drop",
                      self.ctl_fails(lab.primary, 1, "drop", "lab"))
        self.assertIn("refused: domain lab is ended: no replication to drop",
                      self.ctl_fails(lab.secondary, 1, "drop", "lab"))

    @async_test
    async def test_status_after_a_takeover(self) -> None:
        lab = await self.start_cluster()
        lab.lose_primary_host()
        taken = await wait(Poll(lambda: (s := lab.secondary.ctl_status()["domains"][0])["failed_over"] and s
                                or None, lab.heartbeat_timeout + 10.0, "the takeover"))
        self.assertEqual((taken["role"], taken["state"], taken["protected"], taken["peer"]["linked"],
                          taken["epoch"]), ("primary", "primary_unprotected", False, False, 1))
        self.assertIn("primary lost", taken["error"])
        self.assertIn("lab on host-b: primary (took over), primary_unprotected since",
                      self.ctl_ok(lab.secondary, "status"))
        # The lost primary's daemon cannot be asked: its socket is left, nobody listens.
        self.assertIn(f"cannot reach colod at {lab.primary.control_socket}: Connection refused",
                      self.ctl_fails(lab.primary, 3, "status"))

    @async_test
    async def test_watch_log_level_and_the_json_lines(self) -> None:
        lab = await self.start_cluster()
        out = self.ctl_ok(lab.primary, "watch", "--count", "2", "--interval", "0.2")
        self.assertEqual(out.count(f"colodctl watch {lab.primary.control_socket} at "), 2)
        rows = [line for line in out.splitlines() if line.startswith("lab ")]
        self.assertEqual(len(rows), 2)
        self.assertRegex(rows[0], r"^lab +primary +host-b up [0-9.]+ (ms|us) +0 +protected +#[0-9]+ ")
        self.assertEqual(self.ctl_ok(lab.primary, "log-level", "debug"), "log level debug (was info)\n")
        self.assertEqual(lab.primary.ctl_status()["colod"]["log_level"], "debug")
        usage = lab.primary.ctl("log-level", "loud")
        self.assertEqual(usage.returncode, 2)
        self.assertIn("argument LEVEL: invalid choice: 'loud'", usage.stderr)
        self.ctl_ok(lab.primary, "log-level", "info")
        # A state change is one JSON line, with the domain's fields; checkpoints are not.
        self.ctl_ok(lab.primary, "drop", "lab")
        await wait(lab.until(lab.primary, lambda s: s["state"] == "unprotected", 10.0, "unprotected"))
        checkpoints = lab.primary.status()["checkpoints"]
        with open(lab.primary.json_log) as f:
            events = [e for e in eventsFromJSONLogFile(f) if e.get("domain") == "lab"]
        [dropped] = [e for e in events if "running UNPROTECTED" in e["log_format"]]
        self.assertEqual((dropped["role"], dropped["epoch"], dropped["checkpoint"]),
                         ("primary", 0, checkpoints))
        self.assertLess(len(events), 20)
        self.assertGreater(checkpoints, 40)

    @async_test
    async def test_one_colod_per_control_socket(self) -> None:
        """A second daemon on the primary's configuration ends at once, naming the first, which goes on."""
        lab = await self.start_cluster()
        checkpoints = lab.primary.status()["checkpoints"]
        second = subprocess.run([str(BIN / "twistd"), "-n", "--pidfile=", "--logfile=-", "colod", "--config",
                                 str(lab.primary.config)], capture_output=True, text=True, timeout=60)
        self.assertEqual(second.returncode, 1, second.stdout)
        assert lab.primary.daemon is not None
        self.assertIn(f"{lab.primary.config}: control_socket: {lab.primary.control_socket} is held by "
                      f"another live colod (pid {lab.primary.daemon.pid}); stop it, or give this one a "
                      "control_socket of its own; colod stops (exit status 1)", second.stdout)
        self.assertNotIn("connecting to QEMU", second.stdout)
        await wait(lab.until_checkpoints(checkpoints + 10, 10.0))
        self.assertTrue(json.loads(self.ctl_ok(lab.primary, "status", "--json"))["domains"][0]["protected"])


class WithoutDaemonTests(ScratchTestCase):
    """What colodctl says when there is no colod to ask: one line, exit status 3 (2 for a usage error)."""

    def colodctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "colodctl"), *args], capture_output=True, text=True, timeout=30)

    def test_no_daemon(self) -> None:
        socket = self.workdir / "control.sock"
        done = self.colodctl("--socket", str(socket), "status")
        self.assertEqual((done.returncode, done.stdout, done.stderr),
                         (3, "", f"colodctl: cannot reach colod at {socket}: No such file or directory\n"))
        config = self.workdir / "colod.toml"
        done = self.colodctl("--config", str(config), "checkpoint", "lab")
        self.assertEqual((done.returncode, done.stderr),
                         (3, f"colodctl: cannot find colod's control socket: {config}: cannot read: No such "
                             "file or directory (or give --socket)\n"))

    def test_usage(self) -> None:
        for args in ((), ("checkpoint",), ("reboot",), ("--timeout", "0", "status")):
            done = self.colodctl(*args)
            self.assertEqual((done.returncode, done.stdout), (2, ""), args)
