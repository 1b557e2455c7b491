# -*- test-case-name: tests.devices.test_nbd_tls,tests.devices.test_cli -*-
"""NBD under TLS: the QEMU objects it needs, their files, and what the disks' QMP setup adds.

Anyone who reaches a secondary's plaintext NBD server can write its disks.
So by default (``nbd_tls``, colod.config) both QEMUs get a ``tls-creds-x509``
object from the node's ``[tls]`` files (``colod qemu-args`` prints it), the
secondary's NBD server requires TLS and a client certificate from the CA and
lets in only the subject ``CN=<the primary's node_name>`` (an ``authz-simple``
object, GnuTLS's form of the subject), and the primary's NBD client checks
that the server's certificate names the secondary (``tls-hostname``).

QEMU takes the files from one directory under fixed names
(``ca-cert.pem``, ``server-*.pem``, ``client-*.pem``) and reads them when the
object is made, at its start: ``colod qemu-args`` lays that directory out in
``<state_dir>/qemu-tls`` as links to the ``[tls]`` files, the key's mode left
as it is (the operator's: root only).  The disks' setup checks that its QEMU
was started with the objects colod expects before it uses them, because QEMU
looks an authorization object up only when a client comes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from colod.config import Config, ConfigError, DomainConfig, NbdTLS
from colod.devices.errors import DeviceError
from colod.qmp import QMP, QMPCommandError
from colod.role import Role

#: The QEMU object ids colod's NBD TLS uses.
CREDS = "colod-nbd-tls"
AUTHZ = "colod-nbd-authz"
#: The directory under state_dir where QEMU finds the node's TLS files.
DIRECTORY = "qemu-tls"
#: QEMU's file names (tls-creds-x509), and which key of [tls] each one is.
_FILES = {"ca-cert.pem": "ca", "server-cert.pem": "certificate", "server-key.pem": "key",
          "client-cert.pem": "certificate", "client-key.pem": "key"}


def _endpoint(role: Role) -> str:
    """The secondary serves NBD; the primary is its client."""
    return "server" if role is Role.SECONDARY else "client"


def client_subject(tls: NbdTLS) -> str:
    """The one client subject the secondary's NBD server lets in: the primary's (GnuTLS's form)."""
    return f"CN={tls.peer}"


def credentials_dir(config: Config) -> Path:
    return Path(config.state_dir) / DIRECTORY


def lay_out(config: Config) -> Path:
    """Make ``<state_dir>/qemu-tls`` (mode 0700) hold QEMU's names for the ``[tls]`` files; returns it.

    Links, replaced atomically where they point elsewhere, so that running this again is harmless.

    @raise ConfigError: the directory or a link cannot be made (one line naming it).
    """
    assert config.tls is not None  # the configuration requires [tls] for NBD's TLS
    directory = credentials_dir(config)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)
        for name, key in _FILES.items():
            target, link = getattr(config.tls, key), directory / name
            if os.path.islink(link) and os.readlink(link) == target:
                continue
            fresh = directory / f".{name}.new"
            fresh.unlink(missing_ok=True)
            fresh.symlink_to(target)
            os.replace(fresh, link)
    except OSError as e:
        raise ConfigError(f"{config.path}: colod.state_dir: cannot lay out QEMU's NBD TLS files in "
                          f"{directory}: {e.strerror}") from None
    return directory


def qemu_objects(config: Config, domain: DomainConfig) -> list[dict[str, Any]]:
    """The ``-object``s of ``domain``'s QEMU on this node's role; none for plaintext NBD."""
    if domain.nbd_tls is None:
        return []
    objects: list[dict[str, Any]] = [{
        "qom-type": "tls-creds-x509", "id": CREDS, "dir": str(credentials_dir(config)),
        "endpoint": _endpoint(config.role), "verify-peer": True}]
    if config.role is Role.SECONDARY:
        objects.append({"qom-type": "authz-simple", "id": AUTHZ, "identity": client_subject(domain.nbd_tls)})
    return objects


def server_arguments(domain: DomainConfig) -> dict[str, str]:
    """What ``nbd-server-start`` adds on the secondary."""
    return {} if domain.nbd_tls is None else {"tls-creds": CREDS, "tls-authz": AUTHZ}


def client_arguments(domain: DomainConfig) -> dict[str, str]:
    """What the primary's NBD client node adds: the server must be the CA's certificate for the secondary."""
    return {} if domain.nbd_tls is None else {"tls-creds": CREDS, "tls-hostname": domain.nbd_tls.peer}


class MissingTLSObjects(DeviceError):
    """The QEMU was not started with the NBD TLS objects colod expects (colod qemu-args)."""


async def check_objects(qmp: QMP, domain: DomainConfig, role: Role) -> None:
    """Refuse by name a QEMU without the objects ``colod qemu-args`` prints for ``role``, or with others.

    @raise MissingTLSObjects: an object is missing or is not what this configuration makes.
    """
    if domain.nbd_tls is None:
        return
    expected = {(CREDS, "endpoint"): _endpoint(role)}
    if role is Role.SECONDARY:
        expected[AUTHZ, "identity"] = client_subject(domain.nbd_tls)
    for (name, prop), wanted in expected.items():
        try:
            found = await qmp.execute("qom-get", {"path": f"/objects/{name}", "property": prop})
        except QMPCommandError as e:
            raise MissingTLSObjects(
                f"NBD is TLS (domain {domain.name}), and QEMU has no object {name!r} ({e.description}): "
                "start it with the arguments `colod qemu-args` prints") from None
        if found != wanted:
            raise MissingTLSObjects(
                f"QEMU's object {name!r} has {prop} {found!r}, not {wanted!r}: start it with the arguments "
                "`colod qemu-args` prints for this configuration")
