"""What only the start can tell ends ``twistd colod`` within seconds, with one line and exit status 1.

Each case is a real daemon on a valid configuration and a real fault of
this host: a peer port another socket holds, an interface address this host
lacks, a state directory on a read-only or full filesystem (a tmpfs mounted
in a mount namespace of the daemon's own), a memory image that is missing or
broken, a systemd socket never passed.  The control, the same daemon without
a fault, starts and runs: the exits are the faults' doing.  A port taken
after the start, once QEMU is reached, ends the daemon the same way.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import attrs
import pytest

from colod.guest.memory_image import MemoryImage, dirty_map_path
from colod.testing.processes import free_port
from tests.rig import TWISTD, QemuTestCase, wait_for_text
from tests.test_config import GOOD, LISTEN

#: How long colod may take from its start to its exit, on a loaded machine.
DEADLINE = 10.0
#: The one line a failed start logs ends so.
STOPS = "; colod stops (exit status 1)"
#: Pages of the test's memory image.
PAGES = 16

#: A change of the configuration's text: (old, new).
Change = tuple[str, str]


@contextmanager
def nothing(directory: Path, port: int) -> Iterator[list[Change]]:
    yield []


@contextmanager
def port_in_use(directory: Path, port: int) -> Iterator[list[Change]]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        yield []


@contextmanager
def interface_elsewhere(directory: Path, port: int) -> Iterator[list[Change]]:
    yield [("interface=127.0.0.1", "interface=192.0.2.1")]  # TEST-NET-1: no host has it


@contextmanager
def systemd_socket_not_passed(directory: Path, port: int) -> Iterator[list[Change]]:
    yield [(f"tcp:{port}:interface=127.0.0.1", "systemd:domain=INET:index=0")]


@contextmanager
def memory_image_missing(directory: Path, port: int) -> Iterator[list[Change]]:
    (directory / "guest1.ram").unlink()
    yield []


@contextmanager
def memory_image_broken(directory: Path, port: int) -> Iterator[list[Change]]:
    with open(dirty_map_path(directory / "guest1.ram"), "r+b") as dirty:
        dirty.truncate(PAGES // 2)
    yield []


def in_namespace(mount: str) -> tuple[str, ...]:
    """Run the daemon in a mount namespace of its own, where the shell line ``mount`` has run."""
    return ("unshare", "--mount", "--propagation", "private", "sh", "-ec", f'{mount}\nexec "$@"', "sh")


TMPFS_ON_STATE = 'mkdir -p "@DIR@/state"; mount -t tmpfs -o {options} colod-test "@DIR@/state"'


@attrs.frozen
class Fault:
    """One fault of the host and what colod must say of it, after the configuration's path."""

    name: str
    #: Makes the fault for the test's directory and the daemon's peer port, for as long as the
    #: daemon runs; gives the changes to the configuration it needs.
    make: Callable[[Path, int], AbstractContextManager[list[Change]]]
    #: @DIR@ and @PORT@ are filled in.
    said: str
    #: Runs the daemon under this command; @DIR@ is filled in.
    wrapper: tuple[str, ...] = ()


FAULTS = [
    Fault("peer_port_in_use", port_in_use,
          "peer.listen: cannot listen on 127.0.0.1 port @PORT@: Address already in use"),
    Fault("interface_not_on_this_host", interface_elsewhere,
          "peer.listen: cannot listen on 192.0.2.1 port @PORT@: Cannot assign requested address"),
    Fault("systemd_socket_not_passed", systemd_socket_not_passed,
          "peer.listen: systemd passed colod no socket at index 0 (LISTEN_FDS: unset); start colod from its "
          "socket unit, or listen on tcp"),
    Fault("state_dir_read_only", nothing,
          "colod.state_dir: cannot write in @DIR@/state/guest1: Read-only file system",
          in_namespace(TMPFS_ON_STATE.format(options="ro"))),
    Fault("state_dir_full", nothing,
          "colod.state_dir: cannot write in @DIR@/state/guest1: No space left on device",
          in_namespace(TMPFS_ON_STATE.format(options="size=16k") + '; mkdir "@DIR@/state/guest1"; '
                       'cat /dev/zero > "@DIR@/state/fill" 2>/dev/null || true')),
    Fault("memory_image_missing", memory_image_missing,
          "domain[0].memory_image: cannot use the memory image: @DIR@/guest1.ram: No such file or directory"),
    Fault("memory_image_broken", memory_image_broken,
          f"domain[0].memory_image: cannot use the memory image: @DIR@/guest1.ram: {PAGES * 4096} bytes of "
          f"RAM but a dirty map of {PAGES // 2} pages"),
]


def configuration(directory: Path, port: int, qmp_socket: str) -> str:
    """GOOD for a secondary in ``directory``, listening on ``port``, with a memory image there."""
    MemoryImage.create(directory / "guest1.ram", PAGES).close()
    return GOOD.replace(LISTEN, f'listen = "tcp:{port}:interface=127.0.0.1"').replace(
        "/run/guest1.qmp", qmp_socket).replace(
        'node_name = "dom0-b"', f'node_name = "dom0-b"\nstate_dir = "{directory}/state"').replace(
        "nbd_port = 8889", f'nbd_port = 8889\nmemory_image = "{directory}/guest1.ram"')


def start(directory: Path, text: str, wrapper: tuple[str, ...] = ()) -> tuple[subprocess.Popen[bytes], Path]:
    """twistd colod on the configuration ``text``, logging to a file; killed if a test leaves it."""
    path = directory / "colod.toml"
    path.write_text(text)
    log = directory / "colod.log"
    with open(log, "w") as out:
        daemon = subprocess.Popen([*wrapper, TWISTD, "-n", "--pidfile=", "colod", "--config", str(path)],
                                  stdout=out, stderr=subprocess.STDOUT)
    return daemon, log


def the_error(output: str) -> list[str]:
    """The log's error lines, without their time and source."""
    return [line.split("] ", 1)[1] for line in output.splitlines()
            if "#critical]" in line or "#error]" in line]


def kill(daemon: subprocess.Popen[bytes]) -> None:
    if daemon.poll() is None:
        daemon.kill()
        daemon.wait()


@pytest.mark.parametrize("fault", FAULTS, ids=lambda fault: fault.name)
def test_fault_ends_the_daemon(fault: Fault, tmp_path: Path) -> None:
    """The daemon exits 1 within DEADLINE seconds, its one error line naming file, key and fault."""
    port = free_port()
    text = configuration(tmp_path, port, f"{tmp_path}/guest1.qmp")
    with fault.make(tmp_path, port) as changes:
        for old, new in changes:
            text = text.replace(old, new)
        started = time.monotonic()
        daemon, log = start(tmp_path, text, tuple(p.replace("@DIR@", str(tmp_path)) for p in fault.wrapper))
        try:
            status = daemon.wait(DEADLINE)
        finally:
            kill(daemon)
        took = time.monotonic() - started
    output = log.read_text()
    said = fault.said.replace("@DIR@", str(tmp_path)).replace("@PORT@", str(port))
    assert (status, took < DEADLINE) == (1, True), output
    assert the_error(output) == [f"{tmp_path}/colod.toml: {said}{STOPS}"], output
    assert "Traceback" not in output


def test_control_without_a_fault_runs(tmp_path: Path) -> None:
    """The same daemon on a host without the faults passes its start and runs until stopped."""
    daemon, log = start(tmp_path, configuration(tmp_path, free_port(), f"{tmp_path}/guest1.qmp"))
    try:
        wait_for_text(log, "connecting to QEMU at", DEADLINE)  # past colod.startup's checks
        time.sleep(1.0)
        assert daemon.poll() is None, log.read_text()
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(DEADLINE) == 0, log.read_text()
    finally:
        kill(daemon)
    assert the_error(log.read_text()) == []


class LaterFailureTests(QemuTestCase):
    """A fault met once QEMU is reached ends the daemon the same way: no idling."""

    def test_peer_port_taken_after_start(self) -> None:
        """The port is free at start and taken before the domain's link listens: colod exits 1."""
        port = free_port()
        late = self.workdir / "late.qmp"  # where QEMU's socket appears once the port is taken
        daemon, log = start(self.workdir, configuration(self.workdir, port, str(late)))
        self.addCleanup(kill, daemon)
        qemu = self.start_qemu("guest1")
        wait_for_text(log, "connecting to QEMU at", DEADLINE)
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", port))
            holder.listen()
            late.symlink_to(qemu.qmp_socket)
            status = daemon.wait(DEADLINE)
        output = log.read_text()
        self.assertEqual(status, 1, output)
        self.assertEqual(the_error(output), [
            f"domain guest1: cannot listen for the primary at tcp:{port}:interface=127.0.0.1: Couldn't "
            f"listen on 127.0.0.1:{port}: [Errno 98] Address already in use.{STOPS}"])
        self.assertNotIn("Traceback", output)
        self.assertTrue(qemu.running())  # colod leaves QEMU as it is
