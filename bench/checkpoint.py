# -*- test-case-name: tests.engine.test_engines -*-
"""
Checkpoint pause and rate of colod, and of the same checkpoint with libxl-style QMP, in one run.

Usage: python bench/checkpoint.py [--checkpoints N] [--quick] [--link tls|plain|both]

Each scenario starts a pair of fresh QEMUs per style and link (replication
nodes are single-use per process) from ``colod qemu-args``, with one replicated disk
each and, for the memory scenarios, a 128 MiB memory image per side.  Each
pair runs colod's PrimaryEngine and SecondaryEngine in this process, linked
over TCP on 127.0.0.1: the same engines, guest, devices, memory image code
and stream.  The pairs differ in the QMP object all of those are given:

- colod: colod's QMPConnection, one persistent connection per QEMU, so the
  calls of both nodes, and of one node's devices, are in flight together;
- libxl-style: bench/libxl_style.LibxlQMP, a new connection per command on a
  monitor of its own, blocking the caller (the reactor, which both nodes
  share here), so every call runs after the one before.

and, with ``--link both`` (the default), in their peer link:

- tls: mutual TLS as the daemon runs it (colod.tls: TLS 1.3, each side's
  certificate checked against the CA and the peer's name), the ``[tls]`` of
  each side's configuration, with a CA and node certificates colod.certs
  makes for the run (``colod make-certs``);
- plain: the link in plaintext, ``peer.tls = false``.

NBD (the primary's QEMU writing to the secondary's) is plaintext in all of
them (``nbd_tls = false``): QEMU's TLS, not colod's, and the same for both styles.

So each scenario runs four pairs (colod and libxl-style, each on either
link), or two with ``--link tls`` or ``--link plain``.

The engines' interval is an hour, so they only checkpoint when asked.  Rounds
take turns between the pairs: dirty the primary's pages (the guest
running; not timed), then one checkpoint through request_checkpoint().
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import deferLater, react
from twisted.protocols.tls import TLSMemoryBIOProtocol

from bench.libxl_style import LibxlQMP
from colod import certs, cli, config
from colod import tls as link_tls
from colod.devices import DeviceGroup
from colod.engine.generation import Generation
from colod.engine.primary import PrimaryEngine
from colod.engine.secondary import SecondaryEngine
from colod.engine.status import StatusFile
from colod.failover.policy import Manual, OperatorRequest
from colod.guest.device_model import DeviceModelEngine
from colod.guest.memory_image import MemoryImage
from colod.guest.qemu_guest import QemuGuest
from colod.protocol.handshake import Hello, Role
from colod.protocol.peer import PeerLinkFactory
from colod.protocol.wire import PAGE_SIZE
from colod.qmp import QMPConnection
from colod.reactor import use_asyncio_reactor
from colod.testing.processes import free_port
from colod.testing.qemu_process import QemuProcess, reap_all

MiB = 1 << 20
IMAGE_PAGES = 128 * MiB // PAGE_SIZE
DISK_SIZE = 8 * MiB
DOMAIN = "guest"
QUORUM_NODE = "colo-disk0"
#: Deadline of one checkpoint, one device hook, one QMP exchange, one engine shutdown.
TIMEOUT = 15.0
#: Deadline of the first checkpoint, which copies the whole memory image (the engine's, of any).
FIRST_TIMEOUT = 60.0
#: Rounds of each style run before measuring (files made, caches warm).
WARMUP = 3
QUICK = 20
COLOD, LIBXL = "colod", "libxl-style"
STYLES = (COLOD, LIBXL)
TLS, PLAIN = "tls", "plain"
LINKS = (TLS, PLAIN)

T = TypeVar("T")


class BenchError(Exception):
    """A pair did not come up, a checkpoint failed, or the two sides ended up different."""


@attrs.frozen
class Scenario:
    """One scenario: a guest, how much of it changes between checkpoints, and how many to take."""

    label: str
    #: Pages dirtied before each checkpoint; None for a disk-only domain (no memory image).
    dirty_pages: int | None
    checkpoints: int

    @property
    def slug(self) -> str:
        return self.label.replace(" ", "-")


def scenarios(count: int | None) -> list[Scenario]:
    """The four scenarios; ``count`` checkpoints each, or as many as keep a default run within minutes."""
    rows = [("disk-only", None, 300), ("1 MiB", MiB, 300), ("16 MiB", 16 * MiB, 200),
            ("64 MiB", 64 * MiB, 100)]
    return [Scenario(label, None if size is None else size // PAGE_SIZE, count or default)
            for label, size, default in rows]


# -- QMP, either style, on a clock shared by both nodes of a pair ------------------------------


class Busy:
    """
    Wall-clock seconds during which at least one QMP command of a pair awaited
    QEMU.  colod's calls of the two nodes overlap (the secondary checks
    replication while the primary saves its device state): summing each
    connection's busy_seconds would count that twice.
    """

    def __init__(self) -> None:
        self._outstanding = 0
        self._since = 0.0
        self._total = 0.0

    def begin(self) -> None:
        if self._outstanding == 0:
            self._since = time.perf_counter()
        self._outstanding += 1

    def end(self, result: T) -> T:
        self._outstanding -= 1
        if self._outstanding == 0:
            self._total += time.perf_counter() - self._since
        return result

    @property
    def seconds(self) -> float:
        return self._total + (time.perf_counter() - self._since if self._outstanding else 0.0)


class TimedQMP(QMPConnection):
    """colod's QMPConnection, its commands also counted on the pair's Busy clock."""

    def __init__(self, socket_path: str, busy: Busy, name: str) -> None:
        super().__init__(socket_path, name=name, command_timeout=TIMEOUT)
        self._busy = busy

    def execute(self, command: str, arguments: dict[str, Any] | None = None, timeout: float | None = None,
                *, oob: bool = False) -> Deferred[Any]:
        self._busy.begin()
        return super().execute(command, arguments, timeout, oob=oob).addBoth(self._busy.end)


class TimedLibxlQMP(LibxlQMP):
    """LibxlQMP, its commands also counted on the pair's Busy clock."""

    def __init__(self, socket_path: str, busy: Busy) -> None:
        super().__init__(socket_path, TIMEOUT)
        self._busy = busy

    def call(self, command: str, arguments: dict[str, Any] | None = None,
             timeout: float | None = None) -> Any:
        self._busy.begin()
        try:
            return super().call(command, arguments, timeout)
        finally:
            self._busy.end(None)


QMP = TimedQMP | TimedLibxlQMP


async def open_qmp(style: str, qemu: QemuProcess, libxl_monitor: Path, busy: Busy, role: str,
                   stack: contextlib.AsyncExitStack) -> QMP:
    """``style``'s QMP object for ``qemu``, QEMU probed; its cleanup, if it needs one, goes on ``stack``."""
    if style == LIBXL:
        libxl = TimedLibxlQMP(str(libxl_monitor), busy)
        libxl.probe()
        return libxl
    qmp = TimedQMP(qemu.qmp_socket, busy, role)
    stack.push_async_callback(lambda: within(qmp.disconnect()))
    await qmp.connect()
    return qmp


# -- a pair ------------------------------------------------------------------------------------


class Dirtier:
    """Plays the primary's guest between checkpoints: writes ``pages`` random pages and marks them dirty."""

    def __init__(self, image: MemoryImage, pages: int) -> None:
        self._image = image
        self._pages = pages
        # The same seed for every pair: both styles get the very same pages to copy.
        self._random = random.Random(1)
        self._data = self._random.randbytes(PAGE_SIZE) * pages

    def __call__(self) -> None:
        pfns = array("Q", sorted(self._random.sample(range(self._image.pages), self._pages)))
        self._image.load_pages(pfns, self._data)
        self._image.mark_dirty(pfns)


@attrs.define
class Node:
    """One side: its QMP object, guest and engine, and its memory image as the guest (or a check) opens it."""

    role: str
    qmp: QMP
    guest: QemuGuest
    engine: PrimaryEngine | SecondaryEngine
    image: MemoryImage | None
    #: The link's TLS from the configuration's ``[tls]``; None on a plaintext link.
    tls: link_tls.PeerTLS | None


@attrs.define
class Pair:
    """Both sides of one style and link, the clock their QMP calls share, and the primary's guest."""

    style: str
    link: str
    primary: Node
    secondary: Node
    busy: Busy
    dirty: Dirtier | None

    @property
    def variant(self) -> tuple[str, str]:
        return self.style, self.link

    @property
    def name(self) -> str:
        return f"{self.style} on {self.link}"


def write_config(workdir: Path, role: str, nbd_port: int, memory: bool, tls_dir: Path | None) -> Path:
    """A colod.toml for ``role`` with one replicated disk, its ``[tls]`` the files in ``tls_dir`` (None:
    ``peer.tls = false``); the peer's addresses are unused (we link the engines)."""
    peer = Role.SECONDARY if role == Role.PRIMARY else Role.PRIMARY
    lines = [
        "[colod]", f'role = "{role}"', f'node_name = "{role}"',
        "[peer]", 'listen = "tcp:9000"', 'connect = "tcp:host=127.0.0.1:port=9000"', f'node_name = "{peer}"',
        f"tls = {str(tls_dir is not None).lower()}",
        "[failover]", 'policy = "manual"',
    ]
    if tls_dir is not None:
        lines += ["[tls]", f'ca = "{tls_dir / certs.CA_CERT}"', f'certificate = "{tls_dir / certs.CERT}"',
                  f'key = "{tls_dir / certs.KEY}"']
    lines += [
        "[[domain]]", f'name = "{DOMAIN}"', f'qmp_socket = "{workdir / role}.qmp"',
        'nbd_host = "127.0.0.1"', f"nbd_port = {nbd_port}",
        # The link's TLS is what is compared; NBD, plaintext in both, is QEMU's own (colod.devices.nbd_tls).
        "nbd_tls = false",
    ]
    if memory:
        lines.append(f'memory_image = "{workdir / role}.ram"')
    lines += [
        "[[domain.disk]]", 'name = "xvda"', f'quorum_node = "{QUORUM_NODE}"',
        f'image = "{workdir / role}-disk.raw"', f'export_name = "{DOMAIN}-xvda"',
        f'active_image = "{workdir}/active.qcow2"', f'hidden_image = "{workdir}/hidden.qcow2"',
    ]
    path = workdir / f"{role}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_images(workdir: Path, memory: bool) -> None:
    """Identical disks on both sides, the secondary's empty overlays, and zeroed memory images."""
    for role in Role:
        (workdir / f"{role}-disk.raw").write_bytes(b"\x11" * DISK_SIZE)
        if memory:
            MemoryImage.create(workdir / f"{role}.ram", IMAGE_PAGES).close()
    for overlay in ("active", "hidden"):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(workdir / f"{overlay}.qcow2"),
                        str(DISK_SIZE)], check=True, timeout=TIMEOUT)


def qemu_args(role: str, path: Path) -> list[str]:
    """What ``colod qemu-args`` prints for ``path``, split as a shell would."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli.main(["qemu-args", "--role", role, "--config", str(path)])
    if status != 0:
        raise BenchError(f"colod qemu-args --role {role} --config {path} failed ({status})")
    return shlex.split(out.getvalue())


def within(d: Deferred[T], seconds: float = TIMEOUT) -> Deferred[T]:
    """``d``, failing with TimeoutError after ``seconds``."""
    from twisted.internet import reactor  # late: use_asyncio_reactor() must install it first

    return d.addTimeout(seconds, reactor)


async def start_node(reactor: Any, workdir: Path, role: str, style: str, memory: bool, nbd_port: int,
                     tls_dir: Path | None, busy: Busy, stack: contextlib.AsyncExitStack) -> Node:
    """One side's QEMU, QMP object, devices, guest, engine and link TLS; their cleanups go on ``stack``."""
    path = write_config(workdir, role, nbd_port, memory, tls_dir)
    loaded = config.load(path, role)  # checks [tls] as the daemon's start does
    domain = loaded.domains[0]
    tls = None
    if loaded.peer.tls:
        assert loaded.tls is not None
        # As the daemon puts its link under TLS (colod.engine.peering).
        tls = link_tls.PeerTLS(link_tls.load(loaded.tls.ca, loaded.tls.certificate, loaded.tls.key,
                                             loaded.node_name))
    # Every QEMU gets the libxl-style monitor, so that both styles drive the same command line.
    libxl_monitor = workdir / f"{role}-libxl.qmp"
    qemu = QemuProcess(workdir, role, [
        *qemu_args(role, path),
        "-chardev", f"socket,id=libxl,path={libxl_monitor},server=on,wait=off",
        "-mon", "chardev=libxl,mode=control",
    ])
    stack.callback(qemu.stop)
    qemu.start()
    qmp = await open_qmp(style, qemu, libxl_monitor, busy, role, stack)
    group = DeviceGroup(domain, role, qmp, reactor, timeout=TIMEOUT)
    guest = QemuGuest(role, DeviceModelEngine(qmp, workdir / f"{role}-state", reactor), domain.memory_image,
                      reactor, timeout=TIMEOUT)
    stack.callback(guest.close)
    common = (domain, role, guest, group, reactor, StatusFile(workdir / f"{role}-status", reactor), qmp)
    engine: PrimaryEngine | SecondaryEngine
    if role == "primary":
        engine = PrimaryEngine(*common, generation=Generation(workdir / role), interval=3600.0,
                               checkpoint_timeout=FIRST_TIMEOUT)
    else:
        engine = SecondaryEngine(*common, generation=Generation(workdir / role), policy=Manual(),
                                 requests=OperatorRequest(workdir, "bench"))
    image = None
    if domain.memory_image is not None:
        image = MemoryImage.open(domain.memory_image)
        stack.callback(image.close)
    return Node(role, qmp, guest, engine, image, tls)


async def start_pair(reactor: Any, workdir: Path, scenario: Scenario, style: str, link: str,
                     tls_dirs: dict[str, Path], stack: contextlib.AsyncExitStack) -> Pair:
    """Both sides of ``style``, linked over TCP on 127.0.0.1 (under TLS with the node directories
    ``tls_dirs`` if ``link`` is TLS), after their first (full) checkpoint."""
    workdir.mkdir()
    memory = scenario.dirty_pages is not None
    make_images(workdir, memory)
    busy = Busy()
    nbd_port = free_port()
    nodes = [await start_node(reactor, workdir, role, style, memory, nbd_port,
                              tls_dirs[role] if link == TLS else None, busy, stack)
             for role in (Role.SECONDARY, Role.PRIMARY)]
    secondary, primary = nodes
    port = reactor.listenTCP(0, PeerLinkFactory(
        Hello(Role.SECONDARY, DOMAIN, "secondary"), "primary", secondary.engine, reactor, tls=secondary.tls),
        interface="127.0.0.1")
    stack.push_async_callback(lambda: within(maybeDeferred(port.stopListening)))
    connection = await within(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
        PeerLinkFactory(Hello(Role.PRIMARY, DOMAIN, "primary"), "secondary", primary.engine, reactor,
                        tls=primary.tls)))
    if isinstance(connection, TLSMemoryBIOProtocol) != (link == TLS):
        connection.transport.abortConnection()
        raise BenchError(f"{style}: the link is not {link}")

    async def shut_down() -> None:
        try:
            for node in (primary, secondary):
                await within(node.engine.shutdown())
        finally:
            connection.transport.abortConnection()  # under TLS, its TCP transport: no close_notify wait

    stack.push_async_callback(shut_down)
    dirty = None
    if primary.image is not None and scenario.dirty_pages:
        dirty = Dirtier(primary.image, scenario.dirty_pages)
    pair = Pair(style, link, primary, secondary, busy, dirty)
    await until(reactor, lambda: primary.engine.checkpoints >= 1 and secondary.engine.checkpoints >= 1,
                FIRST_TIMEOUT, "the first checkpoint", pair)
    return pair


async def until(reactor: Any, condition: Callable[[], bool], timeout: float, what: str, pair: Pair) -> None:
    """Wait for ``condition``; fail at the deadline, or at once if either engine gave up."""
    deadline = reactor.seconds() + timeout
    while not condition():
        check(pair)
        if reactor.seconds() > deadline:
            raise BenchError(f"{pair.name}: {what}: not within {timeout:g} s (primary "
                             f"{pair.primary.engine.state}, secondary {pair.secondary.engine.state})")
        await deferLater(reactor, 0.01, lambda: None)


def check(pair: Pair) -> None:
    """Stop the run as soon as either engine has given up: its figures would be meaningless."""
    for node in (pair.primary, pair.secondary):
        if node.engine.error is not None:
            raise BenchError(f"{pair.name}: the {node.role}'s engine ended replication: {node.engine.error}")


def check_memory(pair: Pair, scenario: Scenario) -> None:
    """The secondary's memory image is the primary's, byte for byte, after the last checkpoint."""
    p, s = pair.primary.image, pair.secondary.image
    if p is not None and s is not None:
        everything = range(IMAGE_PAGES)
        if p.read_pages(everything) != s.read_pages(everything):
            raise BenchError(f"{scenario.label}, {pair.name}: the two memory images differ after the "
                             "last checkpoint")


# -- one round ---------------------------------------------------------------------------------


@attrs.frozen
class Round:
    """One requested checkpoint: the primary's pause and where it went, and the whole round."""

    pause: float
    #: Seconds during which a QMP command of either side was outstanding, inside the pause.
    qmp: float
    #: Seconds both sides spent building and applying pages, inside the pause.
    copy: float
    #: Request to completion (SVM_RESUMED received): what back-to-back checkpoints take each.
    round: float

    @property
    def own(self) -> float:
        """What is left for colod itself: its Python, the stream, the link, the event loop."""
        return max(0.0, self.pause - self.qmp - self.copy)


async def checkpoint(pair: Pair) -> Round:
    """One checkpoint through request_checkpoint(), as a guest whose outputs diverged would ask for it."""
    engine = pair.primary.engine
    assert isinstance(engine, PrimaryEngine)
    qmp, secondary_copy = pair.busy.seconds, pair.secondary.guest.copy_seconds
    started = time.perf_counter()
    # libxl-style, the primary's whole suspend step already runs inside request_checkpoint().
    await within(engine.request_checkpoint())
    took = time.perf_counter() - started
    # All of the secondary's QMP calls and copies of a round happen before it sends SVM_READY,
    # and the primary's after it suspends: the whole round's are inside the pause.
    pause = engine.pauses.recent[-1]
    return Round(pause.seconds, pair.busy.seconds - qmp,
                 pause.copying + pair.secondary.guest.copy_seconds - secondary_copy, took)


@attrs.frozen
class Result:
    """One scenario's measured rounds of each style on each link."""

    scenario: Scenario
    rounds: dict[tuple[str, str], list[Round]]
    qemu_version: str


async def run(reactor: Any, workdir: Path, scenario: Scenario, links: tuple[str, ...],
              tls_dirs: dict[str, Path]) -> Result:
    """Build a pair of each style on each link, alternate their rounds, check the images match, tear all
    down."""
    async with contextlib.AsyncExitStack() as stack:
        pairs = [await start_pair(reactor, workdir / f"{scenario.slug}-{style}-{link}", scenario, style, link,
                                  tls_dirs, stack)
                 for style in STYLES for link in links]
        rounds: dict[tuple[str, str], list[Round]] = {pair.variant: [] for pair in pairs}
        for n in range(WARMUP + scenario.checkpoints):
            for pair in pairs:
                if pair.dirty is not None:
                    pair.dirty()
                done = await checkpoint(pair)
                if n >= WARMUP:
                    rounds[pair.variant].append(done)
                # Let what queued up while a libxl-style call blocked the reactor (heartbeats,
                # QMP events) run now, not inside the next pair's pause.
                await deferLater(reactor, 0, lambda: None)
                check(pair)
        for pair in pairs:
            check_memory(pair, scenario)
        info = pairs[0].primary.qmp.info
        return Result(scenario, rounds, info.version if info else "unknown")


# -- the table ---------------------------------------------------------------------------------


def percentile(values: list[float], p: int) -> float:
    """The p-th percentile, interpolated as PauseStats does."""
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def load_average() -> str:
    """The last minute's, to tell a quiet machine from a shared one."""
    return f"{os.getloadavg()[0]:.2f}"


def machine(version: str) -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())
    return (f"{os.cpu_count()} cores ({model}), Linux {platform.release()}, QEMU {version}, "
            f"Python {platform.python_version()}")


Columns = tuple[tuple[str, int], ...]
#: The table's columns: name and width.
COLUMNS: Columns = (("scenario", 9), ("style", 11), ("link", 5), ("n", 4), ("p50", 7), ("p99", 7), ("own", 6),
                    ("qmp", 6), ("copy", 6), ("ck/s", 5), ("p50 ratio", 9), ("ck/s ratio", 10))
#: The TLS table's: each style's pause and rate on either link, and TLS / plaintext.
TLS_COLUMNS: Columns = (("scenario", 9), ("style", 11), ("p50 tls", 7), ("p50 plain", 9), ("ratio", 5),
                        ("p99 tls", 7), ("p99 plain", 9), ("ratio", 5), ("ck/s tls", 8), ("ck/s plain", 10),
                        ("ratio", 5))
GAP = "  "


def line(cells: list[str], columns: Columns = COLUMNS) -> str:
    """A table's row: its first columns (the labels) to the left, the figures to the right."""
    labels = next(i for i, (name, _) in enumerate(columns) if name not in ("scenario", "style", "link"))
    return GAP.join(c.ljust(w) if i < labels else c.rjust(w)
                    for i, (c, (_, w)) in enumerate(zip(cells, columns, strict=True)))


def rate(rounds: list[Round]) -> float:
    return len(rounds) / sum(r.round for r in rounds)


def p50(rounds: list[Round]) -> float:
    return percentile([r.pause for r in rounds], 50)


def p99(rounds: list[Round]) -> float:
    return percentile([r.pause for r in rounds], 99)


def row(label: str, style: str, link: str, rounds: list[Round], ratios: list[str]) -> str:
    return line([
        label, style, link, str(len(rounds)), ms(p50(rounds)), ms(p99(rounds)),
        *(ms(statistics.median(getattr(r, part) for r in rounds)) for part in ("own", "qmp", "copy")),
        f"{rate(rounds):.0f}", *ratios,
    ])


def tls_row(label: str, style: str, tls: list[Round], plain: list[Round]) -> str:
    """``style``'s pause and rate under TLS and in plaintext, and their ratios TLS / plaintext."""
    cells = [label, style]
    for figure in (p50, p99):
        cells += [ms(figure(tls)), ms(figure(plain)), f"{figure(tls) / figure(plain):.2f}"]
    cells += [f"{rate(tls):.0f}", f"{rate(plain):.0f}", f"{rate(tls) / rate(plain):.2f}"]
    return line(cells, TLS_COLUMNS)


def report(results: list[Result], links: tuple[str, ...], loads: tuple[str, str]) -> None:
    print(f"machine: {machine(results[0].qemu_version)}; load average {loads[0]} at start, {loads[1]} at end")
    print(f"memory image {IMAGE_PAGES * PAGE_SIZE // MiB} MiB per side (none for disk-only), pages dirtied "
          f"at random; one replicated raw disk of {DISK_SIZE // MiB} MiB; QEMU -machine none")
    print("every pair: colod's engines, guest, devices and stream over TCP on 127.0.0.1, a fresh QEMU pair "
          "each; only the QMP object (style) and the link differ;")
    print("link tls: mutual TLS 1.3 as the daemon runs it (colod.tls, the [tls] of each side's "
          "configuration), with certificates colod.certs made for the run (ECDSA P-256); "
          "link plain: peer.tls = false;")
    variants = ", ".join(f"{style} on {link}" for style in STYLES for link in links)
    print(f"rounds interleaved: per scenario all {len(STYLES) * len(links)} pairs are up and their "
          f"checkpoints take turns ({variants}, ...);")
    print(f"the first (full) checkpoint and {WARMUP} warm-up rounds of each pair are not counted")
    print()
    print(line([name for name, _ in COLUMNS]))
    for r in results:
        label = r.scenario.label
        for style in STYLES:
            for link in links:
                rounds, ratios = r.rounds[style, link], ["", ""]
                if style == LIBXL:
                    colod = r.rounds[COLOD, link]
                    ratios = [f"{p50(rounds) / p50(colod):.2f}", f"{rate(colod) / rate(rounds):.2f}"]
                print(row(label, style, link, rounds, ratios))
                label = ""
    if links == LINKS:
        print()
        print("the peer link under TLS beside plaintext, same scenario, style and workload (ratio: TLS / "
              "plaintext; for p50 and p99 above 1 and for ck/s below 1, TLS is slower):")
        print(line([name for name, _ in TLS_COLUMNS], TLS_COLUMNS))
        for r in results:
            for n, style in enumerate(STYLES):
                label = "" if n else r.scenario.label
                print(tls_row(label, style, r.rounds[style, TLS], r.rounds[style, PLAIN]))
    print()
    for text in (
        "ms; pause: the primary's guest suspended, from CHECKPOINT_STATE(NEW) (just before stop) to cont "
        "answered, as the primary's engine records it (engine.pauses); p50, p99: its percentiles",
        "qmp: time during which a QMP command of either node was outstanding (a union, not a sum): QEMU's "
        "work and the QMP client's, for libxl-style also connect, greeting and qmp_capabilities",
        "copy: both nodes building and applying pages (QemuGuest.copy_seconds)",
        "own: pause - qmp - copy: colod's own share (its Python, encoding, TCP, decoding, the event loop); "
        "own, qmp, copy are medians of each round's",
        "ck/s: checkpoints back to back through request_checkpoint(): n / the sum of request-to-SVM_RESUMED "
        "times; the dirtying between rounds is not timed",
        f"p50 ratio: {LIBXL} p50 / {COLOD} p50; ck/s ratio: {COLOD} ck/s / {LIBXL} ck/s, on the same link "
        "(above 1: colod is faster)",
        f"both nodes share this process: {LIBXL} blocks it, so the secondary's suspend step (one "
        "query-xen-replication-status) waits for the primary's stop and device-state save instead of "
        "overlapping them as on two hosts",
    ):
        print(text)


async def bench(reactor: Any, options: argparse.Namespace) -> None:
    count = options.checkpoints or (QUICK if options.quick else None)
    links = LINKS if options.link == "both" else (options.link,)
    shm = Path("/dev/shm")  # the overlays, which every checkpoint empties, belong on tmpfs
    started = load_average()
    with tempfile.TemporaryDirectory(prefix="colod-bench-", dir=shm if shm.is_dir() else None) as tmp:
        # One CA and a certificate per node, as colod make-certs makes them; every TLS pair uses them.
        tls_dirs = certs.make(Path(tmp) / "tls", list(Role)) if TLS in links else {}
        results = []
        for scenario in scenarios(count):
            print(f"{scenario.label}: {scenario.checkpoints} checkpoints of each pair...", file=sys.stderr)
            results.append(await run(reactor, Path(tmp), scenario, links, tls_dirs))
    report(results, links, (started, load_average()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--checkpoints", type=int, metavar="N", help="measured checkpoints per scenario")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK} checkpoints per scenario")
    parser.add_argument("--link", choices=(*LINKS, "both"), default="both",
                        help="the peer link: mutual TLS, plaintext (peer.tls = false), or both side by side "
                             "(default)")
    options = parser.parse_args()
    if options.checkpoints is not None and options.checkpoints < 2:
        parser.error("--checkpoints needs at least 2 for percentiles")
    use_asyncio_reactor()
    try:
        react(lambda reactor: Deferred.fromCoroutine(bench(reactor, options)))
    finally:
        reap_all()


if __name__ == "__main__":
    main()
