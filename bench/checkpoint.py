# -*- test-case-name: tests.engine.test_engines -*-
"""
Checkpoint pause and rate of colod, and of the same checkpoint with libxl-style QMP, in one run.

Usage: python bench/checkpoint.py [--checkpoints N] [--quick]

Each scenario starts two pairs of fresh QEMUs (replication nodes are
single-use per process) from ``colod qemu-args``, with one replicated disk
each and, for the memory scenarios, a 128 MiB memory image per side.  Each
pair runs colod's PrimaryEngine and SecondaryEngine in this process, linked
over TCP on 127.0.0.1: the same engines, guest, devices, memory image code
and stream.  The pairs differ only in the QMP object all of those are given:

- colod: colod's QMPConnection, one persistent connection per QEMU, so the
  calls of both nodes, and of one node's devices, are in flight together;
- libxl-style: bench/libxl_style.LibxlQMP, a new connection per command on a
  monitor of its own, blocking the caller (the reactor, which both nodes
  share here), so every call runs after the one before.

The engines' interval is an hour, so they only checkpoint when asked.  Rounds
alternate between the two pairs: dirty the primary's pages (the guest
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

from bench.libxl_style import LibxlQMP
from colod import cli, config
from colod.devices import DeviceGroup
from colod.engine.primary import PrimaryEngine
from colod.engine.secondary import SecondaryEngine
from colod.engine.status import StatusFile
from colod.guest.device_model import DeviceModelEngine
from colod.guest.memory_image import MemoryImage
from colod.guest.qemu_guest import QemuGuest
from colod.protocol.handshake import Hello, Role
from colod.protocol.peer import PeerLinkFactory
from colod.protocol.wire import PAGE_SIZE
from colod.qmp import QMPConnection
from colod.reactor import use_asyncio_reactor
from colod.testing.lab import free_port
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


@attrs.define
class Pair:
    """Both sides of one style, the clock their QMP calls share, and the primary's guest."""

    style: str
    primary: Node
    secondary: Node
    busy: Busy
    dirty: Dirtier | None


def write_config(workdir: Path, role: str, nbd_port: int, memory: bool) -> Path:
    """A colod.toml for ``role`` with one replicated disk; the peer keys are unused (we link the engines)."""
    lines = [
        "[colod]", f'role = "{role}"', f'node_name = "{role}"',
        "[peer]", 'listen = "tcp:9000"', 'connect = "tcp:host=127.0.0.1:port=9000"', "tls = false",
        "[[domain]]", f'name = "{DOMAIN}"', f'qmp_socket = "{workdir / role}.qmp"',
        'nbd_host = "127.0.0.1"', f"nbd_port = {nbd_port}",
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
                     busy: Busy, stack: contextlib.AsyncExitStack) -> Node:
    """One side's QEMU, QMP object, devices, guest and engine; their cleanups go on ``stack``."""
    path = write_config(workdir, role, nbd_port, memory)
    domain = config.load(path, role).domains[0]
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
        engine = PrimaryEngine(*common, interval=3600.0, checkpoint_timeout=FIRST_TIMEOUT)
    else:
        engine = SecondaryEngine(*common)
    image = None
    if domain.memory_image is not None:
        image = MemoryImage.open(domain.memory_image)
        stack.callback(image.close)
    return Node(role, qmp, guest, engine, image)


async def start_pair(reactor: Any, workdir: Path, scenario: Scenario, style: str,
                     stack: contextlib.AsyncExitStack) -> Pair:
    """Both sides of ``style``, linked over TCP on 127.0.0.1, after their first (full) checkpoint."""
    workdir.mkdir()
    memory = scenario.dirty_pages is not None
    make_images(workdir, memory)
    busy = Busy()
    nbd_port = free_port()
    secondary = await start_node(reactor, workdir, "secondary", style, memory, nbd_port, busy, stack)
    primary = await start_node(reactor, workdir, "primary", style, memory, nbd_port, busy, stack)
    port = reactor.listenTCP(0, PeerLinkFactory(
        Hello(Role.SECONDARY, DOMAIN, "secondary"), "primary", secondary.engine, reactor),
        interface="127.0.0.1")
    stack.push_async_callback(lambda: within(maybeDeferred(port.stopListening)))
    link = await within(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(PeerLinkFactory(
        Hello(Role.PRIMARY, DOMAIN, "primary"), "secondary", primary.engine, reactor)))

    async def shut_down() -> None:
        try:
            for node in (primary, secondary):
                await within(node.engine.shutdown())
        finally:
            link.transport.abortConnection()

    stack.push_async_callback(shut_down)
    dirty = None
    if primary.image is not None and scenario.dirty_pages:
        dirty = Dirtier(primary.image, scenario.dirty_pages)
    pair = Pair(style, primary, secondary, busy, dirty)
    await until(reactor, lambda: primary.engine.checkpoints >= 1 and secondary.engine.checkpoints >= 1,
                FIRST_TIMEOUT, "the first checkpoint", pair)
    return pair


async def until(reactor: Any, condition: Callable[[], bool], timeout: float, what: str, pair: Pair) -> None:
    """Wait for ``condition``; fail at the deadline, or at once if either engine gave up."""
    deadline = reactor.seconds() + timeout
    while not condition():
        check(pair)
        if reactor.seconds() > deadline:
            raise BenchError(f"{pair.style}: {what}: not within {timeout:g} s (primary "
                             f"{pair.primary.engine.state}, secondary {pair.secondary.engine.state})")
        await deferLater(reactor, 0.01, lambda: None)


def check(pair: Pair) -> None:
    """Stop the run as soon as either engine has given up: its figures would be meaningless."""
    for node in (pair.primary, pair.secondary):
        if node.engine.error is not None:
            raise BenchError(f"{pair.style}: the {node.role}'s engine ended replication: {node.engine.error}")


def check_memory(pair: Pair, scenario: Scenario) -> None:
    """The secondary's memory image is the primary's, byte for byte, after the last checkpoint."""
    p, s = pair.primary.image, pair.secondary.image
    if p is not None and s is not None:
        everything = range(IMAGE_PAGES)
        if p.read_pages(everything) != s.read_pages(everything):
            raise BenchError(f"{scenario.label}, {pair.style}: the two memory images differ after the "
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
    """One scenario's measured rounds of each style."""

    scenario: Scenario
    rounds: dict[str, list[Round]]
    qemu_version: str


async def run(reactor: Any, workdir: Path, scenario: Scenario) -> Result:
    """Build a pair of each style, alternate their rounds, check the images match, tear both down."""
    async with contextlib.AsyncExitStack() as stack:
        pairs = [await start_pair(reactor, workdir / f"{scenario.slug}-{style}", scenario, style, stack)
                 for style in STYLES]
        rounds: dict[str, list[Round]] = {style: [] for style in STYLES}
        for n in range(WARMUP + scenario.checkpoints):
            for pair in pairs:
                if pair.dirty is not None:
                    pair.dirty()
                done = await checkpoint(pair)
                if n >= WARMUP:
                    rounds[pair.style].append(done)
                # Let what queued up while a libxl-style call blocked the reactor (heartbeats,
                # QMP events) run now, not inside the other pair's next pause.
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


#: The table's columns: name and width.
COLUMNS = (("scenario", 9), ("style", 11), ("n", 4), ("p50", 7), ("p99", 7), ("own", 6), ("qmp", 6),
           ("copy", 6), ("ck/s", 5), ("p50 ratio", 9), ("ck/s ratio", 10))
GAP = "  "


def line(cells: list[str]) -> str:
    return GAP.join(c.ljust(w) if i < 2 else c.rjust(w)
                    for i, (c, (_, w)) in enumerate(zip(cells, COLUMNS, strict=True)))


def rate(rounds: list[Round]) -> float:
    return len(rounds) / sum(r.round for r in rounds)


def row(label: str, style: str, rounds: list[Round], ratios: list[str]) -> str:
    pause = [r.pause for r in rounds]
    return line([
        label, style, str(len(rounds)), ms(percentile(pause, 50)), ms(percentile(pause, 99)),
        *(ms(statistics.median(getattr(r, part) for r in rounds)) for part in ("own", "qmp", "copy")),
        f"{rate(rounds):.0f}", *ratios,
    ])


def report(results: list[Result], loads: tuple[str, str]) -> None:
    print(f"machine: {machine(results[0].qemu_version)}; load average {loads[0]} at start, {loads[1]} at end")
    print(f"memory image {IMAGE_PAGES * PAGE_SIZE // MiB} MiB per side (none for disk-only), pages dirtied "
          f"at random; one replicated raw disk of {DISK_SIZE // MiB} MiB; QEMU -machine none")
    print("both styles: colod's engines, guest, devices and stream over TCP on 127.0.0.1, a fresh QEMU pair "
          "each; only the QMP object differs;")
    print("rounds interleaved: per scenario both pairs are up and their checkpoints alternate "
          f"({COLOD}, {LIBXL}, {COLOD}, ...);")
    print(f"the first (full) checkpoint and {WARMUP} warm-up rounds of each style are not counted")
    print()
    print(line([name for name, _ in COLUMNS]))
    for r in results:
        colod, libxl = r.rounds[COLOD], r.rounds[LIBXL]
        p50_ratio = percentile([x.pause for x in libxl], 50) / percentile([x.pause for x in colod], 50)
        print(row(r.scenario.label, COLOD, colod, ["", ""]))
        print(row("", LIBXL, libxl, [f"{p50_ratio:.2f}", f"{rate(colod) / rate(libxl):.2f}"]))
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
        f"p50 ratio: {LIBXL} p50 / {COLOD} p50; ck/s ratio: {COLOD} ck/s / {LIBXL} ck/s (above 1: colod is "
        "faster)",
        f"both nodes share this process: {LIBXL} blocks it, so the secondary's suspend step (one "
        "query-xen-replication-status) waits for the primary's stop and device-state save instead of "
        "overlapping them as on two hosts",
    ):
        print(text)


async def bench(reactor: Any, options: argparse.Namespace) -> None:
    count = options.checkpoints or (QUICK if options.quick else None)
    shm = Path("/dev/shm")  # the overlays, which every checkpoint empties, belong on tmpfs
    started = load_average()
    with tempfile.TemporaryDirectory(prefix="colod-bench-", dir=shm if shm.is_dir() else None) as tmp:
        results = []
        for scenario in scenarios(count):
            print(f"{scenario.label}: {scenario.checkpoints} checkpoints of each style...", file=sys.stderr)
            results.append(await run(reactor, Path(tmp), scenario))
    report(results, (started, load_average()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--checkpoints", type=int, metavar="N", help="measured checkpoints per scenario")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK} checkpoints per scenario")
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
