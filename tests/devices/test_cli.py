"""The ``colod qemu-args`` command: output, exit statuses and one-line errors."""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import stat
import subprocess
import sys
from pathlib import Path

from twisted.trial import unittest

from colod import cli
from colod.qemu_args import qemu_args
from tests import certs
from tests.devices.pair import NODES, ReplicationTestCase
from tests.devices.test_group import domain
from tests.test_config import XEN

COLOD = str(Path(sys.executable).with_name("colod"))


class QemuArgsCommandTests(ReplicationTestCase):
    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = cli.main(list(argv))
            except SystemExit as e:
                status = int(e.code or 0)
        return status, out.getvalue(), err.getvalue()

    def test_prints_one_blockdev_per_line(self) -> None:
        path = self.write_config("primary", [0])
        status, out, err = self.run_cli("qemu-args", "--role", "primary", "--config", str(path))
        self.assertEqual((status, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual([shlex.split(line) for line in lines[:3]], [
            ["-machine", "suppress-vmdesc=on"], ["-global", "migration.send-configuration=off"],
            ["-global", "apic-common.vapic=off"]])
        self.assertEqual([shlex.split(line)[0] for line in lines[3:]], ["-blockdev", "-blockdev", "-object"])
        self.assertEqual(json.loads(shlex.split(lines[4])[1]), {
            "driver": "quorum", "node-name": "colo-disk0", "vote-threshold": 1, "read-pattern": "fifo",
            "children": ["colod0-disk"]})

    def test_nbd_tls_objects_and_their_files(self) -> None:
        """Under NBD's TLS (the default): the primary's QEMU gets client credentials, the secondary's
        server credentials and the authorization of the primary's subject alone; both from
        <state_dir>/qemu-tls (mode 0700), QEMU's names linking to the [tls] files; a second run
        changes nothing."""
        objects = {}
        for role in ("primary", "secondary"):
            path = self.write_config(role, [0])
            status, out, err = self.run_cli("qemu-args", "--role", role, "--config", str(path))
            self.assertEqual((status, err), (0, ""))
            objects[role] = [json.loads(shlex.split(line)[1]) for line in out.splitlines()
                             if line.startswith("-object")]
            directory = self.workdir / f"{role}-state" / "qemu-tls"
            self.assertEqual(stat.S_IMODE(directory.stat().st_mode), 0o700)
            files = certs.files(NODES[role])
            self.assertEqual({p.name: p.readlink() for p in directory.iterdir()}, {
                "ca-cert.pem": files.ca, "server-cert.pem": files.certificate, "server-key.pem": files.key,
                "client-cert.pem": files.certificate, "client-key.pem": files.key})
            self.assertEqual(self.run_cli("qemu-args", "--role", role, "--config", str(path))[:2], (0, out))
        creds = {"qom-type": "tls-creds-x509", "id": "colod-nbd-tls", "verify-peer": True}
        self.assertEqual(objects, {
            "primary": [{**creds, "dir": f"{self.workdir}/primary-state/qemu-tls", "endpoint": "client"}],
            "secondary": [{**creds, "dir": f"{self.workdir}/secondary-state/qemu-tls", "endpoint": "server"},
                          {"qom-type": "authz-simple", "id": "colod-nbd-authz", "identity": "CN=host-a"}]})

    def test_an_unusable_state_dir_exits_1(self) -> None:
        """QEMU's TLS directory cannot be made: one line naming the key, the directory and why."""
        path = self.write_config("secondary", [0])
        (self.workdir / "secondary-state").write_text("a file, not a directory")
        status, out, err = self.run_cli("qemu-args", "--role", "secondary", "--config", str(path))
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, f"colod: error: {path}: colod.state_dir: '{self.workdir}/secondary-state' "
                              "is not a directory\n")
        (self.workdir / "secondary-state").unlink()
        (self.workdir / "secondary-state").mkdir()
        (self.workdir / "secondary-state" / "qemu-tls").write_text("a file, not a directory")
        status, out, err = self.run_cli("qemu-args", "--role", "secondary", "--config", str(path))
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, f"colod: error: {path}: colod.state_dir: cannot lay out QEMU's NBD TLS files "
                              f"in {self.workdir}/secondary-state/qemu-tls: File exists\n")

    def test_console_script(self) -> None:
        """The installed ``colod`` script prints the same as cli.main."""
        path = self.write_config("secondary", [0, 1])
        done = subprocess.run([COLOD, "qemu-args", "--role", "secondary", "--config", str(path)],
                              capture_output=True, text=True, timeout=60)
        self.assertEqual((done.returncode, done.stderr), (0, ""))
        in_process = self.run_cli("qemu-args", "--role", "secondary", "--config", str(path))
        self.assertEqual(done.stdout, in_process[1])
        self.assertEqual(len(done.stdout.splitlines()), 3 + 10 + 2)

    def test_device_model_arguments(self) -> None:
        """--device-model: the secondary's separate device model, waiting for its state."""
        path = self.write_config("secondary", [0])
        status, out, err = self.run_cli("qemu-args", "--role", "secondary", "--config", str(path),
                                        "--device-model")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out.splitlines(), [
            "-machine suppress-vmdesc=on", "-global migration.send-configuration=off",
            "-global apic-common.vapic=off", "-incoming defer"])

    def test_a_xen_domain_has_no_qemu_arguments(self) -> None:
        path = self.workdir / "xen.toml"
        path.write_text(XEN)
        status, out, err = self.run_cli("qemu-args", "--role", "secondary", "--config", str(path))
        self.assertEqual((status, out), (2, ""))
        self.assertEqual(err.splitlines()[-1], "colod: error: domain 'guest1' is a Xen domain: "
                                     "libxl starts its QEMU (docs/xen.md)")

    def test_usage_errors_exit_2(self) -> None:
        """Exit status 2, and the last line names the problem (argparse's choices format varies)."""
        path = str(self.write_config("primary", [0]))
        for argv, said in (
            ([], "colod: error: the following arguments are required: COMMAND"),
            (["qemu-args", "--config", path],
             "colod qemu-args: error: the following arguments are required: --role"),
            (["qemu-args", "--role", "tertiary", "--config", path],
             "colod qemu-args: error: argument --role: invalid choice: 'tertiary' "),
            (["qemu-args", "--role", "primary", "--config", path, "--device-model"],
             "colod: error: --device-model is for the secondary's separate device model"),
            (["qemu-args", "--role", "primary", "--config", path, "--domain", "nope"],
             f"colod: error: no domain 'nope' in {path} (it has: guest)"),
        ):
            status, out, err = self.run_cli(*argv)
            self.assertEqual((status, out), (2, ""), argv)
            self.assertTrue(err.splitlines()[-1].startswith(said), (argv, err))

    def test_config_errors_exit_1(self) -> None:
        missing = self.workdir / "missing.toml"
        status, out, err = self.run_cli("qemu-args", "--role", "primary", "--config", str(missing))
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, f"colod: error: {missing}: cannot read: No such file or directory\n")

    def test_failover_without_a_daemon_exits_1(self) -> None:
        """colod failover asks nothing of a node whose status it cannot read (no colod there)."""
        path = self.write_config("secondary", [0])
        status, out, err = self.run_cli("failover", "--config", str(path), "guest")
        self.assertEqual((status, out), (1, ""))
        self.assertRegex(err, r"^colod: error: cannot read /\S+/guest/status.json \(.*\): is colod running "
                              r"here\?\n$")
        status, out, err = self.run_cli("failover", "--config", str(path), "other")
        self.assertEqual((status, out), (2, ""))
        self.assertIn("no domain 'other' in", err)

    def test_reserved_node_name_exits_1(self) -> None:
        path = self.write_config("primary", [0, 1], quorum_nodes={1: "colod0-rep"})
        status, out, err = self.run_cli("qemu-args", "--role", "primary", "--config", str(path))
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, f"colod: error: {path}: domain[0].disk[1].quorum_node: is a node name colod "
                              "uses itself (names 'colod<number>-...' are reserved) (got 'colod0-rep')\n")


class QemuArgsTests(unittest.TestCase):
    def test_secondary_chain(self) -> None:
        """The secondary's disk, overlays, replication node and quorum, in that order, all named."""
        args = qemu_args(domain(1), "secondary")[6:]
        self.assertEqual(args[::2], ["-blockdev"] * 5)
        self.assertEqual([json.loads(a) for a in args[1::2]], [
            {"driver": "raw", "node-name": "ea",
             "file": {"driver": "file", "filename": "/i/a.img", "node-name": "colod0-file"}},
            {"driver": "qcow2", "node-name": "colod0-hidden", "backing": "ea",
             "file": {"driver": "file", "filename": "/i/a-h", "node-name": "colod0-hidden-file"}},
            {"driver": "qcow2", "node-name": "colod0-active", "backing": "colod0-hidden",
             "file": {"driver": "file", "filename": "/i/a-a", "node-name": "colod0-active-file"}},
            {"driver": "replication", "node-name": "colod0-rep", "mode": "secondary", "top-id": "qa",
             "file": "colod0-active"},
            {"driver": "quorum", "node-name": "qa", "vote-threshold": 1, "read-pattern": "fifo",
             "children": ["colod0-rep"]},
        ])
