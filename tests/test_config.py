"""The configuration file: the example parses, values at their documented bounds are taken.

The bad files, each refused in one line by the commands that read them, are
tests/test_bad_config.py; here are the good ones a stricter check must not
refuse, and the checks (colod.endpoints) met in process.
"""

from __future__ import annotations

import datetime
import os
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from colod import config, tap
from colod.config import PolicyName
from colod.endpoints import client_problem, host_problem, server_problem
from colod.role import Role
from colod.testing.processes import free_port
from tests import certs
from tests.rig import ScratchTestCase

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "etc" / "colod.toml"

#: GOOD's peer port: free when the tests start, so that a daemon started from GOOD (tests/test_tap.py,
#: tests/xen/test_setup.py) does not fail at its start for a port another run holds.
PEER_PORT = free_port()
LISTEN = f'listen = "tcp:{PEER_PORT}:interface=127.0.0.1"'
CONNECT = f'connect = "tcp:host=127.0.0.1:port={PEER_PORT}"'

GOOD = f"""\
[colod]
role = "secondary"
node_name = "dom0-b"

[peer]
{LISTEN}
{CONNECT}
# The checks here are of everything but TLS (tests.test_tls_config): a plaintext link, said so.
tls = false

[failover]
policy = "manual"

[[domain]]
name = "guest1"
qmp_socket = "/run/guest1.qmp"
nbd_host = "127.0.0.1"
nbd_port = 8889
nbd_tls = false

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
        """etc/colod.toml, the documented example, parses into exactly what it says (its [tls] files
        made here: they must exist and serve)."""
        tls = certs.files("dom0-b")
        path = self.workdir / "colod.toml"
        path.write_text(EXAMPLE.read_text().replace("/etc/colod/tls/", f"{tls.ca.parent}/"))
        loaded = config.load(path)
        disk = config.DiskConfig(
            name="xvda", quorum_node="colo-disk0", image="/var/lib/xen/images/guest1-xvda.raw",
            format="raw", export_name="guest1-xvda",
            active_image="/dev/shm/colod/guest1-xvda-active.qcow2",
            hidden_image="/dev/shm/colod/guest1-xvda-hidden.qcow2",
        )
        self.assertEqual(loaded, config.Config(
            path=str(path), role="secondary", node_name="dom0-b", state_dir="/var/lib/colod",
            checkpoint_interval=5.0,
            peer=config.PeerConfig(
                listen="tcp:9000:interface=0.0.0.0", connect="tcp:host=192.0.2.10:port=9000:timeout=5",
                heartbeat_interval=0.5, heartbeat_timeout=3.0, node_name="dom0-a",
            ),
            qmp=config.QMPConfig(command_timeout=5.0, connect_timeout=10.0),
            failover=config.FailoverConfig(PolicyName.MANUAL),
            domains=(config.DomainConfig(
                name="guest1", qmp_socket="/var/run/xen/qmp-libxl-1", nbd_host="192.0.2.11",
                nbd_port=8889, disks=(disk,), nbd_tls=config.NbdTLS(peer="dom0-a"),
            ),),
            tls=config.TLSConfig(ca=str(tls.ca), certificate=str(tls.certificate), key=str(tls.key)),
        ))

    def test_fence_policy(self) -> None:
        """The fence command is kept as written, its placeholders for the policy to fill in."""
        loaded = config.parse(__import__("tomllib").loads(edited(
            '[failover]\npolicy = "manual"\n',
            '[failover]\npolicy = "fence"\nfence_command = ["/bin/true", "--off", "{peer}", "{domain}"]\n'
            "fence_timeout = 30\n")), "good.toml")
        self.assertEqual(loaded.failover, config.FailoverConfig(
            PolicyName.FENCE, ("/bin/true", "--off", "{peer}", "{domain}"), 30.0))

    def test_etcd_policy(self) -> None:
        """The etcd policy's endpoints as written, and its defaults: a 10 s lease, /colod/, 2 s a call."""
        loaded = config.parse(__import__("tomllib").loads(edited(
            '[failover]\npolicy = "manual"\n',
            '[failover]\npolicy = "etcd"\netcd_endpoints = ["http://192.0.2.5:2379", "http://etcd2:2379/"]\n')),
            "good.toml")
        self.assertEqual(loaded.failover, config.FailoverConfig(
            PolicyName.ETCD, etcd_endpoints=("http://192.0.2.5:2379", "http://etcd2:2379/"),
            etcd_lease_ttl=10, etcd_prefix="/colod/", etcd_timeout=2.0))

    def test_etcd_over_https_uses_the_nodes_tls(self) -> None:
        """https endpoints are reached with [tls]'s files: its CA checks etcd, its certificate is ours."""
        text = edited('[failover]\npolicy = "manual"\n',
                      '[failover]\npolicy = "etcd"\netcd_endpoints = ["https://etcd1:2379", "https://etcd2:2379"]\n')
        loaded = config.parse(__import__("tomllib").loads(text + certs.files("dom0-b").toml()), "good.toml")
        self.assertIsNotNone(loaded.tls)
        self.assertEqual((loaded.failover.etcd_endpoints, loaded.failover.etcd_tls),
                         (("https://etcd1:2379", "https://etcd2:2379"), loaded.tls))

    def test_defaults(self) -> None:
        """Keys left out take the documented defaults."""
        loaded = config.parse(__import__("tomllib").loads(GOOD), "good.toml")
        self.assertEqual(
            (loaded.state_dir, loaded.checkpoint_interval),
            ("/var/lib/colod", 5.0),
        )
        self.assertEqual(loaded.peer.heartbeat_interval, 0.5)
        self.assertEqual(loaded.qmp, config.QMPConfig(command_timeout=5.0, connect_timeout=10.0))
        self.assertEqual(loaded.domains[0].disks[0].format, "raw")
        self.assertEqual((loaded.control_socket, loaded.metrics, loaded.log),
                         ("/var/lib/colod/control.sock", config.MetricsConfig(listen=None),
                          config.LogConfig(level="info", json=None)))
        moved = config.parse(__import__("tomllib").loads(GOOD.replace(
            'node_name = "dom0-b"\n', 'node_name = "dom0-b"\nstate_dir = "/srv/colod"\n', 1)), "good.toml")
        self.assertEqual(moved.control_socket, "/srv/colod/control.sock")

    def test_role_override(self) -> None:
        """--role wins over the file's role."""
        path = self.workdir / "colod.toml"
        path.write_text(GOOD)
        self.assertEqual(config.load(path, "primary").role, "primary")
        self.assertEqual(config.load(path).role, "secondary")

    def test_role_is_the_enum(self) -> None:
        """The role is a Role from the file and from --role, so that ``is`` comparisons below hold."""
        path = self.workdir / "colod.toml"
        path.write_text(GOOD)
        self.assertIs(config.load(path).role, Role.SECONDARY)
        self.assertIs(config.load(path, "primary").role, Role.PRIMARY)
        options = tap.Options()
        options.parseOptions(["--role", "primary", "--config", str(path)])
        self.assertIs(options["loaded"].role, Role.PRIMARY)
        with self.assertRaises(config.ConfigError) as raised:
            config.load(path).with_role("tertiary")
        self.assertIn("role: must be 'primary' or 'secondary' (got 'tertiary')", str(raised.exception))


def test_numbers_at_their_bounds() -> None:
    """The documented bounds themselves are taken (the table's values beyond them are not)."""
    low = edited("[peer]\n", "[peer]\nheartbeat_interval = 0.05\nheartbeat_timeout = 0.1\n").replace(
        'node_name = "dom0-b"', 'node_name = "dom0-b"\ncheckpoint_interval = 0.01') + (
        "\n[qmp]\ncommand_timeout = 0.1\nconnect_timeout = 0.1\n")
    high = edited("[peer]\n", "[peer]\nheartbeat_interval = 60\nheartbeat_timeout = 600\n").replace(
        'node_name = "dom0-b"', 'node_name = "dom0-b"\ncheckpoint_interval = 3600') + (
        "\n[qmp]\ncommand_timeout = 600\nconnect_timeout = 3600\n")
    for text, values in ((low, (0.01, 0.05, 0.1, 0.1, 0.1)), (high, (3600, 60, 600, 600, 3600))):
        loaded = config.parse(tomllib.loads(text), "bounds.toml")
        assert (loaded.checkpoint_interval, loaded.peer.heartbeat_interval, loaded.peer.heartbeat_timeout,
                loaded.qmp.command_timeout, loaded.qmp.connect_timeout) == values


def test_utf8_byte_order_mark_is_taken(tmp_path: Path) -> None:
    """A UTF-8 file an editor began with a byte-order mark is still UTF-8."""
    path = tmp_path / "colod.toml"
    path.write_bytes(GOOD.encode("utf-8-sig"))
    assert config.load(path).node_name == "dom0-b"


def test_same_file_through_a_symbolic_link(tmp_path: Path) -> None:
    """Two keys naming one file by different paths are refused, however the second is spelt."""
    (tmp_path / "disk.raw").write_bytes(b"")
    os.symlink(tmp_path / "disk.raw", tmp_path / "alias.raw")
    text = edited('image = "/srv/guest1.raw"', f'image = "{tmp_path}/disk.raw"') + SECOND_DISK.replace(
        "/srv/guest1b.raw", f"{tmp_path}/alias.raw")
    with pytest.raises(config.ConfigError) as raised:
        config.parse(tomllib.loads(text), "link.toml")
    assert str(raised.value) == ("link.toml: domain[0].disk[1].image: the same file as "
                                 f"domain[0].disk[0].image ('{tmp_path}/alias.raw')")


@pytest.mark.parametrize("description", [
    "tcp:9000", "tcp:9000:interface=127.0.0.1", "tcp:port=9000:interface=0.0.0.0:backlog=5",
    "tcp6:9000", "tcp6:9000:interface=\\:\\:1", "tcp:9000:interface=\\:\\:1",
    "unix:/tmp/colod-peer.sock", "unix:address=/tmp/colod-peer.sock:mode=600",
    "systemd:domain=INET:index=0", "systemd:domain=INET6:name=colod",
])
def test_usable_server_endpoints(description: str) -> None:
    """What the secondary may listen on: every type colod supports, with its options."""
    assert server_problem(description) is None


@pytest.mark.parametrize("description", [
    "tcp:host=192.0.2.11:port=9000", "tcp:192.0.2.11:9000", "tcp:host=dom0-b.example.org:port=9000:timeout=5",
    "tcp:port=9000:host=dom0-b", "tcp:host=\\:\\:1:port=9000", "TCP:host=dom0-b:port=9000",
    "tcp:host=dom0-b:port=9000:bindAddress=192.0.2.10", "unix:/run/colod/peer.sock",
    "unix:path=/run/colod/peer.sock:timeout=3",
])
def test_usable_client_endpoints(description: str) -> None:
    """Where the primary may reach its secondary (Twisted's client types are case-blind)."""
    assert client_problem(description) is None


@pytest.mark.parametrize(("host", "problem"), [
    ("dom0-b", None), ("dom0-b.example.org.", None), ("_nbd.example", None), ("192.0.2.11", None),
    ("2001:db8::1", None), ("fe80::1%eth0", None), ("::", "is not one host's address"),
    ("255.255.255.255", "is not one host's address"), ("ff02::1", "is not one host's address"),
    ("a..b", "must be a host name"), ("dom0-", "must be a host name"), ("x" * 64, "must be a host name"),
    ("10.0.0", "is not a valid IP address"), ("", "must be a host name"),
])
def test_hosts(host: str, problem: str | None) -> None:
    """Names and addresses a peer can connect to, and the look-alikes it cannot."""
    found = host_problem(host)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_nbd_tls_needs_the_subject_qemu_checks(tmp_path: Path) -> None:
    """Under NBD's TLS, this node's certificate must have the subject CN=<node_name> alone, which the peer's
    NBD server lets in; a certificate of the CA for the node but with more in its subject is refused in one
    line (the peer link, which checks the DNS name, would take it), and taken with nbd_tls = false."""
    authority = certs.ours()
    ca_key = serialization.load_pem_private_key((authority / "ca-key.pem").read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate((authority / "ca-cert.pem").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "dom0-b")])
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("dom0-b")]), critical=False)
                   .sign(ca_key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    tls = (f'[tls]\nca = "{authority}/ca-cert.pem"\ncertificate = "{tmp_path}/cert.pem"\n'
           f'key = "{tmp_path}/key.pem"\n')
    text = edited("tls = false\n", 'node_name = "dom0-a"\n') + tls
    with pytest.raises(config.ConfigError) as caught:
        config.parse(tomllib.loads(edited("nbd_tls = false\n", "", text)), "tls.toml")
    assert str(caught.value) == (
        f"tls.toml: tls.certificate: '{tmp_path}/cert.pem' has the subject 'CN=dom0-b,O=Example'; NBD's TLS "
        "lets the peer in by its subject, which must be exactly 'CN=dom0-b' (or domain[0].nbd_tls = false, "
        "plaintext, insecure)")
    assert config.parse(tomllib.loads(text), "tls.toml").domains[0].nbd_tls is None
