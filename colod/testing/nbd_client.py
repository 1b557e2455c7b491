# -*- test-case-name: tests.devices.test_nbd_tls,tests.test_demo -*-
"""A stranger's NBD client, for the demo and the tests: ``qemu-img info`` on an export, plain or under TLS.

It is QEMU's own client, as anyone on the network could run it, with the
files it is given: no certificate, a certificate of the right CA for another
node, one of another CA.  The secondary's real QEMU must refuse all of them
and let in only the primary's certificate (colod.devices.nbd_tls).
"""

from __future__ import annotations

import socket
import ssl
import struct
import subprocess
from pathlib import Path

import attrs

#: Seconds one attempt may take (a refusal comes within the TLS handshake).
TIMEOUT = 30.0


@attrs.frozen
class Attempt:
    """What one client got: ``ok`` when it opened the export; what qemu-img printed."""

    ok: bool
    output: str


def client_files(directory: Path, ca: Path, certificate: Path | None = None, key: Path | None = None) -> Path:
    """``directory`` laid out as QEMU's tls-creds-x509 client reads it: trust ``ca``, show ``certificate``."""
    directory.mkdir(parents=True)
    (directory / "ca-cert.pem").symlink_to(ca)
    if certificate is not None and key is not None:
        (directory / "client-cert.pem").symlink_to(certificate)
        (directory / "client-key.pem").symlink_to(key)
    return directory


def open_export(port: int, export: str, credentials: Path | None = None, hostname: str | None = None,
                host: str = "127.0.0.1") -> Attempt:
    """Open ``export`` at ``host``:``port``: plaintext, or under TLS with the client files in ``credentials``
    (checking that the server's certificate names ``hostname``; its own certificate sent unchecked,
    as a stranger's would be)."""
    if credentials is None:
        command = ["qemu-img", "info", f"nbd://{host}:{port}/{export}"]
    else:
        options = f"driver=nbd,host={host},port={port},export={export},tls-creds=stranger"
        if hostname is not None:
            options += f",tls-hostname={hostname}"
        command = ["qemu-img", "info", "--object",
                   f"tls-creds-x509,id=stranger,dir={credentials},endpoint=client,verify-peer=on,sanity-check=off",
                   "--image-opts", options]
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    return Attempt(done.returncode == 0, (done.stdout + done.stderr).strip())


#: The NBD protocol's numbers (NBD's doc/proto.md) a STARTTLS client needs.
_NBDMAGIC, _IHAVEOPT, _REPLY_MAGIC = b"NBDMAGIC", b"IHAVEOPT", 0x3E889045565A9
_FIXED_NEWSTYLE, _NO_ZEROES = 1, 2
_OPT_STARTTLS, _OPT_LIST, _REP_ACK = 5, 3, 1


def force_certificate(port: int, ca: Path, certificate: Path, key: Path, hostname: str,
                      host: str = "127.0.0.1") -> Attempt:
    """Speak NBD up to STARTTLS, then TLS sending ``certificate`` whatever CAs the server asks for (GnuTLS,
    qemu-img's, sends none of another CA's), then ask for the export list: ``ok`` if it comes."""
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(certificate), str(key))
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as raw:
            greeting = _read(raw, 18)
            if greeting[:16] != _NBDMAGIC + _IHAVEOPT:
                return Attempt(False, f"not an NBD newstyle server: {greeting!r}")
            raw.sendall(struct.pack(">I", _FIXED_NEWSTYLE | _NO_ZEROES))
            raw.sendall(_IHAVEOPT + struct.pack(">II", _OPT_STARTTLS, 0))
            magic, _option, reply, length = struct.unpack(">QIII", _read(raw, 20))
            _read(raw, length)
            if (magic, reply) != (_REPLY_MAGIC, _REP_ACK):
                return Attempt(False, f"STARTTLS refused (reply {reply:#x})")
            with context.wrap_socket(raw, server_hostname=hostname) as tls:
                tls.sendall(_IHAVEOPT + struct.pack(">II", _OPT_LIST, 0))
                magic, _option, reply, length = struct.unpack(">QIII", _read(tls, 20))
                return Attempt(magic == _REPLY_MAGIC, f"reply {reply:#x} to the export list")
    except (OSError, EOFError) as e:  # ssl.SSLError is an OSError
        return Attempt(False, f"{type(e).__name__}: {e}")


def _read(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise EOFError(f"the server closed the connection after {len(data)} of {count} bytes")
        data += chunk
    return data
