"""``colod make-certs``: a lab's CA and node certificates that colod.tls takes, and only for their node."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from colod import certs, tls

COLOD = str(Path(sys.executable).with_name("colod"))


def make_certs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([COLOD, "make-certs", *args], capture_output=True, text=True, timeout=60)


def test_makes_a_ca_and_node_directories_for_colod_and_qemu(tmp_path: Path) -> None:
    """Each node's directory has QEMU's tls-creds-x509 names; its files serve colod's [tls] for that node
    only; private keys are the owner's alone; the printed [tls] keys name them."""
    done = make_certs("--dir", str(tmp_path), "host-a", "host-b")
    assert (done.returncode, done.stderr) == (0, "")
    for node in ("host-a", "host-b"):
        directory = tmp_path / node
        assert sorted(p.name for p in directory.iterdir()) == [
            "ca-cert.pem", "client-cert.pem", "client-key.pem", "server-cert.pem", "server-key.pem"]
        assert (directory / "client-key.pem").resolve() == directory / "server-key.pem"
        assert stat.S_IMODE((directory / "server-key.pem").stat().st_mode) == 0o600
        assert f'certificate = "{directory}/server-cert.pem"' in done.stdout
        tls.load(*(str(directory / name) for name in ("ca-cert.pem", "server-cert.pem", "server-key.pem")),
                 node)
    assert stat.S_IMODE((tmp_path / "ca-key.pem").stat().st_mode) == 0o600
    with pytest.raises(tls.TLSFileError, match="is for 'host-a', not for this node, 'host-b'"):
        files = tmp_path / "host-a"
        tls.load(str(files / "ca-cert.pem"), str(files / "server-cert.pem"), str(files / "server-key.pem"),
                 "host-b")


def test_adds_nodes_to_an_existing_ca(tmp_path: Path) -> None:
    """A second run reuses the CA in the directory, so that a new node's certificate verifies with it."""
    assert make_certs("--dir", str(tmp_path), "host-a").returncode == 0
    ca = (tmp_path / certs.CA_CERT).read_bytes()
    assert make_certs("--dir", str(tmp_path), "host-c").returncode == 0
    assert (tmp_path / certs.CA_CERT).read_bytes() == ca == (tmp_path / "host-c" / certs.CA_CERT).read_bytes()
    tls.load(str(tmp_path / "host-a" / certs.CA_CERT), str(tmp_path / "host-c" / certs.CERT),
             str(tmp_path / "host-c" / certs.KEY), "host-c")


@pytest.mark.parametrize(("args", "status", "message"), [
    (["host-a"], 1, "{dir}/host-a exists; remove it to make the node's certificate anew"),
    (["10.0.0.1"], 2, "node name '10.0.0.1' cannot be a certificate's DNS name"),
    (["host a"], 2, "node name 'host a' must be letters, digits"),
])
def test_refuses_in_one_line(tmp_path: Path, args: list[str], status: int, message: str) -> None:
    """A node made already, a name that cannot be a DNS name or a node name: refused, nothing overwritten."""
    assert make_certs("--dir", str(tmp_path), "host-a").returncode == 0
    key = (tmp_path / "host-a" / certs.KEY).read_bytes()
    done = make_certs("--dir", str(tmp_path), *args)
    assert done.returncode == status
    assert message.format(dir=tmp_path) in done.stderr.splitlines()[-1]
    assert (tmp_path / "host-a" / certs.KEY).read_bytes() == key


def test_a_half_ca_is_refused(tmp_path: Path) -> None:
    (tmp_path / certs.CA_CERT).write_text("")
    done = make_certs("--dir", str(tmp_path), "host-a")
    assert (done.returncode, done.stderr) == (
        1, f"colod: error: {tmp_path} holds only one of ca-cert.pem and ca-key.pem; give both or neither\n")

