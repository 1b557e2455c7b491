# -*- test-case-name: tests.engine,tests.test_demo -*-
"""A primary and a secondary colod on this one machine: the lab behind ``make demo`` and the engine tests.

Each node has its own directory with its disk (filled with a known byte), its
overlays, its memory image, its configuration, a QEMU started from what
``colod qemu-args`` prints, and a ``twistd colod`` daemon.  The two daemons link
over mutual TLS with certificates ``colod make-certs`` made for the lab, and the
primary's QEMU writes to the secondary's over NBD under TLS with the same ones.  The guest writer
(colod.testing.writer) plays the guest on the primary, so any node's disk and
memory image can be checked against what it had done.

The lab sets up, starts, kills and looks; close() reaps every process it
started.  Every wait has a deadline and is a Poll: Poll.wait() blocks (the
demo), Poll.attempt() lets a caller wait on its reactor instead (the tests,
whose link proxy must keep running meanwhile).  Processes are started with a
parent-death signal, which Linux sends when the starting *thread* ends: start
them from the main thread.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any, Generic, TypeVar

import attrs

from colod import certs
from colod.config import TLSConfig
from colod.guest.memory_image import MemoryImage
from colod.protocol.wire import PAGE_SIZE
from colod.testing.etcd import TLS_HOST, EtcdServer
from colod.testing.processes import free_port, terminate
from colod.testing.qemu_process import QemuProcess, _die_with_parent
from colod.testing.qmp_blocking import QMPClient, QMPError
from colod.testing.writer import Header, Verdict, verify

BIN = Path(sys.executable).parent
MiB = 1 << 20
#: The byte every disk starts filled with, on both nodes.
DISK_BASE = 0x11
#: The guest disk's node on both sides (the writer writes through it on the primary).
QUORUM_NODE = "colo-disk0"
#: Seconds between two looks of a Poll.
POLL_INTERVAL = 0.02
#: Seconds one QMP command of the lab's own monitor may take.
QMP_TIMEOUT = 5.0
#: Lines of a daemon's log quoted when a wait on it fails.
LOG_TAIL = 15

T = TypeVar("T")


class LabError(Exception):
    """Something the lab waited for did not happen in time, or a process it needs died."""


@attrs.define
class Poll(Generic[T]):
    """A condition to wait for, with a deadline counted from ``started``."""

    check: Callable[[], T | None]
    timeout: float
    what: str
    #: What to add to the failure message (e.g. the last status seen and a log tail).
    context: Callable[[], str] = lambda: ""
    started: float = attrs.field(factory=time.monotonic)

    def attempt(self) -> T | None:
        """The condition's value once it holds, None before.  @raise LabError: past the deadline."""
        found = self.check()
        if found is None and time.monotonic() - self.started > self.timeout:
            raise LabError(f"{self.what}: not within {self.timeout:g} s{self.context()}")
        return found

    def wait(self) -> T:
        """Block until the condition holds."""
        while (found := self.attempt()) is None:
            time.sleep(POLL_INTERVAL)
        return found


def listening(port: int) -> bool:
    """Whether something listens on TCP ``port``; read from /proc, so no probe connection disturbs it."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        _, local, _, state, *_ = line.split()
        if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
            return True
    return False


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"\n({path.name} does not exist)"
    return "".join(f"\n  {path.name}: {line}" for line in lines[-LOG_TAIL:])


def _kill(process: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL, at once, and reap."""
    if process is not None:
        if process.poll() is None:
            process.kill()
        process.wait()


class _File:
    """A file in a node's directory, named once: ``node.disk`` is ``node.dir / "disk.raw"``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, node: Node, owner: type[Node]) -> Path:
        return node.dir / self.name


def _start(workdir: Path, name: str, args: list[str], monitors: dict[str, Path]) -> QemuProcess:
    """A started QEMU (machine ``pc``) with ``args`` and a QMP monitor at each of ``monitors``."""
    for monitor, path in monitors.items():
        args = [*args, "-chardev", f"socket,id={monitor},path={path},server=on,wait=off",
                "-mon", f"chardev={monitor},mode=control"]
    return QemuProcess(workdir, name, args, machine="pc").start()


def _signal_stopped(qemu: QemuProcess) -> bool:
    """Whether ``qemu``'s process is stopped by a signal (state T in /proc).  @raise OSError: it is gone."""
    with open(f"/proc/{qemu.pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] in ("T", "t")


def _query(monitor: Path, command: str) -> Any:
    with closing(QMPClient(str(monitor), QMP_TIMEOUT)) as qmp:
        return qmp.execute(command)


@attrs.define
class Node:
    """One node: its files, its QEMU and its daemon.  ``role`` is the role it starts in."""

    role: str
    name: str
    dir: Path
    domain: str
    #: On tmpfs, as the example configuration advises: the overlays, which every checkpoint empties.
    fast_dir: Path
    qemu: QemuProcess | None = None
    #: The secondary's device model, a QEMU of its own waiting with -incoming defer.
    device_model: QemuProcess | None = None
    daemon: subprocess.Popen[bytes] | None = None

    config = _File("colod.toml")
    log = _File("colod.log")
    #: The daemon's JSON-lines log ([log] json).
    json_log = _File("colod.json")
    #: The daemon's stdout and stderr: what it says before its log opens.
    output = _File("colod.out")
    disk = _File("disk.raw")
    memory = _File("memory.img")
    state_dir = _File("state")
    qmp_socket = _File("qemu.qmp")
    #: The lab's own QMP monitor (query-status), so that it never competes with colod or the writer.
    monitor = _File("lab.qmp")
    #: The primary's second monitor, for the writer.
    writer_monitor = _File("writer.qmp")
    #: The secondary's device model's QMP socket (colod's), and the lab's monitor on it.
    device_model_socket = _File("device-model.qmp")
    device_model_monitor = _File("device-model-lab.qmp")

    @property
    def active(self) -> Path:
        return self.fast_dir / f"{self.name}-active.qcow2"

    @property
    def hidden(self) -> Path:
        return self.fast_dir / f"{self.name}-hidden.qcow2"

    #: The port of the daemon's metrics endpoint ([metrics] listen), or None: it has none.
    metrics_port: int | None = None

    @property
    def control_socket(self) -> Path:
        """Where the daemon's control socket is: its default, in the state directory."""
        return self.state_dir / "control.sock"

    def ctl(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``colodctl --config <this node's configuration> ARGS``, as this node's administrator would."""
        return subprocess.run([str(BIN / "colodctl"), "--config", str(self.config), *args],
                              capture_output=True, text=True, timeout=timeout)

    def ctl_status(self) -> dict[str, Any]:
        """``colodctl status --json``'s answer.  @raise LabError: colodctl failed."""
        done = self.ctl("status", "--json")
        if done.returncode:
            raise LabError(f"colodctl status on {self.name} exited {done.returncode}: {done.stderr.strip()}"
                           f"{self.context()}")
        return dict(json.loads(done.stdout))

    @property
    def status_path(self) -> Path:
        return self.state_dir / self.domain / "status.json"

    def status(self) -> dict[str, Any] | None:
        """The daemon's status.json; None while there is none (or, defensively, only part of one)."""
        try:
            return json.loads(self.status_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def logs(self) -> str:
        """What the daemon said: its stdout and stderr, then its log."""
        return "".join(p.read_text(errors="replace") for p in (self.output, self.log) if p.exists())

    def start_qemu(self, args: list[str]) -> None:
        """Start QEMU with ``args`` (from ``colod qemu-args``) and the lab's (and the writer's) monitors."""
        monitors = {"lab": self.monitor}
        if self.role == "primary":
            monitors["writer"] = self.writer_monitor
        self.qemu = _start(self.dir, "qemu", args, monitors)
        assert self.qemu.qmp_socket == str(self.qmp_socket)

    def start_device_model(self, args: list[str]) -> None:
        """Start the secondary's device model (``colod qemu-args --device-model``) with the lab's monitor."""
        self.device_model = _start(self.dir, "device-model", args, {"lab": self.device_model_monitor})
        assert self.device_model.qmp_socket == str(self.device_model_socket)

    def qemu_status(self) -> str:
        """The guest's run state (``running``, ``paused``...): its device model's, from the lab's monitor."""
        monitor = self.device_model_monitor if self.device_model is not None else self.monitor
        return str(_query(monitor, "query-status")["status"])

    def device_state_loaded(self) -> bool:
        """Whether the secondary's device model has taken a device state (its one incoming migration)."""
        if self.device_model is None:
            return False
        return bool(_query(self.device_model_monitor, "query-migrate").get("status") == "completed")

    def block_exports(self) -> list[str]:
        """The ids of the block exports (NBD) of the QEMU that holds the disks."""
        return [export["id"] for export in _query(self.monitor, "query-block-exports")]

    def block_nodes(self) -> set[str]:
        """The names of the block nodes of the QEMU that holds the disks."""
        return {node["node-name"] for node in _query(self.monitor, "query-named-block-nodes")}

    def start_daemon(self) -> None:
        command = [str(BIN / "twistd"), "-n", "--pidfile=", f"--logfile={self.log}", "colod",
                   "--config", str(self.config)]
        with open(self.output, "ab") as out:
            self.daemon = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                           stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)

    def daemon_running(self) -> bool:
        return self.daemon is not None and self.daemon.poll() is None

    def signal_daemon(self, signum: int) -> None:
        """Signal the daemon (SIGSTOP makes it a silent peer)."""
        if self.daemon_running():
            self.daemon.send_signal(signum)

    def kill_daemon(self) -> None:
        """SIGKILL the daemon: a crash, or part of a host loss."""
        _kill(self.daemon)

    def stop_daemon(self) -> int | None:
        """Stop the daemon as an admin would (SIGTERM); returns its exit status."""
        return terminate(self.daemon)

    def kill_qemu(self) -> None:
        """SIGKILL QEMU: the device model crashed, or its host is gone."""
        if self.qemu is not None:
            self.qemu.kill()

    def stop(self) -> None:
        """Stop the daemon, then the QEMUs, whatever state they are in."""
        self.stop_daemon()
        for qemu in (self.qemu, self.device_model):
            if qemu is not None:
                qemu.stop()

    def qemu_stopped(self) -> bool:
        """Whether the guest's QEMU process is stopped by a signal (state T): QMP cannot tell, as it does not
        answer then."""
        assert self.qemu is not None
        return _signal_stopped(self.qemu)

    def guest_runs(self) -> bool:
        """Whether the guest runs here: none of its QEMUs is stopped by a signal (the guard fences so), and
        its run state is ``running``.  A QEMU that is gone, or does not answer, runs nothing."""
        qemus = [qemu for qemu in (self.qemu, self.device_model) if qemu is not None]
        try:
            if not qemus or any(_signal_stopped(qemu) for qemu in qemus):
                return False
            return self.qemu_status() == "running"
        except (OSError, QMPError):
            return False

    def context(self) -> str:
        """For failure messages: the last status and the end of the daemon's log."""
        alive = "running" if self.daemon_running() else "not running"
        return (f"\n{self.name} ({self.role}) daemon {alive}; last status: {self.status()}"
                + _tail(self.output) + _tail(self.log))


@attrs.define
class Lab:
    """Two nodes on this machine, a primary and a secondary, and the writer playing the primary's guest."""

    workdir: Path
    domain: str = "lab"
    checkpoint_interval: float = 0.02
    heartbeat_interval: float = 0.25
    heartbeat_timeout: float = 1.5
    disk_size: int = 8 * MiB
    memory_pages: int = 1024
    seed: int = 1
    #: Mutual TLS on the link and on NBD (the default, which the files leave to colod's defaults); False for
    #: both plaintext, as the files say explicitly (``peer.tls = false``, ``nbd_tls = false``).
    tls: bool = True
    #: The ``[failover]`` table's lines: the lab's failover tests kill a primary and expect a takeover.
    failover: str = 'policy = "heartbeat-only"'
    #: Whether each daemon serves metrics ([metrics] listen, on a port of its own).
    metrics: bool = False
    #: An etcd the lab starts in prepare() (and stops), and whose policy it writes into both configurations.
    etcd: EtcdServer | None = None
    etcd_lease_ttl: int = 3
    #: A node's way to etcd, by its name, where not straight: a relay's port.
    etcd_ports: dict[str, int] = attrs.field(factory=dict)
    #: Where the secondary listens for the primary's link.
    secondary_port: int = attrs.field(factory=free_port)
    nbd_port: int = attrs.field(factory=free_port)
    primary: Node = attrs.field(init=False)
    secondary: Node = attrs.field(init=False)
    writer: subprocess.Popen[bytes] | None = attrs.field(init=False, default=None)
    fast_dir: Path = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        shm = Path("/dev/shm")
        self.fast_dir = Path(tempfile.mkdtemp(prefix="colod-lab-", dir=shm if shm.is_dir() else self.workdir))
        self.primary = Node("primary", "host-a", self.workdir / "primary", self.domain, self.fast_dir)
        self.secondary = Node("secondary", "host-b", self.workdir / "secondary", self.domain, self.fast_dir)
        if self.metrics:
            for node in self.nodes:
                node.metrics_port = free_port()

    @property
    def nodes(self) -> tuple[Node, Node]:
        return self.primary, self.secondary

    @property
    def writer_log(self) -> Path:
        return self.workdir / "writer.log"

    @property
    def certs_dir(self) -> Path:
        """The lab's CA (``colod make-certs``), with a directory of TLS files per node."""
        return self.workdir / "tls"

    def tls_files(self, node: Node) -> tuple[Path, Path, Path]:
        """``node``'s CA certificate, certificate and key: the files of its ``[tls]``."""
        directory = self.certs_dir / node.name
        return directory / certs.CA_CERT, directory / certs.CERT, directory / certs.KEY

    # --- setting up --------------------------------------------------------

    def prepare(self, link_port: int | None = None) -> None:
        """Identical disks, empty overlays and memory images, and both configurations.

        The primary connects to ``link_port`` (a proxy in between) or straight to the secondary.
        """
        for node in self.nodes:
            node.state_dir.mkdir(parents=True, exist_ok=True)
            with open(node.disk, "wb") as disk:
                for _ in range(0, self.disk_size, MiB):
                    disk.write(bytes([DISK_BASE]) * MiB)
                disk.truncate(self.disk_size)
            for overlay in (node.active, node.hidden):
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(overlay), str(self.disk_size)],
                               check=True, timeout=30)
            MemoryImage.create(node.memory, self.memory_pages).close()
        # In a TLS lab etcd is https too, its certificate from the nodes' CA, as colod advises.
        etcd_tls = self.etcd is not None and self.tls
        command = [str(BIN / "colod"), "make-certs", "--dir", str(self.certs_dir),
                   *(node.name for node in self.nodes), *([TLS_HOST] if etcd_tls else [])]
        made = subprocess.run(command, capture_output=True, text=True, timeout=30)
        if made.returncode:
            raise LabError(f"colod make-certs failed: {made.stderr.strip()}")
        if self.etcd is not None:
            if etcd_tls:
                directory = self.certs_dir / TLS_HOST
                self.etcd.use_tls(TLSConfig(str(directory / certs.CA_CERT), str(directory / certs.CERT),
                                            str(directory / certs.KEY)))
            self.etcd.start()
        self.primary.config.write_text(self._config(
            self.primary, self.secondary,
            f'connect = "tcp:host=127.0.0.1:port={link_port or self.secondary_port}:timeout=5"'))
        self.secondary.config.write_text(self._config(
            self.secondary, self.primary, f'listen = "tcp:{self.secondary_port}:interface=127.0.0.1"'))

    def _config(self, node: Node, peer: Node, link: str) -> str:
        secondary = node.role == "secondary"
        device_model = f'device_model_socket = "{node.device_model_socket}"' if secondary else ""
        ca, certificate, key = self.tls_files(node)
        tls = f'[tls]\nca = "{ca}"\ncertificate = "{certificate}"\nkey = "{key}"' if self.tls else ""
        metrics = (f'[metrics]\nlisten = "tcp:{node.metrics_port}:interface=127.0.0.1"' if node.metrics_port
                   else "")
        return f"""\
[colod]
role = "{node.role}"
node_name = "{node.name}"
state_dir = "{node.state_dir}"
checkpoint_interval = {self.checkpoint_interval}

[peer]
{link}
node_name = "{peer.name}"
heartbeat_interval = {self.heartbeat_interval}
heartbeat_timeout = {self.heartbeat_timeout}
tls = {str(self.tls).lower()}

{tls}

[failover]
{self._failover(node)}

{metrics}

[log]
json = "{node.json_log}"

[[domain]]
name = "{self.domain}"
qmp_socket = "{node.qmp_socket}"
nbd_host = "127.0.0.1"
nbd_port = {self.nbd_port}
{"" if self.tls else "nbd_tls = false"}
memory_image = "{node.memory}"
{device_model}
[[domain.disk]]
name = "xvda"
quorum_node = "{QUORUM_NODE}"
image = "{node.disk}"
format = "raw"
export_name = "{self.domain}-xvda"
active_image = "{node.active}"
hidden_image = "{node.hidden}"
"""

    def _failover(self, node: Node) -> str:
        if self.etcd is None:
            return self.failover
        url = self.etcd.url_at(self.etcd_ports.get(node.name, self.etcd.client_port))
        return (f'policy = "etcd"\netcd_endpoints = ["{url}"]\n'
                f"etcd_lease_ttl = {self.etcd_lease_ttl}\netcd_timeout = 1.0")

    def qemu_args(self, node: Node, *options: str) -> list[str]:
        """What ``colod qemu-args`` prints for ``node``, split as a shell would."""
        command = [str(BIN / "colod"), "qemu-args", "--role", node.role, "--config", str(node.config),
                   *options]
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        if done.returncode:
            raise LabError(f"colod qemu-args for {node.name} failed: {done.stderr.strip()}")
        return shlex.split(done.stdout)

    def start_qemus(self) -> None:
        for node in self.nodes:
            node.start_qemu(self.qemu_args(node))
        self.secondary.start_device_model(self.qemu_args(self.secondary, "--device-model"))

    def start_daemons(self, timeout: float = 20.0) -> None:
        """The secondary first, and the primary once the secondary listens."""
        self.secondary.start_daemon()
        Poll(lambda: listening(self.secondary_port) or None, timeout,
             f"the secondary listening on port {self.secondary_port}", self.secondary.context).wait()
        self.primary.start_daemon()

    # --- looking -----------------------------------------------------------

    def until(self, node: Node, predicate: Callable[[dict[str, Any]], object], timeout: float, what: str,
              started: float | None = None) -> Poll[dict[str, Any]]:
        """Wait for ``node``'s status to satisfy ``predicate``; fails at once if its daemon exits.

        A failure quotes both nodes' status and log: a node's trouble often starts at its peer.
        """

        def check() -> dict[str, Any] | None:
            status = node.status()
            if status is not None and predicate(status):
                return status
            if not node.daemon_running():
                raise LabError(f"{what}: the {node.role}'s daemon exited{node.context()}")
            return None

        other = self.secondary if node is self.primary else self.primary
        return Poll(check, timeout, f"{what} ({node.name})", lambda: node.context() + other.context(),
                    time.monotonic() if started is None else started)

    def until_protected(self, timeout: float = 60.0) -> Poll[dict[str, Any]]:
        return self.until(self.primary, lambda s: s["protected"], timeout, "first checkpoint")

    def until_checkpoints(self, count: int, timeout: float) -> Poll[dict[str, Any]]:
        return self.until(self.primary, lambda s: s["checkpoints"] >= count, timeout, f"{count} checkpoints")

    # --- the guest ---------------------------------------------------------

    def start_writer(self, interval: float = 0.0) -> None:
        """Start the writer on the primary: only once protected, since colod does not copy disks."""
        command = [sys.executable, "-m", "colod.testing.writer", "run", "--image", str(self.primary.memory),
                   "--qmp", str(self.primary.writer_monitor), "--node", QUORUM_NODE,
                   "--disk-size", str(self.disk_size), "--seed", str(self.seed), "--interval", str(interval)]
        with open(self.writer_log, "ab") as out:
            self.writer = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                           stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)

    def stop_writer(self) -> int | None:
        """Stop the writer between two operations; returns its exit status (1 if its QEMU was gone)."""
        return terminate(self.writer)

    def kill_writer(self) -> None:
        _kill(self.writer)

    def ops(self) -> int:
        """The writer's completed operations, as the primary's memory image holds them."""
        with open(self.primary.memory, "rb") as image:
            header = Header.unpack(image.read(PAGE_SIZE))
        return header.ops if header else 0

    def ops_floor(self, timeout: float = 10.0) -> Poll[int]:
        """The writer's operations now, once two more checkpoints completed: each later checkpoint holds them.

        The completed checkpoints are counted before the operations are read,
        so the second checkpoint after that count began after the read, with
        the guest suspended and at least that many operations done.
        """
        checkpoints = self.primary.status()["checkpoints"]
        floor = self.ops()
        reached = self.until_checkpoints(checkpoints + 2, timeout)
        return Poll(lambda: floor if reached.check() is not None else None,
                    timeout, reached.what, reached.context)

    def until_ops(self, count: int, timeout: float) -> Poll[int]:
        """Wait until the writer has done ``count`` operations on the primary."""
        return Poll(lambda: ops if (ops := self.ops()) >= count else None, timeout,
                    f"{count} writer operations", lambda: _tail(self.writer_log))

    def verify(self, node: Node) -> Verdict:
        """Whether ``node``'s disk and memory image are the writer's state after the ops they count."""
        return verify(node.memory, node.disk, DISK_BASE, self.seed)

    def differences(self) -> list[str]:
        """Where the two nodes' disk and memory images differ; empty when they are byte for byte equal."""
        found = []
        for what in ("disk", "memory"):
            a, b = (getattr(node, what).read_bytes() for node in self.nodes)
            if a != b:
                pairs = enumerate(zip(a, b, strict=False))
                at = next((i for i, (x, y) in pairs if x != y), min(len(a), len(b)))
                found.append(f"{what} images differ first at offset {at:#x} (sizes {len(a)}, {len(b)})")
        return found

    # --- failures ----------------------------------------------------------

    def lose_primary_host(self) -> None:
        """The primary's host dies: its guest (the writer), its QEMU and its daemon, at once."""
        self.kill_writer()
        self.primary.kill_qemu()
        self.primary.kill_daemon()

    def close(self) -> None:
        """Stop everything the lab started, whatever state it is in."""
        self.stop_writer()
        for node in self.nodes:
            node.stop()
        if self.etcd is not None:
            self.etcd.stop()
        shutil.rmtree(self.fast_dir, ignore_errors=True)
