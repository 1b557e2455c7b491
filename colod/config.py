# -*- test-case-name: tests.test_config -*-
"""colod's configuration: a TOML file read with tomllib and validated in full.

Validation happens before any service starts, and refuses every value that
cannot work: wrong types, numbers out of their documented bounds (``inf`` and
``nan`` included), endpoint strings Twisted cannot build or that cannot carry
the link (colod.endpoints), paths that are the wrong kind of file on this
host, and names or files two keys would share.  Every problem is reported as
one ConfigError whose text names the file, the key (as a dotted path such as
``domain[0].disk[1].quorum_node``) and what is wrong, so that an
administrator can fix the file without reading a traceback.  What only the
daemon's start can tell (a port in use, a state_dir it cannot write) is
colod.startup's.
"""

from __future__ import annotations

import codecs
import enum
import os
import re
import stat
import tomllib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import attrs

from colod import tls as link_tls
from colod.endpoints import client_problem, host_problem, server_problem, tcp_port
from colod.role import Role

DEFAULT_PATH = "/etc/colod/colod.toml"

# QEMU's own node-name rule (block.c): a letter first, then letters, digits,
# '-', '_' or '.', at most 31 characters in all.
_NODE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,30}\Z")
# A domain or disk name becomes part of file and node names: keep it plain.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_IMAGE_FORMATS = ("raw", "qcow2")
#: colod names the QEMU nodes it makes ``colod<disk index>-<part>`` (colod.qemu_args.DiskNodes).
NODE_PREFIX = "colod"
_RESERVED_NODE_NAME = re.compile(rf"{NODE_PREFIX}[0-9]+-")
#: A configuration is a few KiB; more is not one (``--config /dev/zero``).
MAX_FILE_SIZE = 1 << 20
#: The longest path a unix socket can be bound at (sockaddr_un's 108 bytes, less the final NUL).
MAX_SOCKET_PATH = 107
#: twisted.logger's level names, lowest first: ``[log] level`` and ``colodctl log-level``.
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")


class ConfigError(Exception):
    """A configuration problem, worded as the single line an admin sees."""


@attrs.frozen
class PeerConfig:
    """The link between the two colods: the secondary listens, the primary connects."""

    listen: str | None
    connect: str | None
    heartbeat_interval: float
    heartbeat_timeout: float
    # The peer's node_name, checked in the link's handshake (and its certificate's
    # name under TLS); None accepts any, on a plaintext link only.
    node_name: str | None = None
    #: Mutual TLS on the link (``[tls]``); False only when the file says so: plaintext, insecure.
    tls: bool = True


@attrs.frozen
class TLSConfig:
    """This node's TLS files (PEM): the CA both nodes' certificates come from, its certificate and key."""

    ca: str
    certificate: str
    key: str


@attrs.frozen
class NbdTLS:
    """A domain's NBD under TLS with the certificates of ``[tls]`` (colod.devices.nbd_tls).

    The secondary's NBD server lets in only a client whose certificate is the
    CA's and whose subject is ``CN=<the primary's node_name>``; the primary's
    NBD client connects only to a server whose certificate is the CA's and
    names the secondary.  On either node the other is ``peer``.
    """

    #: peer.node_name: the primary checks the secondary's certificate for it (tls-hostname); the
    #: secondary lets in the subject ``CN=<peer>`` (tls-authz).
    peer: str


@attrs.frozen
class QMPConfig:
    """Deadlines for talking to each domain's QEMU."""

    command_timeout: float
    connect_timeout: float


@attrs.frozen
class MetricsConfig:
    """Prometheus metrics over HTTP (colod.metrics): off unless ``listen`` is given."""

    #: A Twisted server endpoint string, or None: no metrics endpoint.
    listen: str | None = None


@attrs.frozen
class LogConfig:
    """What colod logs beside twistd's text log (colod.logs)."""

    #: The lowest level logged (``colodctl log-level`` changes it while colod runs).
    level: str = "info"
    #: A file colod appends JSON lines to (twisted.logger's JSON format), or None: none.
    json: str | None = None


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
    # NBD's TLS; None for plaintext NBD, which the file must ask for (nbd_tls = false), and for a
    # Xen domain (no NBD).  The parser's default is TLS.
    nbd_tls: NbdTLS | None = None


class PolicyName(enum.StrEnum):
    """``[failover] policy``'s values (colod.failover.policy builds each)."""

    FENCE = "fence"
    MANUAL = "manual"
    HEARTBEAT_ONLY = "heartbeat-only"
    ETCD = "etcd"


#: Placeholders a fence command's arguments may hold.
PLACEHOLDERS = ("{domain}", "{peer}")


@attrs.frozen
class FailoverConfig:
    """``[failover]``: what the secondary needs before it runs a lost primary's guest."""

    policy: PolicyName
    #: The fence policy's command, an argv list ({domain} and {peer} filled in); empty otherwise.
    fence_command: tuple[str, ...] = ()
    fence_timeout: float = 60.0
    #: The etcd policy's cluster (``https://host:port`` each, or ``http://``); empty otherwise.
    etcd_endpoints: tuple[str, ...] = ()
    #: Seconds etcd keeps this node's lease after its last renewal.
    etcd_lease_ttl: int = 10
    #: Where the domains' keys live in etcd (colod.failover.ownership).
    etcd_prefix: str = "/colod/"
    #: Seconds one etcd call may take, every endpoint tried.
    etcd_timeout: float = 2.0
    #: For https endpoints, ``[tls]``: etcd's certificate must be its CA's and name the endpoint's host, and
    #: this node's certificate is its client certificate.  None for http (plaintext).
    etcd_tls: TLSConfig | None = None


@attrs.frozen
class Config:
    """The whole, validated configuration of one colod."""

    path: str
    #: A Role however given (``--role``'s text included): comparisons with ``is`` hold.
    role: Role = attrs.field(converter=Role)
    node_name: str
    state_dir: str
    checkpoint_interval: float
    peer: PeerConfig
    qmp: QMPConfig
    domains: tuple[DomainConfig, ...]
    failover: FailoverConfig
    #: None when the file has no ``[tls]`` (allowed only with ``peer.tls = false``).
    tls: TLSConfig | None = None
    #: The control socket's path (colod.control); by default in state_dir.
    control_socket: str = attrs.field(
        default=attrs.Factory(lambda config: default_control_socket(config.state_dir), takes_self=True))
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()

    def with_role(self, role: Role | str) -> Config:
        """This configuration with the role overridden (``--role``), checked again."""
        try:
            changed = attrs.evolve(self, role=role)
        except ValueError:
            raise ConfigError(f"{self.path}: role: must be 'primary' or 'secondary' (got {role!r})") from None
        _check_role_link(changed)
        return changed


def default_control_socket(state_dir: str) -> str:
    """Where the control socket is when ``control_socket`` is not given: ``<state_dir>/control.sock``."""
    return str(PurePosixPath(state_dir) / "control.sock")


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


def _seconds(low: float, high: float) -> Callable[[float], str | None]:
    """A bound in seconds: below it colod would spin a core, above it never act (``inf``, ``1e308``)."""
    return lambda v: None if low <= v <= high else f"must be between {low:g} and {high:g} seconds"


#: The bounds of each duration, in seconds (docs/configuration.md).
CHECKPOINT_INTERVAL = (0.01, 3600.0)
HEARTBEAT_INTERVAL = (0.05, 60.0)
HEARTBEAT_TIMEOUT = (0.1, 600.0)
COMMAND_TIMEOUT = (0.1, 600.0)
CONNECT_TIMEOUT = (0.1, 3600.0)
FENCE_TIMEOUT = (0.1, 3600.0)
ETCD_TIMEOUT = (0.1, 60.0)
#: The etcd lease's TTL, in whole seconds (etcd's own unit): below 2 a renewal every TTL/3 would race its
#: own deadline; above 600 a dead primary's guest would wait ten minutes for its takeover.
ETCD_LEASE_TTL = (2, 600)


def _absolute_path(v: str) -> str | None:
    if "\0" in v:
        return "must not contain a NUL byte"
    return None if PurePosixPath(v).is_absolute() else "must be an absolute path"


def _socket_path(v: str) -> str | None:
    problem = _absolute_path(v)
    if problem is None and len(os.fsencode(v)) > MAX_SOCKET_PATH:
        problem = f"must be at most {MAX_SOCKET_PATH} bytes long, the most a unix socket's path can be"
    return problem


def _node_name(v: str) -> str | None:
    if not _NODE_NAME.match(v):
        return ("must be a QEMU node name: a letter, then letters, digits, '-', '_' or '.', "
                "at most 31 characters")
    if _RESERVED_NODE_NAME.match(v):
        return f"is a node name colod uses itself (names '{NODE_PREFIX}<number>-...' are reserved)"
    return None


def name_problem(v: str) -> str | None:
    """Why ``v`` cannot be a node, domain or disk name; None if it can."""
    if _PLAIN_NAME.match(v):
        return None
    return "must be letters, digits, '-', '_' or '.', starting with a letter or digit, at most 64 characters"


def _port(v: int) -> str | None:
    return None if 1 <= v <= 65535 else "must be a TCP port between 1 and 65535"


def _endpoint(problem: Callable[[str], str | None], what: str) -> Callable[[str], str | None]:
    def check(v: str) -> str | None:
        found = problem(v)
        return None if found is None else f"not a usable Twisted {what} endpoint string: {found}"
    return check


#: Byte-order marks of encodings a TOML file must not be in, and their names.
_FOREIGN_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                 (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))


def load(path: str | Path, role: Role | str | None = None) -> Config:
    """Read and validate the file at ``path``; ``role`` overrides the file's role."""
    path = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_SIZE + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    if len(raw) > MAX_FILE_SIZE:
        raise ConfigError(f"{path}: larger than {MAX_FILE_SIZE >> 20} MiB: not a colod configuration")
    try:
        data = tomllib.loads(_text(raw, path))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: arrays or tables nested too deeply") from None
    config = parse(data, path)
    return config.with_role(role) if role is not None else config


def _text(raw: bytes, path: str) -> str:
    """The file's UTF-8 text (TOML's only encoding); a UTF-8 byte-order mark is dropped."""
    for bom, name in _FOREIGN_BOMS:
        if raw.startswith(bom):
            raise ConfigError(f"{path}: not UTF-8 but {name} (it starts with a {name} byte-order mark); "
                              "save it as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise ConfigError(f"{path}: not UTF-8: byte {raw[e.start]:#04x} at line {line}, column {column} "
                          f"({e.reason}); save it as UTF-8") from None


def parse(data: dict[str, Any], path: str) -> Config:
    """Validate the TOML document ``data`` read from ``path``."""
    top = _Table(path, "", data)
    colod = top.table("colod")
    role = Role(colod.take("role", str, check=_one_of(tuple(r.value for r in Role))))
    node_name = colod.take("node_name", str, check=name_problem)
    state_dir = colod.take("state_dir", str, "/var/lib/colod", check=_absolute_path)
    checkpoint_interval = colod.take("checkpoint_interval", float, 5.0, check=_seconds(*CHECKPOINT_INTERVAL))
    control_socket = colod.take("control_socket", str, default_control_socket(state_dir), check=_socket_path)
    colod.done()

    peer_table = top.table("peer")
    peer = PeerConfig(
        listen=peer_table.take("listen", str, None, check=_endpoint(server_problem, "server")),
        connect=peer_table.take("connect", str, None, check=_endpoint(client_problem, "client")),
        heartbeat_interval=peer_table.take("heartbeat_interval", float, 0.5,
                                           check=_seconds(*HEARTBEAT_INTERVAL)),
        heartbeat_timeout=peer_table.take("heartbeat_timeout", float, 3.0,
                                          check=_seconds(*HEARTBEAT_TIMEOUT)),
        node_name=peer_table.take("node_name", str, None, check=name_problem),
        tls=peer_table.take("tls", bool, True),
    )
    if peer.heartbeat_timeout < 2 * peer.heartbeat_interval:
        raise peer_table.fail(
            "heartbeat_timeout",
            f"must be at least twice heartbeat_interval ({peer.heartbeat_interval:g}), "
            f"or one lost heartbeat looks like a dead peer (got {peer.heartbeat_timeout:g})",
        )
    peer_table.done()

    tls = _tls(top, node_name) if top.has("tls") else None
    if peer.tls:
        _check_tls(path, peer, tls, "peer.tls", "the peer link is mutual TLS unless peer.tls = false")

    qmp_table = top.table("qmp")
    qmp = QMPConfig(
        command_timeout=qmp_table.take("command_timeout", float, 5.0, check=_seconds(*COMMAND_TIMEOUT)),
        connect_timeout=qmp_table.take("connect_timeout", float, 10.0, check=_seconds(*CONNECT_TIMEOUT)),
    )
    qmp_table.done()

    failover = _failover(top, tls)

    metrics_table = top.table("metrics")
    metrics = MetricsConfig(
        listen=metrics_table.take("listen", str, None, check=_endpoint(server_problem, "server")))
    metrics_table.done()

    log_table = top.table("log")
    log = LogConfig(level=log_table.take("level", str, "info", check=_one_of(LOG_LEVELS)),
                    json=log_table.take("json", str, None, check=_absolute_path))
    log_table.done()

    domains = tuple(_domain(t, path, node_name, peer, tls) for t in top.tables("domain"))
    top.done()
    if peer.node_name == node_name:
        raise ConfigError(f"{path}: peer.node_name: is this node's own colod.node_name ({node_name!r}); "
                          "the peer must have a name of its own")
    _check_unique(path, [(f"domain[{i}].name", d.name) for i, d in enumerate(domains)])
    qemu_domains = [(f"domain[{i}]", d) for i, d in enumerate(domains) if d.xen is None]
    _check_unique(path, [(f"{where}.nbd_port", (d.nbd_host, d.nbd_port)) for where, d in qemu_domains])
    _check_unique(path, [(f"domain[{i}].xen.domain", d.xen.domain)
                         for i, d in enumerate(domains) if d.xen is not None])
    listen_port = tcp_port(peer.listen) if peer.listen is not None else None
    for where, domain in qemu_domains:
        if domain.nbd_port == listen_port:
            raise ConfigError(f"{path}: {where}.nbd_port: {listen_port} is also peer.listen's port; on the "
                              "secondary colod and the NBD server cannot both listen on it")
    metrics_port = tcp_port(metrics.listen) if metrics.listen is not None else None
    if metrics_port is not None and metrics_port in {listen_port, *(d.nbd_port for _, d in qemu_domains)}:
        raise ConfigError(f"{path}: metrics.listen: port {metrics_port} is also the peer link's or an "
                          "nbd_port; the metrics endpoint needs a port of its own")
    config = Config(path=path, role=role, node_name=node_name, state_dir=state_dir,
                    checkpoint_interval=checkpoint_interval,
                    peer=peer, qmp=qmp, domains=domains, failover=failover, tls=tls,
                    control_socket=control_socket, metrics=metrics, log=log)
    _check_files(config)
    _check_role_link(config)
    return config


def _failover(top: _Table, tls: TLSConfig | None) -> FailoverConfig:
    """``[failover]``, which must be there: no file gets the unsafe heartbeat-only by default."""
    policies = tuple(p.value for p in PolicyName)
    if not top.has("failover"):
        raise top.fail("failover", f"missing: say how a lost primary is replaced, policy = one of "
                       f"{', '.join(policies)} (docs/engine.md, Failover)")
    table = top.table("failover")
    policy = PolicyName(table.take("policy", str, check=_one_of(policies)))
    keys_of = {PolicyName.FENCE: ("fence_command", "fence_timeout"),
               PolicyName.ETCD: ("etcd_endpoints", "etcd_lease_ttl", "etcd_prefix", "etcd_timeout")}
    for owner, keys in keys_of.items():
        for key in keys:
            if owner is not policy and table.has(key):
                raise table.fail(key, f"is read only with policy = \"{owner.value}\" (policy is "
                                      f"{policy.value!r})")
    failover = FailoverConfig(policy)
    if policy is PolicyName.FENCE:
        command = table.take("fence_command", list, check=_fence_command)
        failover = FailoverConfig(policy, tuple(command),
                                  table.take("fence_timeout", float, 60.0, check=_seconds(*FENCE_TIMEOUT)))
    elif policy is PolicyName.ETCD:
        endpoints: list[str] = table.take("etcd_endpoints", list, check=_etcd_endpoints)
        secure = endpoints[0].startswith("https://")
        if secure and tls is None:
            raise table.fail("etcd_endpoints", "https needs [tls]: etcd's certificate is checked against its "
                                               "CA, and this node's certificate is its client certificate")
        failover = FailoverConfig(
            policy,
            etcd_endpoints=tuple(endpoints),
            etcd_tls=tls if secure else None,
            etcd_lease_ttl=table.take("etcd_lease_ttl", int, 10, check=_whole_seconds(*ETCD_LEASE_TTL)),
            etcd_prefix=table.take("etcd_prefix", str, "/colod/", check=_etcd_prefix),
            etcd_timeout=table.take("etcd_timeout", float, 2.0, check=_seconds(*ETCD_TIMEOUT)))
    table.done()
    return failover


def _fence_command(argv: list[Any]) -> str | None:
    if not argv or not all(isinstance(arg, str) and arg for arg in argv):
        return "must be a list of non-empty strings, the program first"
    if not argv[0].startswith("/"):
        return "must start with the program's absolute path"
    if not os.path.exists(argv[0]):
        return f"{argv[0]} does not exist on this host: no takeover could ever be fenced"
    if not (os.path.isfile(argv[0]) and os.access(argv[0], os.X_OK)):
        return f"{argv[0]} is not an executable file: no takeover could ever be fenced"
    for arg in argv:
        for placeholder in re.findall(r"\{[^}]*\}", arg):
            if placeholder not in PLACEHOLDERS:
                return f"{placeholder} is not a placeholder colod fills in (only {', '.join(PLACEHOLDERS)})"
    return None


def _etcd_endpoints(urls: list[Any]) -> str | None:
    if not urls:
        return "needs at least one etcd member's URL"
    if not all(isinstance(url, str) for url in urls):
        return "must be a list of strings, one https://HOST:PORT URL per etcd member"
    for url in urls:
        scheme, _, rest = url.partition("://")
        host, _, port = rest.rstrip("/").rpartition(":")
        if scheme not in ("https", "http") or not host or "/" in host or not port.isdigit() \
                or not 0 < int(port) < 65536:
            return f"{url}: must be https://HOST:PORT (or http://, plaintext)"
    if len({url.partition("://")[0] for url in urls}) > 1:
        return "mixes https and http: one cluster, one way to reach it"
    return None


def _whole_seconds(low: int, high: int) -> Callable[[int], str | None]:
    return lambda v: None if low <= v <= high else f"must be between {low} and {high} seconds"


def _etcd_prefix(v: str) -> str | None:
    return None if v.startswith("/") and v.endswith("/") else "must begin and end with /"


def _tls(top: _Table, node_name: str) -> TLSConfig:
    """``[tls]``: its files readable, and together a working identity for this node (colod.tls.load)."""
    table = top.table("tls")
    files = TLSConfig(ca=table.take("ca", str, check=_absolute_path),
                      certificate=table.take("certificate", str, check=_absolute_path),
                      key=table.take("key", str, check=_absolute_path))
    table.done()
    problem = link_tls.name_problem(node_name)
    if problem is not None:
        raise ConfigError(f"{top.path}: colod.node_name: {problem} (got {node_name!r})")
    try:
        link_tls.load(files.ca, files.certificate, files.key, node_name)
    except link_tls.TLSFileError as e:
        raise table.fail(e.key, str(e)) from None
    return files


def _check_tls(path: str, peer: PeerConfig, tls: TLSConfig | None, key: str, what: str) -> str:
    """What TLS (the link's, the default, or NBD's, ``what``, asked by ``key``) needs: ``[tls]``, and
    a peer name its certificate must carry, which is returned."""
    if tls is None:
        raise ConfigError(f"{path}: tls: missing required table: {what} (plaintext, insecure); give ca, "
                          "certificate and key (colod make-certs makes a lab's)")
    if peer.node_name is None:
        raise ConfigError(f"{path}: peer.node_name: missing required key: under TLS ({key}) the peer is "
                          "authenticated by the name its certificate carries")
    problem = link_tls.name_problem(peer.node_name)
    if problem is not None:
        raise ConfigError(f"{path}: peer.node_name: {problem} (got {peer.node_name!r})")
    return peer.node_name


#: Keys of a QEMU domain that a Xen domain does not take, and why.
_NOT_FOR_XEN = {
    "qmp_socket": "libxl's QMP socket is found from the domain's id",
    "nbd_host": "Debian's Xen QEMU has no block replication (docs/xen.md)",
    "nbd_port": "Debian's Xen QEMU has no block replication (docs/xen.md)",
    "disk": "Debian's Xen QEMU has no block replication (docs/xen.md)",
    "memory_image": "Xen moves the guest's memory",
    "device_model_socket": "Xen's receiver restores the device model",
    "nbd_tls": "Debian's Xen QEMU has no block replication (docs/xen.md)",
}
#: Where Debian's xen-utils-4.17 puts them.
_SAVE_HELPER = "/usr/lib/xen-4.17/bin/libxl-save-helper"
_XL = "/usr/sbin/xl"


def _domain(table: _Table, path: str, node_name: str, peer: PeerConfig,
            tls: TLSConfig | None) -> DomainConfig:
    name = table.take("name", str, check=name_problem)
    if table.has("xen"):
        return _xen_domain(table, name)
    qmp_socket = table.take("qmp_socket", str, check=_absolute_path)
    nbd_host = table.take("nbd_host", str, check=host_problem)
    nbd_port = table.take("nbd_port", int, check=_port)
    nbd_tls = None
    if table.take("nbd_tls", bool, True):
        nbd_tls = _nbd_tls(table, path, node_name, peer, tls)
    memory_image = table.take("memory_image", str, None, check=_absolute_path)
    device_model_socket = table.take("device_model_socket", str, None, check=_absolute_path)
    disks = tuple(_disk(t) for t in table.tables("disk"))
    table.done()
    where = table.where
    _check_unique(table.path, [(f"{where}.disk[{i}].name", d.name) for i, d in enumerate(disks)])
    # The quorum and export nodes of every disk live in one QEMU on the secondary.
    _check_unique(table.path, [(f"{where}.disk[{i}].{key}", getattr(d, key))
                               for i, d in enumerate(disks) for key in ("quorum_node", "export_name")])
    return DomainConfig(name=name, qmp_socket=qmp_socket, nbd_host=nbd_host, nbd_port=nbd_port,
                        disks=disks, memory_image=memory_image, device_model_socket=device_model_socket,
                        nbd_tls=nbd_tls)


def _nbd_tls(table: _Table, path: str, node_name: str, peer: PeerConfig, tls: TLSConfig | None) -> NbdTLS:
    """NBD under TLS (the default): ``[tls]``, the peer's name, and this node's certificate's subject
    as the peer's NBD server will check it."""
    where = f"{table.where}.nbd_tls"
    peer_name = _check_tls(path, peer, tls, where, f"NBD is TLS unless {where} = false")
    assert tls is not None  # _check_tls refuses a missing [tls]
    problem = link_tls.subject_problem(tls.certificate, node_name)
    if problem is not None:
        raise ConfigError(f"{path}: tls.certificate: {problem} (or {where} = false, plaintext, insecure)")
    return NbdTLS(peer=peer_name)


def _xen_domain(table: _Table, name: str) -> DomainConfig:
    for key, why in _NOT_FOR_XEN.items():
        if table.has(key):
            raise table.fail(key, f"not for a Xen domain ([domain.xen]): {why}")
    xen_table = table.table("xen")
    xen = XenConfig(
        domain=xen_table.take("domain", str, name, check=name_problem),
        xl_config=xen_table.take("xl_config", str, None, check=_absolute_path),
        save_helper=xen_table.take("save_helper", str, _SAVE_HELPER, check=_absolute_path),
        xl=xen_table.take("xl", str, _XL, check=_absolute_path),
    )
    xen_table.done()
    table.done()
    return DomainConfig(name=name, qmp_socket=None, nbd_host=None, nbd_port=None, disks=(), xen=xen)


def _disk(table: _Table) -> DiskConfig:
    disk = DiskConfig(
        name=table.take("name", str, check=name_problem),
        quorum_node=table.take("quorum_node", str, check=_node_name),
        image=table.take("image", str, check=_absolute_path),
        format=table.take("format", str, "raw", check=_one_of(_IMAGE_FORMATS)),
        export_name=table.take("export_name", str, check=_node_name),
        active_image=table.take("active_image", str, check=_absolute_path),
        hidden_image=table.take("hidden_image", str, check=_absolute_path),
    )
    table.done()
    return disk


def _check_unique(path: str, owners: list[tuple[str, object]]) -> None:
    """Refuse two keys with the same value; name the second one (a tuple value is shown by its last part)."""
    seen: dict[object, str] = {}
    for key, value in owners:
        if value in seen:
            shown = value if not isinstance(value, tuple) else value[-1]
            raise ConfigError(f"{path}: {key}: {shown!r} is already used by {seen[value]}")
        seen[value] = key


#: Per domain, the keys naming files colod or QEMU open: no two may be one file, none a directory.
_DOMAIN_FILES = ("qmp_socket", "device_model_socket", "memory_image")
_DISK_FILES = ("image", "active_image", "hidden_image")
_XEN_FILES = ("xl_config", "save_helper", "xl")


def _check_files(config: Config) -> None:
    """Refuse a file two keys would share, a file where a directory must be, and the reverse.

    Paths are compared once symbolic links and ``..`` are resolved; only
    what exists on this host can be checked for its kind.
    """
    files: list[tuple[str, str | None]] = [("colod.control_socket", config.control_socket),
                                           ("log.json", config.log.json)]
    for i, domain in enumerate(config.domains):
        where = f"domain[{i}]"
        files += [(f"{where}.{key}", getattr(domain, key)) for key in _DOMAIN_FILES]
        files += [(f"{where}.disk[{j}].{key}", getattr(disk, key))
                  for j, disk in enumerate(domain.disks) for key in _DISK_FILES]
        if domain.xen is not None:
            files += [(f"{where}.xen.{key}", getattr(domain.xen, key)) for key in _XEN_FILES]
    seen: dict[str, str] = {}
    for key, file in files:
        if file is None:
            continue
        real = os.path.realpath(file)
        if real in seen:
            raise ConfigError(f"{config.path}: {key}: the same file as {seen[real]} ({file!r})")
        seen[real] = key
        if _kind(file) == stat.S_IFDIR:
            raise ConfigError(f"{config.path}: {key}: {file!r} is a directory, not a file")
    directory, found = _existing_ancestor(config.state_dir)
    if found is not None and found != stat.S_IFDIR:
        what = "is" if directory == config.state_dir else f"cannot be made: {directory!r} is"
        raise ConfigError(f"{config.path}: colod.state_dir: {config.state_dir!r} {what} not a directory")


def _kind(path: str) -> int | None:
    """The file type bits of ``path`` (stat.S_IFDIR...), None when it cannot be seen."""
    try:
        return stat.S_IFMT(os.stat(path).st_mode)
    except OSError:
        return None


def _existing_ancestor(path: str) -> tuple[str, int | None]:
    """``path`` or its nearest ancestor that exists, and its file type (None if none can be seen)."""
    while True:
        kind = _kind(path)
        parent = os.path.dirname(path)
        if kind is not None or parent == path:
            return path, kind
        path = parent


def _check_role_link(config: Config) -> None:
    """The secondary needs an address to listen on, the primary one to connect to, and for a Xen
    domain the guest's xl configuration."""
    needed = "listen" if config.role is Role.SECONDARY else "connect"
    if getattr(config.peer, needed) is None:
        why = "the secondary listens for the primary" if needed == "listen" else (
            "the primary connects to the secondary")
        raise ConfigError(
            f"{config.path}: peer.{needed}: missing required key for role '{config.role}' ({why})"
        )
    for index, domain in enumerate(config.domains):
        if config.role is Role.SECONDARY and domain.xen is not None and domain.xen.xl_config is None:
            raise ConfigError(
                f"{config.path}: domain[{index}].xen.xl_config: missing required key for role 'secondary' "
                "(Xen's receiver creates the domain from it)"
            )
