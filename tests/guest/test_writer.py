"""The guest writer: its workload replayed, and the real writer against a QEMU disk, checked and suspended."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from twisted.internet import reactor

from colod.guest.memory_image import MemoryImage, RunControl
from colod.protocol.wire import PAGE_SIZE
from colod.testing.writer import Header, Verdict, Workload, splitmix64, verify
from tests.rig import QemuTestCase, async_test, sleep

PAGES = 256
DISK_SIZE = 1 << 20
BASE = 0x11
BLOCK = 4096
#: How long a writer run of a few thousand operations may take on a loaded machine.
RUN_TIMEOUT = 120


def test_splitmix64_is_the_reference_generator() -> None:
    """The first outputs of splitmix64 seeded with 0, as its reference implementation gives them."""
    first = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    assert [splitmix64(0, n) for n in (1, 2, 3)] == first


def _naive_replay(workload: Workload, ops: int, base: int) -> tuple[bytearray, bytearray]:
    """Every operation applied in order, as the writer does them."""
    memory, disk = bytearray(workload.pages * PAGE_SIZE), bytearray([base]) * workload.disk_size
    size = workload.block
    for k in range(1, ops + 1):
        op = workload.op(k)
        assert 0 <= op.block < workload.blocks and 1 <= op.pattern <= 255 and 1 <= op.page < workload.pages
        disk[op.block * size : (op.block + 1) * size] = bytes([op.pattern]) * size
        memory[op.page * PAGE_SIZE : (op.page + 1) * PAGE_SIZE] = workload.page(k)
        header = workload.header(k).pack()
        memory[: len(header)] = header
    return memory, disk


@pytest.mark.parametrize("workload", [
    Workload(0, 2, BLOCK),
    Workload(1, 7, 10 * 512 + 100, block=512),
    Workload((1 << 64) - 1, 64, 64 * BLOCK),
])
def test_expected_state_is_a_naive_replay(workload: Workload) -> None:
    for ops in (0, 1, 2, 17, 300):
        assert workload.expected_state(ops, BASE) == _naive_replay(workload, ops, BASE)


def test_the_header_round_trips() -> None:
    header = Workload(5, 4, DISK_SIZE).header(123)
    assert Header.unpack(header.pack() + bytes(PAGE_SIZE)) == header
    assert Header.unpack(bytes(PAGE_SIZE)) is None


def test_bad_workloads_are_refused() -> None:
    with pytest.raises(ValueError, match=r"^a disk of 4095 bytes holds no block of 4096$"):
        Workload(0, 4, 4095)
    with pytest.raises(ValueError, match=r"^'pages' must be >= 2: 1$"):
        Workload(0, 1, DISK_SIZE)
    with pytest.raises(ValueError, match=r"^'seed' must be < 18446744073709551616: 18446744073709551616$"):
        Workload(1 << 64, 4, DISK_SIZE)


def test_a_fresh_state_verifies_as_zero_ops(tmp_path: Path) -> None:
    MemoryImage.create(tmp_path / "ram", 4).close()
    (tmp_path / "disk").write_bytes(bytes([BASE]) * 3 * BLOCK)
    assert verify(tmp_path / "ram", tmp_path / "disk", BASE) == Verdict(0, (), ())
    assert verify(tmp_path / "ram", tmp_path / "disk", BASE + 1) == Verdict(0, (), (0, 1, 2))


def test_a_header_that_cannot_be_trusted_is_not_replayed(tmp_path: Path) -> None:
    """A count of 10**15 would take days to replay: the last op's page shows it wrong at once."""
    workload = Workload(0, 4, 3 * BLOCK)
    image = MemoryImage.create(tmp_path / "ram", 4)
    (tmp_path / "disk").write_bytes(bytes([BASE]) * 3 * BLOCK)
    image.write(0, workload.header(10**15).pack())
    assert verify(tmp_path / "ram", tmp_path / "disk", BASE) == Verdict(10**15, (0,), ())
    image.write(0, Workload(1, 4, 3 * BLOCK).header(1).pack())  # another seed's header
    image.write(workload.op(1).page, workload.page(1))
    assert verify(tmp_path / "ram", tmp_path / "disk", BASE) == Verdict(1, (0,), ())
    image.close()


def test_the_summary_names_what_differs() -> None:
    assert Verdict(12, (), ()).summary == "12 ops: memory and disk match"
    assert Verdict(12, (0, 3), ()).summary == "12 ops: differ at pages 0, 3"
    assert Verdict(12, (3,), (5, 9)).summary == "12 ops: differ at pages 3; blocks 5, 9"


class WriterTests(QemuTestCase):
    """The writer process against a QEMU whose raw disk node it writes through its own monitor."""

    def setUp(self) -> None:
        super().setUp()
        self.image, self.disk = self.workdir / "ram", self.workdir / "disk.img"
        MemoryImage.create(self.image, PAGES).close()
        self.disk.write_bytes(bytes([BASE]) * DISK_SIZE)
        self.writer_qmp = self.workdir / "writer.qmp"
        blockdev = {"driver": "raw", "node-name": "colo-disk0",
                    "file": {"driver": "file", "filename": str(self.disk)}}
        self.start_qemu("primary", [
            "-blockdev", json.dumps(blockdev),
            "-chardev", f"socket,id=writer,path={self.writer_qmp},server=on,wait=off",
            "-mon", "chardev=writer,mode=control",
        ])

    def command(self, *args: str, node: str = "colo-disk0") -> list[str]:
        return [sys.executable, "-m", "colod.testing.writer", "--image", str(self.image),
                "--qmp", str(self.writer_qmp), "--node", node, "--disk-size", str(DISK_SIZE), *args]

    def run_writer(self, *args: str, node: str = "colo-disk0") -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*args, node=node), capture_output=True, text=True,
                              timeout=RUN_TIMEOUT)

    def verify_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "colod.testing.writer", "verify", "--image", str(self.image),
                   "--disk", str(self.disk), "--disk-base", hex(BASE), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT)

    def test_a_run_verifies_and_corruption_is_named(self) -> None:
        done = self.run_writer("--ops", "1200", "--seed", "7")
        self.assertEqual((done.returncode, done.stderr), (0, ""))
        self.assertEqual(done.stdout, "writer: 1000 ops\nwriter: stopped after 1200 ops\n")
        self.assertEqual(verify(self.image, self.disk, BASE, seed=7), Verdict(1200, (), ()))
        checked = self.verify_cli("--seed", "7")
        self.assertEqual((checked.returncode, checked.stdout), (0, "1200 ops: memory and disk match\n"))
        self.assertEqual(self.verify_cli().returncode, 1)  # another seed: another workload

        for path, at in ((self.disk, 5 * BLOCK + 17), (self.image, 3 * PAGE_SIZE + 100)):
            with open(path, "r+b") as f:
                f.seek(at)
                byte = f.read(1)
                f.seek(at)
                f.write(bytes([byte[0] ^ 0xFF]))
        self.assertEqual(verify(self.image, self.disk, BASE, seed=7), Verdict(1200, (3,), (5,)))
        checked = self.verify_cli("--seed", "7")
        self.assertEqual((checked.returncode, checked.stdout), (1, "1200 ops: differ at pages 3; blocks 5\n"))

    def test_a_run_continues_from_the_header(self) -> None:
        self.assertEqual(self.run_writer("--ops", "50").returncode, 0)
        again = self.run_writer("--ops", "50", "--interval", "0.001")
        self.assertEqual(again.stdout, "writer: stopped after 100 ops\n")
        self.assertEqual(verify(self.image, self.disk, BASE), Verdict(100, (), ()))
        other = self.run_writer("--ops", "1", "--seed", "1")
        self.assertEqual(other.returncode, 1)
        self.assertIn("was written by another workload", other.stderr)

    def test_a_refused_write_stops_the_writer(self) -> None:
        done = self.run_writer("--ops", "5", node="nope")
        self.assertEqual(done.returncode, 1)
        self.assertIn("qemu-io nope", done.stderr)
        self.assertIn("nope", done.stderr.split("failed:")[1])
        self.assertEqual(verify(self.image, self.disk, BASE), Verdict(0, (), ()))  # nothing half-done

    def ops(self, image: MemoryImage) -> int:
        header = Header.unpack(image.read(0))
        return header.ops if header else 0

    async def ops_pass(self, image: MemoryImage, count: int) -> int:
        """The op count, once it is beyond C{count}."""
        deadline = time.monotonic() + 30
        while (ops := self.ops(image)) <= count:
            self.assertLess(time.monotonic(), deadline, f"the writer did not pass {count} ops within 30 s")
            await sleep(0.01)
        return ops

    @async_test
    async def test_a_suspended_writer_is_still_and_its_state_whole(self) -> None:
        with open(self.workdir / "writer.out", "wb") as out:
            writer = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT)
        self.addCleanup(writer.wait, 10)
        self.addCleanup(writer.kill)
        image = MemoryImage.open(self.image)
        self.addCleanup(image.close)
        control = RunControl(self.image)
        self.addCleanup(control.close)

        ops = await self.ops_pass(image, 0)
        for _ in range(5):
            await control.suspend(reactor, 5)
            ops = self.ops(image)
            self.assertEqual(verify(self.image, self.disk, BASE), Verdict(ops, (), ()))
            control.resume()
            ops = await self.ops_pass(image, ops)

        await control.suspend(reactor, 5)
        still = self.image.read_bytes(), self.disk.read_bytes()
        await sleep(0.3)
        self.assertEqual((self.image.read_bytes(), self.disk.read_bytes()), still)
        writer.send_signal(signal.SIGTERM)  # while it waits to run: it must still stop
        self.assertEqual(writer.wait(10), 0)
        control.resume()
        self.assertEqual((self.image.read_bytes(), self.disk.read_bytes()), still)
        ops = self.ops(image)
        self.assertIn(f"writer: stopped after {ops} ops", (self.workdir / "writer.out").read_text())
        self.assertEqual(verify(self.image, self.disk, BASE), Verdict(ops, (), ()))
