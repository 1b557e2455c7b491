# -*- test-case-name: tests.protocol.test_peer_tls,tests.test_certs -*-
"""Mutual TLS on the peer link (Twisted's TLS over pyOpenSSL, names checked with service_identity).

Both nodes hold a certificate from one CA whose DNS name (subjectAltName) is
their ``node_name`` (``colod make-certs`` makes a lab's, colod.certs).  Each
end of the link trusts that CA and nothing else (not the system's CAs): the
TLS handshake refuses a peer without a certificate from it, and once the
handshake is done the link checks that the peer's certificate names the
configured ``peer.node_name``, as service_identity checks a DNS-ID.  Only
then does the link say its hello (colod.protocol.peer): a stranger learns
neither this node's domains nor anything of its stream.  TLS 1.3 only; no
session resumption (so no early data to replay).

The configuration's files are checked here too, so that a bad one is named
in one line before colod starts (colod.config).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import extract_patterns
from service_identity.hazmat import DNS_ID, DNSPattern, verify_service_identity
from twisted.internet import ssl
from twisted.internet.interfaces import IProtocol, IReactorTime, ISSLTransport
from twisted.internet.protocol import Factory
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from colod.protocol.handshake import CertificateMismatch, NotAuthenticated


class TLSFileError(Exception):
    """A file of ``[tls]`` cannot serve: ``key`` names the configuration key, the message the problem."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key


def name_problem(name: str) -> str | None:
    """Why a certificate's DNS name cannot be ``name`` (it reads as an IP address); None if it can."""
    try:
        DNS_ID(name)
    except ValueError:
        return "cannot be a certificate's DNS name (it reads as an IP address); TLS needs another name"
    return None


def subject_problem(certificate: str, node_name: str) -> str | None:
    """Why ``certificate``'s subject is not ``CN=<node_name>`` alone; None if it is.

    QEMU's NBD server lets its client in by the whole subject, as GnuTLS
    writes it (``tls-authz``, colod.devices.nbd_tls): the peer expects exactly that one.
    """
    try:
        subject = _certificate("certificate", certificate).subject
    except TLSFileError as e:
        return str(e)
    found = subject.rfc4514_string()
    if found != f"CN={node_name}":
        return (f"{certificate!r} has the subject {found!r}; NBD's TLS lets the peer in by its subject, "
                f"which must be exactly 'CN={node_name}'")
    return None


def load(ca: str, certificate: str, key: str, node_name: str) -> ssl.CertificateOptions:
    """The link's TLS settings from the PEM files of ``[tls]``, checked to work for the node ``node_name``.

    @raise TLSFileError: a file cannot be read or parsed, the key is not the
        certificate's, the certificate is not the CA's, has expired, or names
        another node.
    """
    authority = _certificate("ca", ca)
    own = _certificate("certificate", certificate)
    try:
        private: PrivateKeyTypes = serialization.load_pem_private_key(_read("key", key), password=None)
    except (ValueError, TypeError):  # TypeError: it is encrypted
        raise TLSFileError("key", f"{key!r} is not an unencrypted PEM private key") from None
    if _public(private.public_key()) != _public(own.public_key()):
        raise TLSFileError("key", f"{key!r} is not the key of the certificate {certificate!r}")
    store = crypto.X509Store()
    store.add_cert(crypto.X509.from_cryptography(authority))
    try:
        crypto.X509StoreContext(store, crypto.X509.from_cryptography(own)).verify_certificate()
    except crypto.X509StoreContextError as e:
        raise TLSFileError("certificate", f"{certificate!r} does not verify against the CA {ca!r}: "
                                          f"{e}") from None
    if not _names_node(own, node_name):
        raise TLSFileError("certificate", f"{certificate!r} is for {_names(own)}, not for this "
                                          f"node, {node_name!r}")
    # pyOpenSSL takes cryptography's key and certificate (and deprecates its own); Twisted's annotations lag.
    return ssl.CertificateOptions(
        privateKey=cast(crypto.PKey, private), certificate=cast(crypto.X509, own),
        trustRoot=ssl.trustRootFromCertificates([ssl.Certificate(crypto.X509.from_cryptography(authority))]),
        raiseMinimumTo=ssl.TLSVersion.TLSv1_3,
    )


class PeerTLS:
    """Puts the peer link under TLS and authenticates the peer by its certificate's name."""

    def __init__(self, options: ssl.CertificateOptions) -> None:
        self.options = options

    def wrapper(self, client: bool, clock: IReactorTime) -> Callable[[IProtocol], TLSMemoryBIOProtocol]:
        """Wraps a protocol in TLS, as the client (the primary, which dials) or the server.

        The plain TLSMemoryBIOProtocol, not Twisted's default buffering one: the link writes whole
        records, and a lock-step record must leave at once, not at the reactor's next turn.
        """
        factory = TLSMemoryBIOFactory(self.options, client, Factory(), clock)
        return lambda protocol: TLSMemoryBIOProtocol(factory, protocol)

    @staticmethod
    def authenticate(transport: ISSLTransport, peer_node: str) -> None:
        """Accept the peer of ``transport`` (its TLS handshake done, so its certificate is the CA's)
        only if its certificate names ``peer_node``.

        @raise CertificateMismatch: it names another node.
        """
        peer = cast("crypto.X509 | None", transport.getPeerCertificate())
        if peer is None:
            raise CertificateMismatch("the peer sent no certificate")
        certificate = peer.to_cryptography()
        if not _names_node(certificate, peer_node):
            raise CertificateMismatch(f"the peer's certificate is for {_names(certificate)}, "
                                      f"not for {peer_node!r}")

    @staticmethod
    def failed(reason: Failure) -> NotAuthenticated:
        """Why a connection ended before its TLS handshake was done, in one line."""
        if reason.check(SSL.Error):
            arguments = getattr(reason.value, "args", ())
            errors = arguments[0] if arguments else []
            said = "; ".join(str(e[-1]) for e in errors if isinstance(e, tuple)) or str(reason.value)
            return NotAuthenticated(f"TLS handshake failed: {said}")
        return NotAuthenticated(f"the connection ended before the TLS handshake was done "
                                f"({reason.getErrorMessage()})")


def _names_node(certificate: x509.Certificate, node: str) -> bool:
    try:
        verify_service_identity(extract_patterns(certificate), obligatory_ids=[DNS_ID(node)], optional_ids=[])
    except (VerificationError, CertificateError):
        return False
    return True


def _names(certificate: x509.Certificate) -> str:
    """The DNS names ``certificate`` is for, as a message shows them."""
    try:
        names = [p.pattern.decode(errors="replace") for p in extract_patterns(certificate)
                 if isinstance(p, DNSPattern)]
    except CertificateError:
        names = []
    return ", ".join(repr(n) for n in names) if names else "no DNS name"


def _read(key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSFileError(key, f"{path!r} cannot be read: {e.strerror}") from None


def _certificate(key: str, path: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(key, path))
    except ValueError:
        raise TLSFileError(key, f"{path!r} is not a PEM certificate") from None


def _public(key: object) -> bytes:
    """A public key's bytes, to compare two (``public_bytes`` of any of cryptography's key types)."""
    return key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                            serialization.PublicFormat.SubjectPublicKeyInfo)
