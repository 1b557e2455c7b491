"""``twistd colod``: the plugin, its options, and the daemon's life as a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins

from colod import tap
from colod.testing.qemu_process import QemuProcess
from tests.rig import TWISTD, QemuTestCase, ScratchTestCase, wait_for_text
from tests.test_config import GOOD

# A clean stop must finish within this, as systemd's TimeoutStopSec would want.
STOP_DEADLINE = 5.0


def config_for(qemu_socket: str) -> str:
    return GOOD.replace("/run/guest1.qmp", qemu_socket)


class PluginTests(ScratchTestCase):
    def test_plugin_is_found(self) -> None:
        """Twisted's plugin system finds the colod ServiceMaker, pointing at colod.tap."""
        makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("colod", makers)
        self.assertIs(makers["colod"].options, tap.Options)

    def test_help_lists_options(self) -> None:
        """``twistd colod --help`` documents --role and --config."""
        out = subprocess.run([TWISTD, "colod", "--help"], capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("--role=", out.stdout)
        self.assertIn("--config=", out.stdout)
        self.assertIn("[default:\n                 /etc/colod/colod.toml]", out.stdout)

    def test_bad_role_is_a_usage_error(self) -> None:
        """--role takes only primary or secondary."""
        out = subprocess.run(
            [TWISTD, "-n", "colod", "--role", "backup"], capture_output=True, text=True, timeout=30
        )
        self.assertEqual(out.returncode, 1)
        self.assertIn("--role must be 'primary' or 'secondary', not 'backup'", out.stdout + out.stderr)
        self.assertNotIn("Traceback", out.stdout + out.stderr)

    def test_options_parse(self) -> None:
        """The options parse into the whole expected dict (the reactor is already asyncio here)."""
        path = self.workdir / "colod.toml"
        path.write_text(GOOD)
        options = tap.Options()
        options.parseOptions(["--config", str(path), "--role", "primary"])
        self.assertEqual(
            {k: v for k, v in options.items() if k != "loaded"},
            {"config": str(path), "role": "primary"},
        )
        self.assertEqual(options["loaded"].role, "primary")


class DaemonTests(QemuTestCase):
    """twistd colod as a subprocess against a QEMU the test started."""

    def start_daemon(self, qmp_socket: str, *args: str,
                     extra: str = "") -> tuple[subprocess.Popen[str], Path]:
        """twistd colod on a configuration for ``qmp_socket``, with ``extra`` lines in its domain."""
        config = self.workdir / "colod.toml"
        config.write_text(config_for(qmp_socket).replace("nbd_port = 8889\n", f"nbd_port = 8889\n{extra}"))
        log = self.workdir / "colod.log"
        with open(log, "w") as out:
            daemon = subprocess.Popen(
                [TWISTD, "-n", "--pidfile=", "colod", "--config", str(config), *args],
                stdout=out, stderr=subprocess.STDOUT, text=True,
            )
        self.addCleanup(_kill, daemon)
        return daemon, log

    def wait_for_log(self, log: Path, text: str, timeout: float = 10.0) -> str:
        return wait_for_text(log, text, timeout)

    def assert_clean_stop(self, daemon: subprocess.Popen[str], log: Path, signum: int) -> None:
        daemon.send_signal(signum)
        started = time.monotonic()
        status = daemon.wait(STOP_DEADLINE)
        self.assertLess(time.monotonic() - started, STOP_DEADLINE)
        self.assertEqual(status, 0, log.read_text())
        output = log.read_text()
        self.assertIn("QMP connection closed", output)
        self.assertIn("Server Shut Down.", output)
        self.assertNotIn("Traceback", output)
        with self.assertRaises(ProcessLookupError):
            os.kill(daemon.pid, 0)

    def test_starts_connects_and_stops_on_sigterm(self) -> None:
        """The secondary comes up, reaches QEMU over QMP, and stops cleanly with exit 0 on SIGTERM."""
        qemu = self.start_qemu("guest1")
        daemon, log = self.start_daemon(qemu.qmp_socket, "--role", "secondary")
        output = self.wait_for_log(log, "connected to QEMU 7.2")
        self.assertIn("AsyncioSelectorReactor", output)
        self.assertIn("colod starting as secondary on node dom0-b with 1 domain(s)", output)
        # tests.test_config.GOOD's link and NBD are plaintext, which is said at start (a TLS lab's
        # are not: tests.engine.test_hostile_peer).
        self.assertIn("INSECURE: the peer link is plaintext (peer.tls = false in ", output)
        self.assertIn("INSECURE: domain guest1's NBD is plaintext (domain[0].nbd_tls = false in ", output)
        self.assert_clean_stop(daemon, log, signal.SIGTERM)
        # The daemon closed its QMP connection; QEMU itself is untouched and still answers.
        self.assertTrue(qemu.running())

    def test_asyncio_reactor_forced_by_twistd_is_taken(self) -> None:
        """``twistd --reactor=asyncio colod`` works as ``twistd colod`` does: colod keeps that reactor's loop.

        twistd installs it before colod's options are read and starts the services before
        the reactor runs, so the first QMP connection is made on the loop colod kept then.
        """
        qemu = self.start_qemu("guest1")
        config = self.workdir / "colod.toml"
        config.write_text(config_for(qemu.qmp_socket))
        log = self.workdir / "colod.log"
        with open(log, "w") as out:
            daemon = subprocess.Popen(
                [TWISTD, "--reactor=asyncio", "-n", "--pidfile=", "colod", "--config", str(config)],
                stdout=out, stderr=subprocess.STDOUT, text=True,
            )
        self.addCleanup(_kill, daemon)
        output = self.wait_for_log(log, "connected to QEMU 7.2")
        self.assertIn("AsyncioSelectorReactor", output)
        self.assertNotIn("unexpected error while connecting", output)
        self.assert_clean_stop(daemon, log, signal.SIGTERM)

    def test_stops_on_sigint(self) -> None:
        """SIGINT (Ctrl-C in the foreground) is a clean stop too."""
        qemu = self.start_qemu("guest1")
        daemon, log = self.start_daemon(qemu.qmp_socket)
        self.wait_for_log(log, "connected to QEMU")
        self.assert_clean_stop(daemon, log, signal.SIGINT)

    def test_waits_for_qemu_and_reconnects(self) -> None:
        """Started before its QEMU, colod keeps trying; it reconnects when QEMU comes back."""
        qemu = QemuProcess(self.workdir, "guest1")
        self.addCleanup(qemu.stop)
        daemon, log = self.start_daemon(qemu.qmp_socket)
        self.wait_for_log(log, "trying again in 2 s", timeout=20)
        qemu.start()
        self.wait_for_log(log, "connected to QEMU 7.2", timeout=10)
        qemu.kill()
        self.wait_for_log(log, "; reconnecting")
        qemu.start()
        deadline = time.monotonic() + 20
        while log.read_text().count("connected to QEMU 7.2") < 2:
            self.assertLess(time.monotonic(), deadline, log.read_text())
            time.sleep(0.05)
        self.assert_clean_stop(daemon, log, signal.SIGTERM)

    def assert_failed(self, daemon: subprocess.Popen[str], log: Path, reason: str) -> None:
        """colod ended on its own with exit status 1 and ``reason`` on its one error line."""
        self.assertEqual(daemon.wait(STOP_DEADLINE * 2), 1, log.read_text())
        output = log.read_text()
        errors = [line for line in output.splitlines() if "#critical]" in line or "#error]" in line]
        self.assertEqual(len(errors), 1, output)
        self.assertIn(reason, errors[0])
        self.assertTrue(errors[0].endswith("; colod stops (exit status 1)"), errors[0])
        self.assertNotIn("Traceback", output)

    def test_refuses_qemu_without_replication(self) -> None:
        """A QEMU without the COLO commands is named in the log, not driven, and colod exits 1."""
        qsd = QemuProcess.storage_daemon(self.workdir, "qsd")
        self.addCleanup(qsd.stop)
        qsd.start()
        daemon, log = self.start_daemon(qsd.qmp_socket)
        self.assert_failed(daemon, log, "lacks the QMP commands colod needs: query-xen-replication-status, "
                           "xen-colo-do-checkpoint, xen-set-replication")
        self.assertTrue(qsd.running())

    def test_refuses_a_device_model_that_does_not_wait(self) -> None:
        """A secondary's device_model_socket must be a QEMU waiting with -incoming defer."""
        qemu = self.start_qemu("qemu")
        device_model = self.start_qemu("device-model")
        daemon, log = self.start_daemon(qemu.qmp_socket,
                                        extra=f'device_model_socket = "{device_model.qmp_socket}"\n')
        self.assert_failed(daemon, log, f"the device model's QEMU at {device_model.qmp_socket} is "
                           "'prelaunch', not waiting with -incoming defer (colod qemu-args --role secondary "
                           "--device-model)")

    def test_wrong_reactor_is_refused(self) -> None:
        """A forced non-asyncio reactor ends colod at once with one line saying how to run it."""
        config = self.workdir / "colod.toml"
        config.write_text(GOOD)
        out = subprocess.run(
            [TWISTD, "--reactor=poll", "-n", "--pidfile=", "colod", "--config", str(config)],
            capture_output=True, text=True, timeout=30,
        )
        self.assertEqual(out.returncode, 1)
        self.assertEqual(
            out.stdout + out.stderr,
            "colod: colod needs Twisted's asyncio reactor (qemu.qmp is asyncio-only) but the "
            "PollReactor is installed: run 'twistd colod ...' without --reactor, or with "
            "--reactor=asyncio\n",
        )


def _kill(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


class SystemdUnitTests(QemuTestCase):
    UNIT = Path(__file__).resolve().parent.parent / "etc" / "colod.service"

    def test_unit_is_valid(self) -> None:
        """systemd itself accepts the shipped unit."""
        out = subprocess.run(["systemd-analyze", "verify", str(self.UNIT)], capture_output=True,
                             text=True, timeout=60)
        self.assertEqual((out.returncode, out.stderr), (0, ""))

    def test_unit_checks_the_configuration_first(self) -> None:
        """ExecStartPre is colod check-config on the same file: good, or one line and exit status 1."""
        (line,) = [x for x in self.UNIT.read_text().splitlines() if x.startswith("ExecStartPre=")]
        command = line.removeprefix("ExecStartPre=").split()
        self.assertEqual(command[-2:], ["check-config", "/etc/colod/colod.toml"])
        config = self.workdir / "colod.toml"
        config.write_text(config_for(str(self.workdir / "qmp.sock")))
        command[-1] = str(config)
        env = dict(os.environ, PATH=f"{Path(TWISTD).parent}:{os.environ['PATH']}")
        good = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
        self.assertEqual((good.returncode, good.stderr), (0, ""))
        self.assertTrue(good.stdout.startswith(f"{config}: good: "), good.stdout)
        config.write_text(config.read_text() + "\n[qmp]\ncommand_timout = 5\n")
        bad = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
        self.assertEqual((bad.returncode, bad.stdout, bad.stderr),
                         (1, "", f"colod: error: {config}: qmp.command_timout: unknown key\n"))

    def test_unit_command_runs_in_foreground(self) -> None:
        """The unit's ExecStart, with a test config, runs colod in the foreground and stops on SIGTERM."""
        (line,) = [x for x in self.UNIT.read_text().splitlines() if x.startswith("ExecStart=")]
        command = line.removeprefix("ExecStart=").split()
        self.assertEqual(command[-2:], ["--config", "/etc/colod/colod.toml"])
        qemu = self.start_qemu("guest1")
        config = self.workdir / "colod.toml"
        config.write_text(config_for(qemu.qmp_socket))
        command[-1] = str(config)
        env = dict(os.environ, PATH=f"{Path(TWISTD).parent}:{os.environ['PATH']}")
        log = self.workdir / "journal.log"
        with open(log, "w") as out:
            daemon = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.workdir
            )
        self.addCleanup(_kill, daemon)
        wait_for_text(log, "connected to QEMU", 20)
        daemon.send_signal(signal.SIGTERM)
        self.assertEqual(daemon.wait(STOP_DEADLINE), 0, log.read_text())
        self.assertIn("Server Shut Down.", log.read_text())
