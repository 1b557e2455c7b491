# -*- test-case-name: tests.guest.test_writer -*-
"""
A stand-in guest that changes its disk and its memory and can be checked.

Run as C{python -m colod.testing.writer} against a memory image
(L{colod.guest.memory_image}) and a QEMU's disk node, it plays the guest for
the demo, the tests and the benchmarks.  Each operation k, inside one
L{MemoryImage.guest_turn} so that a checkpoint never sees it half-done,

  1. fills disk block b(k) with pattern byte p(k) (HMP C{qemu-io} over QMP),
  2. fills memory page m(k) (never page 0) with k, and
  3. writes the header in page 0: magic, seed, block size, disk size and k,
     the count of completed operations.

b, p and m are drawn from splitmix64 seeded with the seed, so any copy of the
state (a memory image and a raw disk image) can be checked byte for byte with
L{verify}: its header says how many operations it holds, and L{Workload}
rebuilds what they leave.
"""

from __future__ import annotations

import argparse
import os
import signal
import struct
import sys
import time
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from types import FrameType

import attrs

from colod.guest.memory_image import MemoryImage
from colod.protocol.wire import PAGE_SIZE
from colod.testing.qmp_blocking import QMPClient, QMPError

MAGIC = b"COLODWRT"
#: Page 0 starts with: magic, seed, block size, disk size, completed operations.
_HEADER = struct.Struct("<8sQQQQ")
#: How many mismatching pages and blocks a verdict lists.
SHOWN = 10

_MASK = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15


def splitmix64(seed: int, n: int) -> int:
    """Output C{n} of the splitmix64 generator seeded with C{seed}: random access, so replays are cheap."""
    z = (seed + n * _GAMMA) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


@attrs.frozen
class Op:
    """What operation C{k} writes."""

    k: int
    block: int
    pattern: int
    page: int


@attrs.frozen
class Header:
    """Page 0 of a written image."""

    seed: int
    block: int
    disk_size: int
    ops: int

    def pack(self) -> bytes:
        return _HEADER.pack(MAGIC, self.seed, self.block, self.disk_size, self.ops)

    @classmethod
    def unpack(cls, page: bytes) -> Header | None:
        """The header at the start of C{page}; None without the magic (a fresh image)."""
        magic, *fields = _HEADER.unpack_from(page)
        return cls(*fields) if magic == MAGIC else None


@attrs.frozen
class Workload:
    """The writer's operations for one seed and geometry, as pure functions of k."""

    seed: int = attrs.field(validator=[attrs.validators.ge(0), attrs.validators.lt(1 << 64)])
    pages: int = attrs.field(validator=attrs.validators.ge(2))
    disk_size: int = attrs.field(validator=attrs.validators.gt(0))
    block: int = attrs.field(default=4096, validator=attrs.validators.gt(0))

    def __attrs_post_init__(self) -> None:
        if self.disk_size < self.block:
            raise ValueError(f"a disk of {self.disk_size} bytes holds no block of {self.block}")

    @property
    def blocks(self) -> int:
        return self.disk_size // self.block

    def op(self, k: int) -> Op:
        """Operation C{k} (from 1): the generator's outputs 2k and 2k+1 pick the disk and the memory part."""
        disk, memory = splitmix64(self.seed, 2 * k), splitmix64(self.seed, 2 * k + 1)
        return Op(k, disk % self.blocks, 1 + (disk >> 40) % 255, 1 + memory % (self.pages - 1))

    @staticmethod
    def page(k: int) -> bytes:
        """The content operation C{k} gives its page."""
        return k.to_bytes(8, "little") * (PAGE_SIZE // 8)

    def header(self, ops: int) -> Header:
        return Header(self.seed, self.block, self.disk_size, ops)

    def expected_state(self, ops: int, disk_base: int) -> tuple[bytearray, bytearray]:
        """
        The memory image and the disk after C{ops} operations, from a zeroed
        image and a disk whose every byte is C{disk_base}.  Only the last
        writer of each page and block is applied.
        """
        last_page: dict[int, int] = {}
        last_block: dict[int, int] = {}
        for k in range(1, ops + 1):
            op = self.op(k)
            last_page[op.page] = k
            last_block[op.block] = op.pattern
        memory = bytearray(self.pages * PAGE_SIZE)
        if ops:
            memory[:_HEADER.size] = self.header(ops).pack()
        for pfn, k in last_page.items():
            memory[pfn * PAGE_SIZE : (pfn + 1) * PAGE_SIZE] = self.page(k)
        disk = bytearray([disk_base]) * self.disk_size
        for block, pattern in last_block.items():
            disk[block * self.block : (block + 1) * self.block] = bytes([pattern]) * self.block
        return memory, disk


@attrs.frozen
class Verdict:
    """How a copy of the state compares with what the writer had done after C{ops} operations."""

    ops: int
    bad_pages: tuple[int, ...]
    bad_blocks: tuple[int, ...]

    @property
    def ok(self) -> bool:
        return not self.bad_pages and not self.bad_blocks

    @property
    def summary(self) -> str:
        if self.ok:
            return f"{self.ops} ops: memory and disk match"
        wrong = [f"{what} {', '.join(map(str, which))}" for what, which in
                 (("pages", self.bad_pages), ("blocks", self.bad_blocks)) if which]
        return f"{self.ops} ops: differ at {'; '.join(wrong)}"


def _differing(actual: bytes, expected: bytes, size: int) -> tuple[int, ...]:
    """The first L{SHOWN} indexes of C{size}-byte units where the two differ."""
    if actual == expected:
        return ()
    bad = []
    with memoryview(actual) as a, memoryview(expected) as e:
        for at in range(0, max(len(a), len(e)), size):
            if a[at : at + size] != e[at : at + size]:
                bad.append(at // size)
                if len(bad) == SHOWN:
                    break
    return tuple(bad)


def verify(image_path: str | os.PathLike[str], disk_path: str | os.PathLike[str], disk_base: int,
           seed: int = 0, block: int = 4096) -> Verdict:
    """
    Compare a memory image and a raw disk image with what the writer leaves
    after the operation count in the image's header (0 without a header);
    the geometry is the files' sizes.

    A header that is not this workload's, or whose count the page of its last
    operation contradicts, is reported as page 0 alone: a corrupt count could
    ask for an endless replay.
    """
    memory, disk = Path(image_path).read_bytes(), Path(disk_path).read_bytes()
    header = Header.unpack(memory)
    ops = header.ops if header else 0
    workload = Workload(seed, len(memory) // PAGE_SIZE, len(disk), block)
    if ops:
        last = workload.op(ops).page * PAGE_SIZE
        if header != workload.header(ops) or memory[last : last + PAGE_SIZE] != workload.page(ops):
            return Verdict(ops, (0,), ())
    expected_memory, expected_disk = workload.expected_state(ops, disk_base)
    return Verdict(ops, _differing(memory, expected_memory, PAGE_SIZE),
                   _differing(disk, expected_disk, block))


class _Stopped(Exception):
    """SIGTERM arrived between operations."""


class _Termination:
    """The SIGTERM handler: stop at once between operations, and after the current one during it."""

    def __init__(self) -> None:
        self.requested = False
        self.in_op = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        if not self.in_op:
            raise _Stopped


def run(image_path: str, qmp_path: str, node: str, disk_size: int, seed: int = 0, block: int = 4096,
        ops: int | None = None, interval: float = 0.0) -> int:
    """
    Do C{ops} more operations (forever if None), continuing from the count in
    the image's header; returns the count reached.  SIGTERM stops it.

    @raise QMPError: QEMU refused a disk write or did not answer.
    @raise ValueError: the image holds another workload's header.
    """
    with closing(MemoryImage.open(image_path)) as image, closing(QMPClient(qmp_path)) as qmp:
        workload = Workload(seed, image.pages, disk_size, block)
        header = Header.unpack(image.read(0))
        done = header.ops if header else 0
        if header is not None and header != workload.header(done):
            raise ValueError(f"{image_path} was written by another workload: {header}")
        last = None if ops is None else done + ops
        termination = _Termination()
        signal.signal(signal.SIGTERM, termination)
        try:
            while not termination.requested and done != last:
                with image.guest_turn():
                    termination.in_op = True
                    _operate(image, qmp, node, workload, done + 1)
                    done += 1
                    termination.in_op = False
                if done % 1000 == 0:
                    print(f"writer: {done} ops", flush=True)
                if interval:
                    time.sleep(interval)
        except _Stopped:
            pass
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return done


def _operate(image: MemoryImage, qmp: QMPClient, node: str, workload: Workload, k: int) -> None:
    """Operation C{k}: its disk block, its page, then the header that counts it done."""
    op = workload.op(k)
    command = f"write -P {op.pattern:#x} {op.block * workload.block} {workload.block}"
    reply = qmp.execute("human-monitor-command", {"command-line": f'qemu-io {node} "{command}"'})
    if reply:
        raise QMPError(f"qemu-io {node} {command!r} failed: {reply.strip()}")
    image.write(op.page, workload.page(k))
    image.write(0, workload.header(k).pack())


def _number(text: str) -> int:
    """An integer in any base Python reads: 0x11 as well as 17."""
    return int(text, 0)


def _arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m colod.testing.writer",
        description="A stand-in guest that changes its disk and its memory, and its checker.")
    commands = parser.add_subparsers(dest="command", required=True)
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--image", required=True, help="the memory image")
    shared.add_argument("--seed", type=_number, default=0)
    shared.add_argument("--block", type=_number, default=4096, help="disk block size in bytes")
    writing = commands.add_parser("run", parents=[shared], help="play the guest (the default)")
    writing.add_argument("--qmp", required=True, help="a QMP unix socket of the primary QEMU, for the writer")
    writing.add_argument("--node", required=True, help="the guest disk's node, e.g. colo-disk0")
    writing.add_argument("--disk-size", type=_number, required=True, help="in bytes")
    writing.add_argument("--ops", type=_number, help="stop after this many operations (default: never)")
    writing.add_argument("--interval", type=float, default=0.0, help="seconds between operations")
    checking = commands.add_parser("verify", parents=[shared], help="check a copy of the state")
    checking.add_argument("--disk", required=True, help="the raw disk image")
    checking.add_argument("--disk-base", type=_number, required=True, help="the byte the disk started with")
    if not argv or argv[0] not in {"run", "verify", "-h", "--help"}:
        argv = ["run", *argv]
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "verify":
            verdict = verify(args.image, args.disk, args.disk_base, args.seed, args.block)
            print(verdict.summary)
            return 0 if verdict.ok else 1
        done = run(args.image, args.qmp, args.node, args.disk_size, args.seed, args.block, args.ops,
                   args.interval)
    except (QMPError, OSError, ValueError) as e:
        print(f"writer: {e}", file=sys.stderr)
        return 1
    print(f"writer: stopped after {done} ops", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
