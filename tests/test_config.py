"""The configuration file: the example parses, and every bad file gets one exact line.

Each bad configuration is run through ``twistd -n colod`` as a subprocess, the
way an administrator meets it: the message, a non-zero exit and no traceback.
"""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

from twisted.trial import unittest

from colod import config
from tests.rig import TWISTD, ScratchTestCase

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "etc" / "colod.toml"

GOOD = """\
[colod]
role = "secondary"
node_name = "dom0-b"

[peer]
listen = "tcp:9000:interface=127.0.0.1"
connect = "tcp:host=127.0.0.1:port=9000"

[[domain]]
name = "guest1"
qmp_socket = "/run/guest1.qmp"
nbd_host = "127.0.0.1"
nbd_port = 8889

[[domain.disk]]
name = "xvda"
quorum_node = "colo-disk0"
image = "/srv/guest1.raw"
export_name = "guest1-xvda"
active_image = "/dev/shm/a.qcow2"
hidden_image = "/dev/shm/h.qcow2"
"""

SECOND_DISK = """
[[domain.disk]]
name = "xvdb"
quorum_node = "colo-disk1"
image = "/srv/guest1b.raw"
export_name = "guest1-xvdb"
active_image = "/dev/shm/b-a.qcow2"
hidden_image = "/dev/shm/b-h.qcow2"
"""

#: A Xen domain (docs/xen.md): no QMP socket, NBD or disks; the secondary's xl configuration.
XEN = GOOD[: GOOD.index("[[domain]]")] + """\
[[domain]]
name = "guest1"

[domain.xen]
xl_config = "/etc/xen/guest1.cfg"
"""


def edited(old: str, new: str, text: str = GOOD) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# (test name, file content or None for "no such file", extra twistd args, message after "colod: FILE: ")
BAD = [
    ("missing_file", None, [], "cannot read: No such file or directory"),
    ("not_toml", edited('node_name = "dom0-b"', "node_name dom0-b"), [],
     "not valid TOML: Expected '=' after a key in a key/value pair (at line 3, column 11)"),
    ("unknown_key", edited("[peer]\n", "[peer]\nheartbeat_intervall = 1.0\n"), [],
     "peer.heartbeat_intervall: unknown key"),
    ("unknown_table", GOOD + "\n[metrics]\nport = 9100\n", [], "metrics: unknown key"),
    ("wrong_type", edited("[peer]\n", '[peer]\nheartbeat_interval = "fast"\n'), [],
     "peer.heartbeat_interval: must be a number (got string 'fast')"),
    ("bool_for_port", edited("nbd_port = 8889", "nbd_port = true"), [],
     "domain[0].nbd_port: must be an integer (got boolean True)"),
    ("missing_required", edited('qmp_socket = "/run/guest1.qmp"\n', ""), [],
     "domain[0].qmp_socket: missing required key"),
    ("no_domain", GOOD[: GOOD.index("[[domain]]")], [], "domain: missing required key"),
    ("empty_domain_list", "domain = []\n" + GOOD[: GOOD.index("[[domain]]")], [],
     "domain: needs at least one entry (got [])"),
    ("bad_role", edited('role = "secondary"', 'role = "tertiary"'), [],
     "colod.role: must be one of 'primary', 'secondary' (got 'tertiary')"),
    ("zero_interval", edited('node_name = "dom0-b"', 'node_name = "dom0-b"\ncheckpoint_interval = 0'), [],
     "colod.checkpoint_interval: must be greater than 0 (got 0.0)"),
    ("heartbeat_timeout_too_short",
     edited("[peer]\n", "[peer]\nheartbeat_interval = 1.0\nheartbeat_timeout = 1.5\n"), [],
     "peer.heartbeat_timeout: must be at least twice heartbeat_interval (1), "
     "or one lost heartbeat looks like a dead peer (got 1.5)"),
    ("relative_path", edited('image = "/srv/guest1.raw"', 'image = "srv/guest1.raw"'), [],
     "domain[0].disk[0].image: must be an absolute path (got 'srv/guest1.raw')"),
    ("bad_node_name", edited('quorum_node = "colo-disk0"', 'quorum_node = "1disk"'), [],
     "domain[0].disk[0].quorum_node: must be a QEMU node name: a letter, then letters, digits, "
     "'-', '_' or '.', at most 31 characters (got '1disk')"),
    ("port_out_of_range", edited("nbd_port = 8889", "nbd_port = 70000"), [],
     "domain[0].nbd_port: must be a TCP port between 1 and 65535 (got 70000)"),
    ("bad_endpoint", edited('listen = "tcp:9000:interface=127.0.0.1"', 'listen = "tcp:ninethousand"'), [],
     "peer.listen: is not a Twisted server endpoint string "
     "(invalid literal for int() with base 10: 'ninethousand') (got 'tcp:ninethousand')"),
    ("duplicate_export", GOOD + SECOND_DISK.replace("guest1-xvdb", "guest1-xvda"), [],
     "domain[0].disk[1].export_name: 'guest1-xvda' is already used by domain[0].disk[0]"),
    ("same_image_twice", GOOD + SECOND_DISK.replace("/dev/shm/b-h.qcow2", "/dev/shm/a.qcow2"), [],
     "domain[0].disk[1].hidden_image: the same file as domain[0].disk[0].active_image "
     "('/dev/shm/a.qcow2')"),
    ("secondary_without_listen", edited('listen = "tcp:9000:interface=127.0.0.1"\n', ""), [],
     "peer.listen: missing required key for role 'secondary' (the secondary listens for the primary)"),
    ("two_domains", GOOD + GOOD[GOOD.index("[[domain]]"):].replace("guest1", "guest2").replace(
        "8889", "8890").replace("colo-disk0", "colo-disk1").replace("/dev/shm/", "/dev/shm/2"), [],
     "domain: this version of colod protects one domain per daemon (got 2); run one colod per domain"),
    ("bad_peer_node_name", edited("[peer]\n", '[peer]\nnode_name = "dom0 a"\n'), [],
     "peer.node_name: must be letters, digits, '-', '_' or '.', starting with a letter or digit, "
     "at most 64 characters (got 'dom0 a')"),
    ("device_model_socket_relative",
     edited("nbd_port = 8889", 'nbd_port = 8889\ndevice_model_socket = "dm.qmp"'), [],
     "domain[0].device_model_socket: must be an absolute path (got 'dm.qmp')"),
    ("memory_image_relative", edited("nbd_port = 8889", 'nbd_port = 8889\nmemory_image = "ram.img"'), [],
     "domain[0].memory_image: must be an absolute path (got 'ram.img')"),
    ("xen_with_disks", XEN + GOOD[GOOD.index("[[domain.disk]]"):], [],
     "domain[0].disk: not for a Xen domain ([domain.xen]): Debian's Xen QEMU has no block replication "
     "(docs/xen.md)"),
    ("xen_with_qmp_socket", edited('name = "guest1"\n', 'name = "guest1"\nqmp_socket = "/run/q.qmp"\n', XEN),
     [], "domain[0].qmp_socket: not for a Xen domain ([domain.xen]): libxl's QMP socket is found from the "
     "domain's id"),
    ("xen_secondary_without_xl_config", edited('xl_config = "/etc/xen/guest1.cfg"\n', "", XEN), [],
     "domain[0].xen.xl_config: missing required key for role 'secondary' (Xen's receiver creates the "
     "domain from it)"),
    ("xen_unknown_key", edited("[domain.xen]\n", '[domain.xen]\nxl_cfg = "/x"\n', XEN), [],
     "domain[0].xen.xl_cfg: unknown key"),
    ("xen_relative_helper", edited("[domain.xen]\n", '[domain.xen]\nsave_helper = "helper"\n', XEN), [],
     "domain[0].xen.save_helper: must be an absolute path (got 'helper')"),
    ("role_override_needs_connect", edited('connect = "tcp:host=127.0.0.1:port=9000"\n', ""),
     ["--role", "primary"],
     "peer.connect: missing required key for role 'primary' (the primary connects to the secondary)"),
]


def test_xen_domain() -> None:
    """A Xen domain takes its Xen name from its own by default, and Debian's paths for the tools."""
    loaded = config.parse(tomllib.loads(XEN), "xen.toml")
    assert loaded.domains == (config.DomainConfig(
        name="guest1", qmp_socket=None, nbd_host=None, nbd_port=None, disks=(),
        xen=config.XenConfig(domain="guest1", xl_config="/etc/xen/guest1.cfg",
                             save_helper="/usr/lib/xen-4.17/bin/libxl-save-helper", xl="/usr/sbin/xl")),)
    assert loaded.with_role("primary").domains == loaded.domains  # the primary needs no xl_config


class ExampleConfigTests(ScratchTestCase):
    def test_example_is_complete_and_valid(self) -> None:
        """etc/colod.toml, the documented example, parses into exactly what it says."""
        loaded = config.load(EXAMPLE)
        disk = config.DiskConfig(
            name="xvda", quorum_node="colo-disk0", image="/var/lib/xen/images/guest1-xvda.raw",
            format="raw", export_name="guest1-xvda",
            active_image="/dev/shm/colod/guest1-xvda-active.qcow2",
            hidden_image="/dev/shm/colod/guest1-xvda-hidden.qcow2",
        )
        self.assertEqual(loaded, config.Config(
            path=str(EXAMPLE), role="secondary", node_name="dom0-b", state_dir="/var/lib/colod",
            control_socket="/run/colod/control.sock", checkpoint_interval=5.0,
            peer=config.PeerConfig(
                listen="tcp:9000:interface=0.0.0.0", connect="tcp:host=192.0.2.10:port=9000:timeout=5",
                heartbeat_interval=0.5, heartbeat_timeout=3.0, node_name="dom0-a",
            ),
            qmp=config.QMPConfig(command_timeout=5.0, connect_timeout=10.0),
            domains=(config.DomainConfig(
                name="guest1", qmp_socket="/var/run/xen/qmp-libxl-1", nbd_host="192.0.2.11",
                nbd_port=8889, disks=(disk,),
            ),),
        ))

    def test_defaults(self) -> None:
        """Keys left out take the documented defaults."""
        loaded = config.parse(__import__("tomllib").loads(GOOD), "good.toml")
        self.assertEqual(
            (loaded.state_dir, loaded.control_socket, loaded.checkpoint_interval),
            ("/var/lib/colod", "/run/colod/control.sock", 5.0),
        )
        self.assertEqual(loaded.peer.heartbeat_interval, 0.5)
        self.assertEqual(loaded.qmp, config.QMPConfig(command_timeout=5.0, connect_timeout=10.0))
        self.assertEqual(loaded.domains[0].disks[0].format, "raw")

    def test_role_override(self) -> None:
        """--role wins over the file's role."""
        path = self.workdir / "colod.toml"
        path.write_text(GOOD)
        self.assertEqual(config.load(path, "primary").role, "primary")
        self.assertEqual(config.load(path).role, "secondary")


class BadConfigTests(ScratchTestCase):
    """One test per bad file: twistd prints exactly one line and exits non-zero."""

    def run_twistd(self, content: str | None, args: list[str]) -> tuple[int, str, Path]:
        path = self.workdir / "colod.toml"
        if content is not None:
            path.write_text(content)
        result = subprocess.run(
            [TWISTD, "-n", "--pidfile=", "colod", "--config", str(path), *args],
            capture_output=True, text=True, timeout=30,
        )
        return result.returncode, result.stdout + result.stderr, path


def _make_test(content: str | None, args: list[str], message: str):
    def test(self: BadConfigTests) -> None:
        status, output, path = self.run_twistd(content, args)
        self.assertEqual(output, f"colod: {path}: {message}\n")
        self.assertEqual(status, 1)
        self.assertNotIn("Traceback", output)

    test.__doc__ = f"Bad configuration '{message[:60]}...' is refused in one line."
    return test


for _name, _content, _args, _message in BAD:
    setattr(BadConfigTests, f"test_{_name}", _make_test(_content, _args, _message))


class ParseOnlyTests(unittest.TestCase):
    def test_bad_configs_are_distinct(self) -> None:
        """The bad files above are all different problems, each with its own message."""
        self.assertEqual(len({m for *_, m in BAD}), len(BAD))
        self.assertGreaterEqual(len(BAD), 12)
