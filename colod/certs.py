# -*- test-case-name: tests.test_certs -*-
"""``colod make-certs``: a CA and node certificates for a lab, with ``cryptography``.

A production pair takes its certificates from the site's own CA; a lab (the
demo, the tests, a first try) needs one made on the spot.  Each node gets a
directory laid out as QEMU's ``tls-creds-x509,dir=...`` wants it
(``ca-cert.pem``, ``server-cert.pem``, ``server-key.pem``, ``client-cert.pem``,
``client-key.pem``), so that the same files can serve NBD's TLS: the node's one
certificate serves both ends (both extended key usages), the ``client-*``
names being links to the ``server-*`` files.  The certificate names the node
as its DNS name (subjectAltName) and common name: the peer checks the DNS name
against its ``peer.node_name`` (colod.tls); QEMU's ``tls-authz`` matches the
subject.  The CA's key stays outside the node directories, which can be
copied to their hosts as they are.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca-cert.pem"
CA_KEY = "ca-key.pem"
#: A node directory's files (QEMU's names): this node's certificate and key serve as server and client.
CERT = "server-cert.pem"
KEY = "server-key.pem"
_CLIENT_LINKS = {"client-cert.pem": CERT, "client-key.pem": KEY}
#: How long a lab's certificates are valid, by default.
DAYS = 365


class CertError(Exception):
    """The certificates cannot be made as asked; says why in one line."""


def make(directory: Path, nodes: list[str], days: int = DAYS) -> dict[str, Path]:
    """Make (or reuse) the CA in ``directory`` and a certificate for each node; returns each node's directory.

    @raise CertError: a node's directory exists already, or only half of a CA does.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for node in nodes:
        if (directory / node).exists():
            raise CertError(f"{directory / node} exists; remove it to make the node's certificate anew")
    ca_key, ca_cert = _ca(directory, days)
    made = {}
    for node in nodes:
        made[node] = node_dir = directory / node
        node_dir.mkdir()
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node)])
        builder = _builder(name, ca_cert.subject, key, days).add_extension(
            x509.SubjectAlternativeName([x509.DNSName(node)]), critical=False,
        ).add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        certificate = builder.sign(ca_key, hashes.SHA256())
        _write(node_dir / CERT, certificate.public_bytes(serialization.Encoding.PEM))
        _write_key(node_dir / KEY, key)
        _write(node_dir / CA_CERT, ca_cert.public_bytes(serialization.Encoding.PEM))
        for link, target in _CLIENT_LINKS.items():
            os.symlink(target, node_dir / link)
    return made


def _ca(directory: Path, days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The CA in ``directory``, made if it has none."""
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if cert_path.exists() != key_path.exists():
        raise CertError(f"{directory} holds only one of {CA_CERT} and {CA_KEY}; give both or neither")
    if cert_path.exists():
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except (OSError, ValueError, TypeError) as e:
            raise CertError(f"cannot reuse the CA in {directory}: {e}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertError(f"{key_path}: not an EC key (colod make-certs made none other)")
        return key, cert
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"colod lab CA ({directory.name})")])
    cert = _builder(name, name, key, days).add_extension(
        x509.BasicConstraints(ca=True, path_length=0), critical=True,
    ).add_extension(
        x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                      data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                      encipher_only=False, decipher_only=False), critical=True,
    ).sign(key, hashes.SHA256())
    _write_key(key_path, key)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey,
             days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))  # a peer's clock a little behind
            .not_valid_after(now + datetime.timedelta(days=days)))


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "wb") as f:
        f.write(data)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """A private key, readable by its owner only (created so: never readable by others, not even briefly)."""
    _write(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()), mode=0o600)
