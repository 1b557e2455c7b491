# -*- test-case-name: tests.test_config -*-
"""colod's configuration: a TOML file read with tomllib and validated in full.

Validation happens before any service starts.  Every problem is reported as
one ConfigError whose text names the file, the key (as a dotted path such as
``domain[0].disk[1].quorum_node``) and what is wrong, so that an
administrator can fix the file without reading a traceback.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import attrs
from twisted.internet import endpoints

DEFAULT_PATH = "/etc/colod/colod.toml"
ROLES = ("primary", "secondary")

# QEMU's own node-name rule (block.c): a letter first, then letters, digits,
# '-', '_' or '.', at most 31 characters in all.
_NODE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,30}\Z")
# A domain or disk name becomes part of file and node names: keep it plain.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_HOSTNAME = re.compile(r"[A-Za-z0-9_.:-]{1,253}\Z")
_IMAGE_FORMATS = ("raw", "qcow2")


class ConfigError(Exception):
    """A configuration problem, worded as the single line an admin sees."""


@attrs.frozen
class PeerConfig:
    """The link between the two colods: the secondary listens, the primary connects."""

    listen: str | None
    connect: str | None
    heartbeat_interval: float
    heartbeat_timeout: float
    # The peer's node_name, checked in the link's handshake; None accepts any.
    node_name: str | None = None


@attrs.frozen
class QMPConfig:
    """Deadlines for talking to each domain's QEMU."""

    command_timeout: float
    connect_timeout: float


@attrs.frozen
class DiskConfig:
    """One replicated disk of a domain (an xl ``colo`` disk)."""

    name: str
    quorum_node: str
    image: str
    format: str
    export_name: str
    active_image: str
    hidden_image: str


@attrs.frozen
class XenConfig:
    """A real Xen domain, moved by Xen's save helper and kept by its Remus receiver (docs/xen.md)."""

    #: The domain's name in Xen on the primary (``xl list``).
    domain: str
    #: The secondary's xl configuration file of the guest, for ``xl migrate-receive``.
    xl_config: str | None
    save_helper: str
    xl: str


@attrs.frozen
class DomainConfig:
    """One protected guest: its QEMU and its replicated disks, or a Xen domain (``xen``)."""

    name: str
    #: None for a Xen domain: libxl's socket, found from its domid at start.
    qmp_socket: str | None
    nbd_host: str | None
    nbd_port: int | None
    disks: tuple[DiskConfig, ...]
    # Guest RAM as a file-backed image (colod.guest.memory_image), for tests and
    # benchmarks; None for a guest whose memory Xen moves.
    memory_image: str | None = None
    # Secondary without Xen: a QEMU of its own for the device model, waiting with
    # -incoming defer, so that the last checkpoint's device state can be loaded at
    # failover (the disks' QEMU cannot wait so: replication needs active nodes).
    device_model_socket: str | None = None
    xen: XenConfig | None = None


@attrs.frozen
class Config:
    """The whole, validated configuration of one colod."""

    path: str
    role: str
    node_name: str
    state_dir: str
    control_socket: str
    checkpoint_interval: float
    peer: PeerConfig
    qmp: QMPConfig
    domains: tuple[DomainConfig, ...]

    def with_role(self, role: str) -> Config:
        """This configuration with the role overridden (``--role``), checked again."""
        if role not in ROLES:
            raise ConfigError(f"{self.path}: role: must be 'primary' or 'secondary' (got {role!r})")
        changed = attrs.evolve(self, role=role)
        _check_role_link(changed)
        return changed


_T = TypeVar("_T")
_REQUIRED = object()


class _Table:
    """One TOML table being read: takes keys with checks, then refuses leftovers."""

    def __init__(self, path: str, where: str, data: dict[str, Any]) -> None:
        self.path = path
        self.where = where
        self._data = dict(data)

    def _key(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}: {self._key(key)}: {problem}")

    def take(
        self,
        key: str,
        kind: type[_T],
        default: Any = _REQUIRED,
        check: Callable[[_T], str | None] | None = None,
    ) -> _T:
        """Remove and return ``key``, checking its type and, optionally, its value.

        ``check`` returns None for a good value or the reason it is bad.
        """
        if key not in self._data:
            if default is _REQUIRED:
                raise self.fail(key, "missing required key")
            return default
        value = self._data.pop(key)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(key, f"must be {_TYPE_NAMES[kind]} (got {_toml_type(value)} {value!r})")
        if check is not None:
            problem = check(value)
            if problem is not None:
                raise self.fail(key, f"{problem} (got {value!r})")
        return value

    def table(self, key: str) -> _Table:
        """The sub-table ``key`` (an empty one when absent)."""
        data = self.take(key, dict, {})
        return _Table(self.path, self._key(key), data)

    def tables(self, key: str) -> list[_Table]:
        """The array of tables ``key`` (``[[key]]``), which must be present."""
        items = self.take(key, list, check=lambda v: None if v else "needs at least one entry")
        found = []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise self.fail(f"{key}[{index}]", f"must be a table (got {_toml_type(item)})")
            found.append(_Table(self.path, f"{self._key(key)}[{index}]", item))
        return found

    def has(self, key: str) -> bool:
        return key in self._data

    def done(self) -> None:
        """Refuse any key nobody took: a typo must not be silently ignored."""
        if self._data:
            key = sorted(self._data)[0]
            raise self.fail(key, "unknown key")


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               dict: "a table", list: "an array"}


def _toml_type(value: object) -> str:
    for kind, name in (
        (bool, "boolean"), (int, "integer"), (float, "float"), (str, "string"),
        (dict, "table"), (list, "array"),
    ):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str | None]:
    return lambda v: None if v in choices else "must be one of " + ", ".join(repr(c) for c in choices)


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _absolute_path(v: str) -> str | None:
    return None if PurePosixPath(v).is_absolute() else "must be an absolute path"


def _node_name(v: str) -> str | None:
    if _NODE_NAME.match(v):
        return None
    return "must be a QEMU node name: a letter, then letters, digits, '-', '_' or '.', at most 31 characters"


def _plain_name(v: str) -> str | None:
    if _PLAIN_NAME.match(v):
        return None
    return "must be letters, digits, '-', '_' or '.', starting with a letter or digit, at most 64 characters"


def _port(v: int) -> str | None:
    return None if 1 <= v <= 65535 else "must be a TCP port between 1 and 65535"


def _hostname(v: str) -> str | None:
    return None if _HOSTNAME.match(v) else "must be a host name or IP address"


class _NoReactor:
    """Stands in for a reactor while endpoint strings are only parsed, never used."""


def _server_endpoint(v: str) -> str | None:
    try:
        endpoints.serverFromString(_NoReactor(), v)
    except (ValueError, TypeError, KeyError) as e:
        return f"is not a Twisted server endpoint string ({e})"
    return None


def _client_endpoint(v: str) -> str | None:
    try:
        endpoints.clientFromString(_NoReactor(), v)
    except (ValueError, TypeError, KeyError) as e:
        return f"is not a Twisted client endpoint string ({e})"
    return None


def load(path: str | Path, role: str | None = None) -> Config:
    """Read and validate the file at ``path``; ``role`` overrides the file's role."""
    path = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    config = parse(data, path)
    return config.with_role(role) if role is not None else config


def parse(data: dict[str, Any], path: str) -> Config:
    """Validate the TOML document ``data`` read from ``path``."""
    top = _Table(path, "", data)
    colod = top.table("colod")
    role = colod.take("role", str, check=_one_of(ROLES))
    node_name = colod.take("node_name", str, check=_plain_name)
    state_dir = colod.take("state_dir", str, "/var/lib/colod", check=_absolute_path)
    control_socket = colod.take("control_socket", str, "/run/colod/control.sock", check=_absolute_path)
    checkpoint_interval = colod.take("checkpoint_interval", float, 5.0, check=_positive)
    colod.done()

    peer_table = top.table("peer")
    peer = PeerConfig(
        listen=peer_table.take("listen", str, None, check=_server_endpoint),
        connect=peer_table.take("connect", str, None, check=_client_endpoint),
        heartbeat_interval=peer_table.take("heartbeat_interval", float, 0.5, check=_positive),
        heartbeat_timeout=peer_table.take("heartbeat_timeout", float, 3.0, check=_positive),
        node_name=peer_table.take("node_name", str, None, check=_plain_name),
    )
    if peer.heartbeat_timeout < 2 * peer.heartbeat_interval:
        raise peer_table.fail(
            "heartbeat_timeout",
            f"must be at least twice heartbeat_interval ({peer.heartbeat_interval:g}), "
            f"or one lost heartbeat looks like a dead peer (got {peer.heartbeat_timeout:g})",
        )
    peer_table.done()

    qmp_table = top.table("qmp")
    qmp = QMPConfig(
        command_timeout=qmp_table.take("command_timeout", float, 5.0, check=_positive),
        connect_timeout=qmp_table.take("connect_timeout", float, 10.0, check=_positive),
    )
    qmp_table.done()

    domains = tuple(_domain(t) for t in top.tables("domain"))
    top.done()
    _check_unique(path, "domain", "name", [(f"domain[{i}]", d.name) for i, d in enumerate(domains)])
    qemu_domains = [(f"domain[{i}]", d) for i, d in enumerate(domains) if d.xen is None]
    _check_unique(path, "domain", "qmp_socket", [(where, d.qmp_socket) for where, d in qemu_domains])
    _check_unique(path, "domain", "nbd_port",
                  [(where, (d.nbd_host, d.nbd_port)) for where, d in qemu_domains])
    _check_unique(path, "domain", "xen.domain",
                  [(f"domain[{i}]", d.xen.domain) for i, d in enumerate(domains) if d.xen is not None])
    config = Config(path=path, role=role, node_name=node_name, state_dir=state_dir,
                    control_socket=control_socket, checkpoint_interval=checkpoint_interval,
                    peer=peer, qmp=qmp, domains=domains)
    _check_role_link(config)
    return config


#: Keys of a QEMU domain that a Xen domain does not take, and why.
_NOT_FOR_XEN = {
    "qmp_socket": "libxl's QMP socket is found from the domain's id",
    "nbd_host": "Debian's Xen QEMU has no block replication (docs/xen.md)",
    "nbd_port": "Debian's Xen QEMU has no block replication (docs/xen.md)",
    "disk": "Debian's Xen QEMU has no block replication (docs/xen.md)",
    "memory_image": "Xen moves the guest's memory",
    "device_model_socket": "Xen's receiver restores the device model",
}
#: Where Debian's xen-utils-4.17 puts them.
_SAVE_HELPER = "/usr/lib/xen-4.17/bin/libxl-save-helper"
_XL = "/usr/sbin/xl"


def _domain(table: _Table) -> DomainConfig:
    name = table.take("name", str, check=_plain_name)
    if table.has("xen"):
        return _xen_domain(table, name)
    qmp_socket = table.take("qmp_socket", str, check=_absolute_path)
    nbd_host = table.take("nbd_host", str, check=_hostname)
    nbd_port = table.take("nbd_port", int, check=_port)
    memory_image = table.take("memory_image", str, None, check=_absolute_path)
    device_model_socket = table.take("device_model_socket", str, None, check=_absolute_path)
    disks = tuple(_disk(t) for t in table.tables("disk"))
    table.done()
    where = table.where
    for key in ("name", "quorum_node", "export_name"):
        _check_unique(table.path, f"{where}.disk", key,
                      [(f"{where}.disk[{i}]", getattr(d, key)) for i, d in enumerate(disks)])
    images = [(f"{where}.disk[{i}]", key, getattr(d, key))
              for i, d in enumerate(disks) for key in ("image", "active_image", "hidden_image")]
    seen: dict[str, str] = {}
    for owner, key, image in images:
        if image in seen:
            raise ConfigError(f"{table.path}: {owner}.{key}: the same file as {seen[image]} ({image!r})")
        seen[image] = f"{owner}.{key}"
    return DomainConfig(name=name, qmp_socket=qmp_socket, nbd_host=nbd_host, nbd_port=nbd_port,
                        disks=disks, memory_image=memory_image, device_model_socket=device_model_socket)


def _xen_domain(table: _Table, name: str) -> DomainConfig:
    for key, why in _NOT_FOR_XEN.items():
        if table.has(key):
            raise table.fail(key, f"not for a Xen domain ([domain.xen]): {why}")
    xen_table = table.table("xen")
    xen = XenConfig(
        domain=xen_table.take("domain", str, name, check=_plain_name),
        xl_config=xen_table.take("xl_config", str, None, check=_absolute_path),
        save_helper=xen_table.take("save_helper", str, _SAVE_HELPER, check=_absolute_path),
        xl=xen_table.take("xl", str, _XL, check=_absolute_path),
    )
    xen_table.done()
    table.done()
    return DomainConfig(name=name, qmp_socket=None, nbd_host=None, nbd_port=None, disks=(), xen=xen)


def _disk(table: _Table) -> DiskConfig:
    disk = DiskConfig(
        name=table.take("name", str, check=_plain_name),
        quorum_node=table.take("quorum_node", str, check=_node_name),
        image=table.take("image", str, check=_absolute_path),
        format=table.take("format", str, "raw", check=_one_of(_IMAGE_FORMATS)),
        export_name=table.take("export_name", str, check=_node_name),
        active_image=table.take("active_image", str, check=_absolute_path),
        hidden_image=table.take("hidden_image", str, check=_absolute_path),
    )
    table.done()
    return disk


def _check_unique(path: str, table: str, key: str, owners: list[tuple[str, object]]) -> None:
    """Refuse two entries of ``table`` that share ``key``; name the second one."""
    seen: dict[object, str] = {}
    for owner, value in owners:
        if value in seen:
            shown = value if not isinstance(value, tuple) else value[1]
            raise ConfigError(f"{path}: {owner}.{key}: {shown!r} is already used by {seen[value]}")
        seen[value] = owner


def _check_role_link(config: Config) -> None:
    """The secondary needs an address to listen on, the primary one to connect to, and for a Xen
    domain the guest's xl configuration."""
    needed = "listen" if config.role == "secondary" else "connect"
    if getattr(config.peer, needed) is None:
        why = "the secondary listens for the primary" if needed == "listen" else (
            "the primary connects to the secondary")
        raise ConfigError(
            f"{config.path}: peer.{needed}: missing required key for role {config.role!r} ({why})"
        )
    for index, domain in enumerate(config.domains):
        if config.role == "secondary" and domain.xen is not None and domain.xen.xl_config is None:
            raise ConfigError(
                f"{config.path}: domain[{index}].xen.xl_config: missing required key for role 'secondary' "
                "(Xen's receiver creates the domain from it)"
            )
