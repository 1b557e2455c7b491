# -*- test-case-name: tests.test_qemu_process -*-
"""Start, watch and always reap ``qemu-system-x86_64`` processes.

Used by the test rig, ``make demo`` and the benchmarks: each needs real QEMUs
with a QMP unix socket and no guest OS.  Every process is started with a
parent-death signal, is tracked until reaped, and reap_all() kills whatever
is left, so no QEMU outlives the program that started it.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

QEMU_BINARY = "qemu-system-x86_64"
# How long a QEMU gets to greet on its QMP socket.
START_TIMEOUT = 10.0
# How long a QEMU gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 5.0

_PR_SET_PDEATHSIG = 1
_running: set[QemuProcess] = set()


class QemuStartError(Exception):
    """QEMU exited or never opened its QMP socket; carries what it printed."""


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the parent dies, so a crashed runner leaks no QEMU."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class QemuProcess:
    """One QEMU with a QMP socket, started by start() and reaped by stop() or kill()."""

    def __init__(
        self,
        workdir: str | Path,
        name: str,
        args: Sequence[str] = (),
        *,
        machine: str = "none",
        binary: str = QEMU_BINARY,
    ) -> None:
        self.workdir = Path(workdir)
        self.name = name
        self.qmp_socket = str(self.workdir / f"{name}.qmp")
        self.log_path = self.workdir / f"{name}.log"
        self.command = [
            binary, "-name", name, "-machine", machine, "-accel", "tcg",
            "-nodefaults", "-display", "none", "-S",
            "-qmp", f"unix:{self.qmp_socket},server=on,wait=off",
            *args,
        ]
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def storage_daemon(cls, workdir: str | Path, name: str) -> QemuProcess:
        """A qemu-storage-daemon: a real QEMU build whose QMP lacks the Xen COLO commands."""
        qsd = cls(workdir, name)
        qsd.command = [
            "qemu-storage-daemon",
            "--chardev", f"socket,id=qmp,path={qsd.qmp_socket},server=on,wait=off",
            "--monitor", "chardev=qmp",
        ]
        return qsd

    @property
    def pid(self) -> int:
        assert self._process is not None, "QEMU not started"
        return self._process.pid

    def start(self, timeout: float = START_TIMEOUT) -> QemuProcess:
        """Start QEMU and wait until its QMP monitor greets."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if os.path.exists(self.qmp_socket):
            os.unlink(self.qmp_socket)
        with open(self.log_path, "wb") as log:
            # stdbuf: HMP qemu-io prints to QEMU's stdout; line buffering lets
            # tests read it as soon as the command returns.
            self._process = subprocess.Popen(
                ["stdbuf", "-oL", *self.command], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
            )
        _running.add(self)
        deadline = time.monotonic() + timeout
        while not self._greets():
            if self._process.poll() is not None:
                self._forget()
                raise QemuStartError(
                    f"{self.name}: QEMU exited with status {self._process.returncode}: "
                    + self.output().strip()
                )
            if time.monotonic() > deadline:
                self.kill()
                raise QemuStartError(f"{self.name}: QEMU sent no QMP greeting within {timeout:g} s")
            time.sleep(0.01)
        return self

    def _greets(self) -> bool:
        """True once QEMU's monitor answers on its socket: the devices and drives are set up.

        The socket file appears before QEMU opens its drives, so its mere
        existence would hide a QEMU about to exit over a bad ``-drive``.
        """
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(self.qmp_socket)
                return b'"QMP"' in probe.recv(4096)
            except OSError:
                return False

    def output(self) -> str:
        """Everything QEMU has printed so far (its stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def send_signal(self, signum: int) -> None:
        """Signal QEMU (SIGSTOP and SIGCONT stand in for a hung host)."""
        if self.running():
            os.kill(self.pid, signum)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Ask QEMU to exit, kill it if it will not, and reap it; returns its status."""
        if self._process is None:
            return None
        if self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGCONT)
            self._process.terminate()
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._forget()
        return self._process.returncode

    def kill(self) -> int | None:
        """Kill QEMU at once (a crashed device model) and reap it."""
        if self._process is None:
            return None
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._forget()
        return self._process.returncode

    def _forget(self) -> None:
        _running.discard(self)

    def __repr__(self) -> str:
        state = "running" if self.running() else "not running"
        return f"<QemuProcess {self.name} {state}>"


def reap_all() -> list[str]:
    """Kill every QEMU this process started and has not reaped; returns their names."""
    left = sorted(_running, key=lambda q: q.name)
    for qemu in left:
        qemu.kill()
    return [q.name for q in left]


atexit.register(reap_all)
