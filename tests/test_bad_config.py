"""Every bad configuration file is refused, in one line, by every command that reads one.

Each file of the table is given to ``twistd -n colod`` and to ``colod
qemu-args`` as subprocesses, the way an administrator meets it: exactly one
line naming the file, the key and the problem, exit status 1, no traceback.
A check that went missing would let twistd start a daemon (which then runs
into the subprocess timeout) and qemu-args print arguments: either fails.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from colod import certs
from tests.rig import TWISTD
from tests.test_config import CONNECT, GOOD, LISTEN, PEER_PORT, SECOND_DISK, XEN, edited

COLOD = str(Path(sys.executable).with_name("colod"))
#: Stands for the test's own directory in contents and messages.
DIR = "@DIR@"
#: Cut GOOD before its domain, to write other domains.
HEAD = GOOD[: GOOD.index("[[domain]]")]
DOMAIN = GOOD[GOOD.index("[[domain]]"):]


@attrs.frozen
class Bad:
    """One bad file and the message both commands must print after ``colod: FILE: ``."""

    name: str
    #: The file's text (or bytes); None for no file at all.
    content: str | bytes | None
    message: str
    #: Extra arguments for both commands (``--role``).
    args: tuple[str, ...] = ()
    #: What to make in the test's directory first: (name, "file" or "dir").
    make: tuple[tuple[str, str], ...] = ()
    #: A rule of the daemon only (qemu-args takes several domains).
    daemon_only: bool = False
    #: Make certificates in the test's directory first: tls/ (nodes dom0-a, dom0-b, dom0-c) and, from
    #: another CA, other/ (dom0-b).
    certificates: bool = False


def failover(table: str) -> str:
    """GOOD with ``table``'s lines for its [failover]."""
    return edited('[failover]\npolicy = "manual"\n', f"[failover]\n{table}\n")


def with_colod(line: str) -> str:
    """GOOD with ``line`` added to [colod]."""
    return edited('node_name = "dom0-b"\n', f'node_name = "dom0-b"\n{line}\n')


def with_peer(line: str) -> str:
    """GOOD with ``line`` added to [peer]."""
    return edited("[peer]\n", f"[peer]\n{line}\n")


def with_domain(line: str) -> str:
    """GOOD with ``line`` added to its domain."""
    return edited("nbd_port = 8889\n", f"nbd_port = 8889\n{line}\n")


def listen(value: str) -> str:
    return edited(LISTEN, f"listen = {value}")


def connect(value: str) -> str:
    return edited(CONNECT, f"connect = {value}")


def second_domain(*changes: tuple[str, str]) -> str:
    """GOOD with a second domain: a copy of GOOD's on files of its own, then each (old, new) change."""
    domain = DOMAIN.replace("/dev/shm/", "/dev/shm/2").replace("/srv/guest1", "/srv/guest2").replace(
        "/run/guest1", "/run/guest2")
    for old, new in changes:
        domain = edited(old, new, domain)
    return GOOD + domain


GUEST2 = ('name = "guest1"', 'name = "guest2"')

#: GOOD under TLS (its default), with dom0-b's certificates in the test's directory.
TLS_FILES = (f'ca = "{DIR}/tls/dom0-b/ca-cert.pem"', f'certificate = "{DIR}/tls/dom0-b/server-cert.pem"',
             f'key = "{DIR}/tls/dom0-b/server-key.pem"')
TLS = edited("tls = false\n", 'node_name = "dom0-a"\n') + "\n[tls]\n" + "\n".join(TLS_FILES) + "\n"


def tls_bad(name: str, old: str, new: str, message: str) -> Bad:
    """A TLS case: TLS with ``old`` replaced by ``new``, its certificates made."""
    return Bad(name, edited(old, new, TLS), message, certificates=True)


SERVER = "not a usable Twisted server endpoint string: "
CLIENT = "not a usable Twisted client endpoint string: "
NODE = "must be a QEMU node name: a letter, then letters, digits, '-', '_' or '.', at most 31 characters"

BAD = [
    # -- the file itself --------------------------------------------------------------------------
    Bad("missing_file", None, "cannot read: No such file or directory"),
    Bad("directory", None, "cannot read: Is a directory", make=(("colod.toml", "dir"),)),
    Bad("not_toml", edited('node_name = "dom0-b"', "node_name dom0-b"),
        "not valid TOML: Expected '=' after a key in a key/value pair (at line 3, column 11)"),
    Bad("stray_byte", edited('"dom0-b"', '"dom0-\xe9b"').encode("latin-1"),
        "not UTF-8: byte 0xe9 at line 3, column 19 (invalid continuation byte); save it as UTF-8"),
    Bad("utf16", GOOD.encode("utf-16"),
        "not UTF-8 but UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8"),
    Bad("utf16_without_bom", GOOD.encode("utf-16-le"),
        "not valid TOML: Invalid initial character for a key part (at line 1, column 2)"),
    Bad("random_bytes", random.Random(11).randbytes(512),
        "not UTF-8: byte 0xcf at line 1, column 3 (invalid continuation byte); save it as UTF-8"),
    Bad("nul_byte_in_file", GOOD.encode().replace(b"dom0-b", b"dom0\0b"),
        "not valid TOML: Illegal character '\\x00' (at line 3, column 18)"),
    Bad("nested_too_deeply", "a = " + "[" * 5000 + "]" * 5000 + "\n",
        "not valid TOML: arrays or tables nested too deeply"),
    Bad("huge_file", GOOD + ("# padding\n" * 110_000), "larger than 1 MiB: not a colod configuration"),
    # -- keys and types ---------------------------------------------------------------------------
    Bad("unknown_key", with_peer("heartbeat_intervall = 1.0"), "peer.heartbeat_intervall: unknown key"),
    Bad("unknown_table", GOOD + "\n[monitoring]\nport = 9100\n", "monitoring: unknown key"),
    Bad("unknown_metrics_key", GOOD + "\n[metrics]\nport = 9100\n", "metrics.port: unknown key"),
    Bad("wrong_type", with_peer('heartbeat_interval = "fast"'),
        "peer.heartbeat_interval: must be a number (got string 'fast')"),
    Bad("bool_for_port", edited("nbd_port = 8889", "nbd_port = true"),
        "domain[0].nbd_port: must be an integer (got boolean True)"),
    Bad("missing_required", edited('qmp_socket = "/run/guest1.qmp"\n', ""),
        "domain[0].qmp_socket: missing required key"),
    Bad("no_domain", HEAD, "domain: missing required key"),
    Bad("empty_domain_list", "domain = []\n" + HEAD, "domain: needs at least one entry (got [])"),
    Bad("bad_role", edited('role = "secondary"', 'role = "tertiary"'),
        "colod.role: must be one of 'primary', 'secondary' (got 'tertiary')"),
    Bad("secondary_without_listen", edited(LISTEN + "\n", ""),
        "peer.listen: missing required key for role 'secondary' (the secondary listens for the primary)"),
    Bad("role_override_needs_connect", edited(CONNECT + "\n", ""),
        "peer.connect: missing required key for role 'primary' (the primary connects to the secondary)",
        args=("--role", "primary")),
    # -- numbers: documented bounds, inf and nan --------------------------------------------------
    Bad("zero_interval", with_colod('checkpoint_interval = 0'),
        "colod.checkpoint_interval: must be between 0.01 and 3600 seconds (got 0.0)"),
    Bad("huge_interval", with_colod('checkpoint_interval = 1e308'),
        "colod.checkpoint_interval: must be between 0.01 and 3600 seconds (got 1e+308)"),
    Bad("infinite_heartbeat", with_peer("heartbeat_interval = inf"),
        "peer.heartbeat_interval: must be between 0.05 and 60 seconds (got inf)"),
    Bad("nan_heartbeat", with_peer("heartbeat_interval = nan"),
        "peer.heartbeat_interval: must be between 0.05 and 60 seconds (got nan)"),
    Bad("heartbeat_burning_a_core", with_peer("heartbeat_interval = 1e-6"),
        "peer.heartbeat_interval: must be between 0.05 and 60 seconds (got 1e-06)"),
    Bad("heartbeat_timeout_huge", with_peer("heartbeat_timeout = 1e308"),
        "peer.heartbeat_timeout: must be between 0.1 and 600 seconds (got 1e+308)"),
    Bad("heartbeat_timeout_too_short", with_peer("heartbeat_interval = 1.0\nheartbeat_timeout = 1.5"),
        "peer.heartbeat_timeout: must be at least twice heartbeat_interval (1), "
        "or one lost heartbeat looks like a dead peer (got 1.5)"),
    Bad("negative_command_timeout", GOOD + "\n[qmp]\ncommand_timeout = -1\n",
        "qmp.command_timeout: must be between 0.1 and 600 seconds (got -1.0)"),
    Bad("infinite_connect_timeout", GOOD + "\n[qmp]\nconnect_timeout = inf\n",
        "qmp.connect_timeout: must be between 0.1 and 3600 seconds (got inf)"),
    Bad("nbd_port_out_of_range", edited("nbd_port = 8889", "nbd_port = 70000"),
        "domain[0].nbd_port: must be a TCP port between 1 and 65535 (got 70000)"),
    Bad("nbd_port_zero", edited("nbd_port = 8889", "nbd_port = 0"),
        "domain[0].nbd_port: must be a TCP port between 1 and 65535 (got 0)"),
    Bad("nbd_port_beyond_64_bits", edited("nbd_port = 8889", "nbd_port = 99999999999999999999999"),
        "domain[0].nbd_port: must be a TCP port between 1 and 65535 (got 99999999999999999999999)"),
    # -- the peer's endpoints ---------------------------------------------------------------------
    Bad("listen_port_not_a_number", listen('"tcp:ninethousand"'),
        f"peer.listen: {SERVER}port 'ninethousand' is not a whole number (got 'tcp:ninethousand')"),
    Bad("listen_port_zero", listen('"tcp:0"'),
        f"peer.listen: {SERVER}port 0 would be a random port, which the peer cannot know (got 'tcp:0')"),
    Bad("listen_port_out_of_range", listen('"tcp:70000"'),
        f"peer.listen: {SERVER}port 70000 is not between 1 and 65535 (got 'tcp:70000')"),
    Bad("listen_port_negative", listen('"tcp:-1:interface=127.0.0.1"'),
        f"peer.listen: {SERVER}port -1 is not between 1 and 65535 (got 'tcp:-1:interface=127.0.0.1')"),
    Bad("listen_bad_interface", listen('"tcp:9000:interface=banana"'),
        f"peer.listen: {SERVER}interface 'banana' is not an IP address "
        "(got 'tcp:9000:interface=banana')"),
    Bad("listen_nul_interface", listen('"tcp:9000:interface=\\u0000"'),
        f"peer.listen: {SERVER}interface '\\x00' is not an IP address "
        "(got 'tcp:9000:interface=\\x00')"),
    Bad("listen_tcp6_on_ipv4", listen('"tcp6:9000:interface=127.0.0.1"'),
        f"peer.listen: {SERVER}interface '127.0.0.1' is not an IPv6 address (tcp6 listens on IPv6; use tcp) "
        "(got 'tcp6:9000:interface=127.0.0.1')"),
    Bad("listen_unix_missing_directory", listen(f'"unix:{DIR}/missing/colod.sock"'),
        f"peer.listen: {SERVER}the socket's directory {DIR}/missing does not exist "
        f"(got 'unix:{DIR}/missing/colod.sock')"),
    Bad("listen_unix_relative", listen('"unix:colod.sock"'),
        f"peer.listen: {SERVER}address 'colod.sock' must be an absolute path (got 'unix:colod.sock')"),
    Bad("listen_ssl", listen(f'"ssl:9000:privateKey={DIR}/key.pem"'),
        f"peer.listen: {SERVER}endpoint type 'ssl': the link's TLS is configured in [tls] (mutual, the peer "
        f"checked by name); use one of tcp, tcp6, unix, systemd (got 'ssl:9000:privateKey={DIR}/key.pem')"),
    Bad("listen_systemd_without_index", listen('"systemd:domain=INET"'),
        f"peer.listen: {SERVER}needs exactly one of index= and name= (which inherited socket) "
        "(got 'systemd:domain=INET')"),
    Bad("listen_systemd_bad_family", listen('"systemd:domain=IPX:index=0"'),
        f"peer.listen: {SERVER}domain must be one of INET, INET6, UNIX (the inherited socket's family) "
        "(got 'systemd:domain=IPX:index=0')"),
    Bad("listen_stdio", listen('"stdio:"'),
        f"peer.listen: {SERVER}endpoint type 'stdio' cannot carry the peer link "
        "(use one of tcp, tcp6, unix, systemd) (got 'stdio:')"),
    Bad("listen_unknown_type", listen('"TCP:9000"'),
        f"peer.listen: {SERVER}endpoint type 'TCP' cannot carry the peer link "
        "(use one of tcp, tcp6, unix, systemd) (got 'TCP:9000')"),
    Bad("listen_trailing_backslash", listen('"tcp:9000\\\\"'),
        f"peer.listen: {SERVER}ends in a backslash, which escapes nothing (write \\\\ for one) "
        "(got 'tcp:9000\\\\')"),
    Bad("listen_port_is_nbd_port", edited("nbd_port = 8889", f"nbd_port = {PEER_PORT}"),
        f"domain[0].nbd_port: {PEER_PORT} is also peer.listen's port; on the secondary colod and the NBD "
        "server cannot both listen on it"),
    Bad("connect_port_zero", connect('"tcp:host=192.0.2.11:port=0"'),
        f"peer.connect: {CLIENT}port 0 would be a random port, which the peer cannot know "
        "(got 'tcp:host=192.0.2.11:port=0')"),
    Bad("connect_to_any_address", connect('"tcp:host=0.0.0.0:port=9000"'),
        f"peer.connect: {CLIENT}host '0.0.0.0': 0.0.0.0 is not one host's address: it must be an address "
        "the peer can connect to (got 'tcp:host=0.0.0.0:port=9000')"),
    Bad("connect_bad_host", connect('"tcp:host=-oProxy:port=9000"'),
        f"peer.connect: {CLIENT}host '-oProxy': must be a host name or an IP address "
        "(got 'tcp:host=-oProxy:port=9000')"),
    Bad("connect_infinite_timeout", connect('"tcp:host=192.0.2.11:port=9000:timeout=inf"'),
        f"peer.connect: {CLIENT}timeout 'inf' is not a whole number "
        "(got 'tcp:host=192.0.2.11:port=9000:timeout=inf')"),
    Bad("connect_tls", connect('"tls:host=192.0.2.11:port=9000"'),
        f"peer.connect: {CLIENT}endpoint type 'tls': the link's TLS is configured in [tls] (mutual, the peer "
        "checked by name); use one of tcp, unix (got 'tls:host=192.0.2.11:port=9000')"),
    Bad("connect_without_type", connect('"host=192.0.2.11:port=9000"'),
        f"peer.connect: {CLIENT}has no endpoint type, only keyword arguments (the type comes first, as in "
        "tcp:9000) (got 'host=192.0.2.11:port=9000')"),
    Bad("connect_missing_port", connect('"tcp:host=192.0.2.11"'),
        f"peer.connect: {CLIENT}needs a port (got 'tcp:host=192.0.2.11')"),
    Bad("metrics_listen_bad", GOOD + '\n[metrics]\nlisten = "tcp:http"\n',
        f"metrics.listen: {SERVER}port 'http' is not a whole number (got 'tcp:http')"),
    Bad("metrics_on_the_peer_port", GOOD + f'\n[metrics]\nlisten = "tcp:{PEER_PORT}"\n',
        f"metrics.listen: port {PEER_PORT} is also the peer link's or an nbd_port; the metrics endpoint "
        "needs a port of its own"),
    Bad("log_level_unknown", GOOD + '\n[log]\nlevel = "verbose"\n',
        "log.level: must be one of 'debug', 'info', 'warn', 'error', 'critical' (got 'verbose')"),
    Bad("log_json_relative", GOOD + '\n[log]\njson = "colod.json"\n',
        "log.json: must be an absolute path (got 'colod.json')"),
    Bad("log_json_is_a_directory", GOOD + f'\n[log]\njson = "{DIR}"\n',
        f"log.json: '{DIR}' is a directory, not a file"),
    # -- paths and files --------------------------------------------------------------------------
    Bad("control_socket_relative", with_colod('control_socket = "control.sock"'),
        "colod.control_socket: must be an absolute path (got 'control.sock')"),
    Bad("control_socket_too_long", with_colod(f'control_socket = "/run/{"c" * 120}.sock"'),
        "colod.control_socket: must be at most 107 bytes long, the most a unix socket's path can be "
        f"(got '/run/{'c' * 120}.sock')"),
    Bad("control_socket_is_the_qmp_socket", with_colod('control_socket = "/run/guest1.qmp"'),
        "domain[0].qmp_socket: the same file as colod.control_socket ('/run/guest1.qmp')"),
    Bad("relative_path", edited('image = "/srv/guest1.raw"', 'image = "srv/guest1.raw"'),
        "domain[0].disk[0].image: must be an absolute path (got 'srv/guest1.raw')"),
    Bad("nul_in_path", edited('image = "/srv/guest1.raw"', 'image = "/srv/guest1\\u0000.raw"'),
        "domain[0].disk[0].image: must not contain a NUL byte (got '/srv/guest1\\x00.raw')"),
    Bad("nul_in_state_dir", with_colod('state_dir = "/var/\\u0000"'),
        "colod.state_dir: must not contain a NUL byte (got '/var/\\x00')"),
    Bad("state_dir_is_a_file", with_colod(f'state_dir = "{DIR}/state"'),
        f"colod.state_dir: '{DIR}/state' is not a directory", make=(("state", "file"),)),
    Bad("state_dir_under_a_file",
        with_colod(f'state_dir = "{DIR}/state/colod"'),
        f"colod.state_dir: '{DIR}/state/colod' cannot be made: '{DIR}/state' is not a directory",
        make=(("state", "file"),)),
    Bad("image_is_a_directory", edited('image = "/srv/guest1.raw"', f'image = "{DIR}/disk"'),
        f"domain[0].disk[0].image: '{DIR}/disk' is a directory, not a file", make=(("disk", "dir"),)),
    Bad("memory_image_is_a_directory", with_domain(f'memory_image = "{DIR}/ram"'),
        f"domain[0].memory_image: '{DIR}/ram' is a directory, not a file", make=(("ram", "dir"),)),
    Bad("qmp_socket_is_a_directory", edited('qmp_socket = "/run/guest1.qmp"', f'qmp_socket = "{DIR}"'),
        f"domain[0].qmp_socket: '{DIR}' is a directory, not a file"),
    Bad("memory_image_is_the_disk", with_domain('memory_image = "/srv/guest1.raw"'),
        "domain[0].disk[0].image: the same file as domain[0].memory_image ('/srv/guest1.raw')"),
    Bad("device_model_is_the_qmp_socket", with_domain('device_model_socket = "/run/guest1.qmp"'),
        "domain[0].device_model_socket: the same file as domain[0].qmp_socket ('/run/guest1.qmp')"),
    Bad("same_image_twice", GOOD + SECOND_DISK.replace("/dev/shm/b-h.qcow2", "/dev/shm/a.qcow2"),
        "domain[0].disk[1].hidden_image: the same file as domain[0].disk[0].active_image "
        "('/dev/shm/a.qcow2')"),
    Bad("same_image_spelt_differently",
        GOOD + SECOND_DISK.replace("/srv/guest1b.raw", "/srv/../srv/guest1.raw"),
        "domain[0].disk[1].image: the same file as domain[0].disk[0].image ('/srv/../srv/guest1.raw')"),
    Bad("device_model_socket_relative", with_domain('device_model_socket = "dm.qmp"'),
        "domain[0].device_model_socket: must be an absolute path (got 'dm.qmp')"),
    Bad("memory_image_relative", with_domain('memory_image = "ram.img"'),
        "domain[0].memory_image: must be an absolute path (got 'ram.img')"),
    # -- hosts and names --------------------------------------------------------------------------
    Bad("nbd_host_any_address", edited('nbd_host = "127.0.0.1"', 'nbd_host = "0.0.0.0"'),
        "domain[0].nbd_host: 0.0.0.0 is not one host's address: it must be an address the peer can connect "
        "to (got '0.0.0.0')"),
    Bad("nbd_host_multicast", edited('nbd_host = "127.0.0.1"', 'nbd_host = "224.0.0.1"'),
        "domain[0].nbd_host: 224.0.0.1 is not one host's address: it must be an address the peer can "
        "connect to (got '224.0.0.1')"),
    Bad("nbd_host_bad_address", edited('nbd_host = "127.0.0.1"', 'nbd_host = "192.0.2.300"'),
        "domain[0].nbd_host: is not a valid IP address (got '192.0.2.300')"),
    Bad("nbd_host_option", edited('nbd_host = "127.0.0.1"', 'nbd_host = "-oProxyCommand=x"'),
        "domain[0].nbd_host: must be a host name or an IP address (got '-oProxyCommand=x')"),
    Bad("peer_is_this_node", with_peer('node_name = "dom0-b"'),
        "peer.node_name: is this node's own colod.node_name ('dom0-b'); the peer must have a name of its "
        "own"),
    Bad("bad_peer_node_name", with_peer('node_name = "dom0 a"'),
        "peer.node_name: must be letters, digits, '-', '_' or '.', starting with a letter or digit, "
        "at most 64 characters (got 'dom0 a')"),
    Bad("bad_node_name", edited('quorum_node = "colo-disk0"', 'quorum_node = "1disk"'),
        f"domain[0].disk[0].quorum_node: {NODE} (got '1disk')"),
    Bad("reserved_node_name", edited('quorum_node = "colo-disk0"', 'quorum_node = "colod0-rep"'),
        "domain[0].disk[0].quorum_node: is a node name colod uses itself (names 'colod<number>-...' are "
        "reserved) (got 'colod0-rep')"),
    Bad("duplicate_disk_name", GOOD + SECOND_DISK.replace('"xvdb"', '"xvda"'),
        "domain[0].disk[1].name: 'xvda' is already used by domain[0].disk[0].name"),
    Bad("duplicate_export", GOOD + SECOND_DISK.replace("guest1-xvdb", "guest1-xvda"),
        "domain[0].disk[1].export_name: 'guest1-xvda' is already used by domain[0].disk[0].export_name"),
    Bad("export_is_another_quorum", GOOD + SECOND_DISK.replace("guest1-xvdb", "colo-disk0"),
        "domain[0].disk[1].export_name: 'colo-disk0' is already used by domain[0].disk[0].quorum_node"),
    Bad("duplicate_domain_name", second_domain(),
        "domain[1].name: 'guest1' is already used by domain[0].name"),
    Bad("duplicate_nbd_address", second_domain(GUEST2),
        "domain[1].nbd_port: 8889 is already used by domain[0].nbd_port"),
    Bad("two_domains", second_domain(GUEST2, ("nbd_port = 8889", "nbd_port = 8890")),
        "domain: this version of colod protects one domain per daemon (got 2); run one colod per domain",
        daemon_only=True),
    # -- TLS --------------------------------------------------------------------------------------
    Bad("tls_table_missing", edited("tls = false\n", ""),
        "tls: missing required table: the peer link is mutual TLS unless peer.tls = false (plaintext, "
        "insecure); give ca, certificate and key (colod make-certs makes a lab's)"),
    tls_bad("tls_without_peer_node_name", 'node_name = "dom0-a"\n', "",
            "peer.node_name: missing required key: under TLS (peer.tls) the peer is authenticated by the "
            "name its certificate carries"),
    Bad("tls_not_a_boolean", edited("tls = false\n", "", with_peer('tls = "no"')),
        "peer.tls: must be true or false (got string 'no')"),
    Bad("nbd_tls_without_tls_table", edited("nbd_tls = false\n", ""),
        "tls: missing required table: NBD is TLS unless domain[0].nbd_tls = false (plaintext, insecure); "
        "give ca, certificate and key (colod make-certs makes a lab's)"),
    Bad("nbd_tls_without_peer_node_name",
        edited("nbd_tls = false\n", "", edited('node_name = "dom0-a"\n', "tls = false\n", TLS)),
        "peer.node_name: missing required key: under TLS (domain[0].nbd_tls) the peer is authenticated "
        "by the name its certificate carries", certificates=True),
    Bad("nbd_tls_not_a_boolean", edited("nbd_tls = false", 'nbd_tls = "off"'),
        "domain[0].nbd_tls: must be true or false (got string 'off')"),
    Bad("nbd_tls_for_xen", edited('name = "guest1"\n', 'name = "guest1"\nnbd_tls = true\n', XEN),
        "domain[0].nbd_tls: not for a Xen domain ([domain.xen]): Debian's Xen QEMU has no block replication "
        "(docs/xen.md)"),
    tls_bad("tls_unknown_key", "[tls]\n", f'[tls]\ncafile = "{DIR}/ca.pem"\n', "tls.cafile: unknown key"),
    tls_bad("tls_ca_missing", TLS_FILES[0], f'ca = "{DIR}/missing.pem"',
            f"tls.ca: '{DIR}/missing.pem' cannot be read: No such file or directory"),
    tls_bad("tls_ca_relative", TLS_FILES[0], 'ca = "ca.pem"',
            "tls.ca: must be an absolute path (got 'ca.pem')"),
    tls_bad("tls_certificate_not_pem", TLS_FILES[1], f'certificate = "{DIR}/tls/dom0-b/server-key.pem"',
            f"tls.certificate: '{DIR}/tls/dom0-b/server-key.pem' is not a PEM certificate"),
    tls_bad("tls_key_of_another_node", TLS_FILES[2], f'key = "{DIR}/tls/dom0-a/server-key.pem"',
            f"tls.key: '{DIR}/tls/dom0-a/server-key.pem' is not the key of the certificate "
            f"'{DIR}/tls/dom0-b/server-cert.pem'"),
    tls_bad("tls_certificate_of_another_ca", TLS_FILES[0], f'ca = "{DIR}/other/dom0-b/ca-cert.pem"',
            f"tls.certificate: '{DIR}/tls/dom0-b/server-cert.pem' does not verify against the CA "
            f"'{DIR}/other/dom0-b/ca-cert.pem': unable to get local issuer certificate"),
    tls_bad("tls_certificate_of_another_node", "\n".join(TLS_FILES[1:]),
            "\n".join(f.replace("dom0-b", "dom0-c") for f in TLS_FILES[1:]),
            f"tls.certificate: '{DIR}/tls/dom0-c/server-cert.pem' is for 'dom0-c', not for this node, "
            "'dom0-b'"),
    tls_bad("tls_peer_name_is_an_address", 'node_name = "dom0-a"', 'node_name = "10.0.0.1"',
            "peer.node_name: cannot be a certificate's DNS name (it reads as an IP address); TLS needs "
            "another name (got '10.0.0.1')"),
    # -- failover -------------------------------------------------------------------------------
    Bad("failover_missing", edited('[failover]\npolicy = "manual"\n', ""),
        "failover: missing: say how a lost primary is replaced, policy = one of fence, manual, "
        "heartbeat-only, etcd (docs/engine.md, Failover)"),
    Bad("failover_unknown_policy", failover('policy = "quorum"'),
        "failover.policy: must be one of 'fence', 'manual', 'heartbeat-only', 'etcd' (got 'quorum')"),
    Bad("failover_fence_without_command", failover('policy = "fence"'),
        "failover.fence_command: missing required key"),
    Bad("failover_fence_relative", failover('policy = "fence"\nfence_command = ["fence_ipmilan"]'),
        "failover.fence_command: must start with the program's absolute path (got ['fence_ipmilan'])"),
    Bad("failover_fence_missing_program", failover(f'policy = "fence"\nfence_command = ["{DIR}/agent"]'),
        f"failover.fence_command: {DIR}/agent does not exist on this host: no takeover could ever be "
        f"fenced (got ['{DIR}/agent'])"),
    Bad("failover_fence_not_executable", failover(f'policy = "fence"\nfence_command = ["{DIR}/agent"]'),
        f"failover.fence_command: {DIR}/agent is not an executable file: no takeover could ever be fenced "
        f"(got ['{DIR}/agent'])", make=(("agent", "file"),)),
    Bad("failover_fence_empty_argument", failover('policy = "fence"\nfence_command = ["/bin/true", ""]'),
        "failover.fence_command: must be a list of non-empty strings, the program first "
        "(got ['/bin/true', ''])"),
    Bad("failover_fence_unknown_placeholder",
        failover('policy = "fence"\nfence_command = ["/bin/true", "{host}"]'),
        "failover.fence_command: {host} is not a placeholder colod fills in (only {domain}, {peer}) "
        "(got ['/bin/true', '{host}'])"),
    Bad("failover_fence_timeout_zero",
        failover('policy = "fence"\nfence_command = ["/bin/true"]\nfence_timeout = 0'),
        "failover.fence_timeout: must be between 0.1 and 3600 seconds (got 0.0)"),
    Bad("failover_fence_keys_without_fence", failover('policy = "manual"\nfence_command = ["/bin/true"]'),
        "failover.fence_command: is read only with policy = \"fence\" (policy is 'manual')"),
    Bad("failover_etcd_without_endpoints", failover('policy = "etcd"'),
        "failover.etcd_endpoints: missing required key"),
    Bad("failover_etcd_no_endpoint", failover('policy = "etcd"\netcd_endpoints = []'),
        "failover.etcd_endpoints: needs at least one etcd member's URL (got [])"),
    Bad("failover_etcd_https_without_tls", failover('policy = "etcd"\netcd_endpoints = ["https://etcd1:2379"]'),
        "failover.etcd_endpoints: https needs [tls]: etcd's certificate is checked against its CA, and this "
        "node's certificate is its client certificate"),
    Bad("failover_etcd_mixed_schemes",
        failover('policy = "etcd"\netcd_endpoints = ["https://etcd1:2379", "http://etcd2:2379"]'),
        "failover.etcd_endpoints: mixes https and http: one cluster, one way to reach it "
        "(got ['https://etcd1:2379', 'http://etcd2:2379'])"),
    Bad("failover_etcd_other_scheme", failover('policy = "etcd"\netcd_endpoints = ["unix://etcd1:2379"]'),
        "failover.etcd_endpoints: unix://etcd1:2379: must be https://HOST:PORT (or http://, plaintext) "
        "(got ['unix://etcd1:2379'])"),
    Bad("failover_etcd_no_port", failover('policy = "etcd"\netcd_endpoints = ["http://etcd1"]'),
        "failover.etcd_endpoints: http://etcd1: must be https://HOST:PORT (or http://, plaintext) "
        "(got ['http://etcd1'])"),
    Bad("failover_etcd_not_a_string", failover('policy = "etcd"\netcd_endpoints = [2379]'),
        "failover.etcd_endpoints: must be a list of strings, one https://HOST:PORT URL per etcd member "
        "(got [2379])"),
    Bad("failover_etcd_ttl_short",
        failover('policy = "etcd"\netcd_endpoints = ["http://etcd1:2379"]\netcd_lease_ttl = 1'),
        "failover.etcd_lease_ttl: must be between 2 and 600 seconds (got 1)"),
    Bad("failover_etcd_ttl_float",
        failover('policy = "etcd"\netcd_endpoints = ["http://etcd1:2379"]\netcd_lease_ttl = 2.5'),
        "failover.etcd_lease_ttl: must be an integer (got float 2.5)"),
    Bad("failover_etcd_timeout_long",
        failover('policy = "etcd"\netcd_endpoints = ["http://etcd1:2379"]\netcd_timeout = 61'),
        "failover.etcd_timeout: must be between 0.1 and 60 seconds (got 61.0)"),
    Bad("failover_etcd_prefix_relative",
        failover('policy = "etcd"\netcd_endpoints = ["http://etcd1:2379"]\netcd_prefix = "colod"'),
        "failover.etcd_prefix: must begin and end with / (got 'colod')"),
    Bad("failover_etcd_keys_without_etcd",
        failover('policy = "manual"\netcd_endpoints = ["http://etcd1:2379"]'),
        "failover.etcd_endpoints: is read only with policy = \"etcd\" (policy is 'manual')"),
    # -- Xen domains ------------------------------------------------------------------------------
    Bad("xen_with_disks", XEN + GOOD[GOOD.index("[[domain.disk]]"):],
        "domain[0].disk: not for a Xen domain ([domain.xen]): Debian's Xen QEMU has no block replication "
        "(docs/xen.md)"),
    Bad("xen_with_qmp_socket",
        edited('name = "guest1"\n', 'name = "guest1"\nqmp_socket = "/run/q.qmp"\n', XEN),
        "domain[0].qmp_socket: not for a Xen domain ([domain.xen]): libxl's QMP socket is found from the "
        "domain's id"),
    Bad("xen_secondary_without_xl_config", edited('xl_config = "/etc/xen/guest1.cfg"\n', "", XEN),
        "domain[0].xen.xl_config: missing required key for role 'secondary' (Xen's receiver creates the "
        "domain from it)"),
    Bad("xen_unknown_key", edited("[domain.xen]\n", '[domain.xen]\nxl_cfg = "/x"\n', XEN),
        "domain[0].xen.xl_cfg: unknown key"),
    Bad("xen_relative_helper", edited("[domain.xen]\n", '[domain.xen]\nsave_helper = "helper"\n', XEN),
        "domain[0].xen.save_helper: must be an absolute path (got 'helper')"),
    Bad("xen_config_is_a_directory", edited('xl_config = "/etc/xen/guest1.cfg"', f'xl_config = "{DIR}"', XEN),
        f"domain[0].xen.xl_config: '{DIR}' is a directory, not a file"),
]

def _params() -> list[object]:
    return [pytest.param(case, id=case.name) for case in BAD]


def write(case: Bad, directory: Path) -> Path:
    """The case's file (and what it needs beside it) in ``directory``."""
    if case.certificates:
        certs.make(directory / "tls", ["dom0-a", "dom0-b", "dom0-c"])
        certs.make(directory / "other", ["dom0-b"])
    for name, kind in case.make:
        target = directory / name
        target.mkdir() if kind == "dir" else target.write_bytes(b"")
    path = directory / "colod.toml"
    if isinstance(case.content, str):
        path.write_text(case.content.replace(DIR, str(directory)), encoding="utf-8")
    elif isinstance(case.content, bytes):
        path.write_bytes(case.content)
    return path


@pytest.mark.parametrize("case", _params())
def test_refused_in_one_line(case: Bad, tmp_path: Path) -> None:
    """twistd colod, colod check-config and colod qemu-args each print exactly the one line, exit 1,
    no traceback: check-config refuses exactly what the daemon refuses."""
    path = write(case, tmp_path)
    message = f"{path}: {case.message.replace(DIR, str(tmp_path))}"
    role = list(case.args) or ["--role", "secondary"]
    commands = {"twistd": [TWISTD, "-n", "--pidfile=", "colod", "--config", str(path), *case.args],
                "check-config": [COLOD, "check-config", str(path), *case.args]}
    if not case.daemon_only:
        commands["qemu-args"] = [COLOD, "qemu-args", *role, "--config", str(path)]
    running = {name: subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      cwd=tmp_path) for name, command in commands.items()}
    try:
        done = {name: (process.communicate(timeout=60), process.returncode)
                for name, process in running.items()}
    finally:
        for process in running.values():
            process.kill()
            process.wait()
    (out, err), status = done["twistd"]
    assert (status, out + err) == (1, f"colod: {message}\n")
    assert "Traceback" not in out + err
    for command in ("check-config", "qemu-args"):
        if command in done:
            (out, err), status = done[command]
            assert (status, out, err) == (1, "", f"colod: error: {message}\n"), command


def test_cases_are_distinct() -> None:
    """Each case is its own problem, with its own message; and there are many."""
    assert len({case.name for case in BAD}) == len(BAD)
    assert len({case.message for case in BAD}) == len(BAD)
    assert len(BAD) >= 60


def test_the_good_file_is_accepted(tmp_path: Path) -> None:
    """The files above are GOOD with one thing wrong: GOOD itself gives QEMU arguments, no error."""
    path = tmp_path / "colod.toml"
    path.write_text(GOOD)
    done = subprocess.run([COLOD, "qemu-args", "--role", "secondary", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    assert "-blockdev" in done.stdout
    checked = subprocess.run([COLOD, "check-config", str(path)], capture_output=True, text=True, timeout=60)
    assert (checked.returncode, checked.stderr) == (0, "")
    assert checked.stdout == (f"{path}: good: secondary dom0-b protecting guest1; control socket "
                              "/var/lib/colod/control.sock\n")
