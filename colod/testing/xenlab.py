# -*- test-case-name: tests.xen.test_xenlab -*-
"""Xen 4.17 with a Debian 12 dom0 in one QEMU (TCG): the lab for testing colod against a real hypervisor.

Test and lab tooling: the daemon never imports this module.

``tools/xenlab/build.sh`` builds the lab from Debian's packages into a cache
outside the clone (``$XENLAB_CACHE``, default /var/cache/colod-xenlab);
XenLab.build() runs it when the cache is not current.  XenLab.start() boots
the hypervisor (multiboot, QEMU's ``-kernel``) with dom0's kernel and
initramfs as modules, dom0's root on a virtio disk opened with
``snapshot=on`` (every boot starts from the built image; nothing a run
writes there lasts), and two 9p shares:

- ``colod``: this work tree, read-only, at /opt/colod-src in dom0.  Every
  run uses the current code: commands get ``PYTHONPATH=/opt/colod-src`` and
  colod's dependencies are in a virtualenv baked into the image,
  /opt/colod-venv.
- ``spool``: ``<run_dir>/spool``, read-write, at /opt/xenlab-spool: the
  command channel.  run() writes a bash script to ``cmd/<id>.sh`` (through a
  temporary name and a rename); dom0's xenlab-runner
  (tools/xenlab/dom0-runner.py) claims it, runs it with its own deadline and
  writes ``out/<id>.out`` and then, atomically, ``out/<id>.rc``.  No byte
  goes through the serial line, whose input Xen drops when it comes fast.

The serial console (Xen's, then dom0's) is logged to ``<run_dir>/serial.log``
and watched during every wait: a Xen or dom0 panic, or dom0's init reporting
``XENLAB-FAILED``, ends the wait at once with that line.  Its socket,
``<run_dir>/serial.sock``, has a root shell on it for looking around by hand
(``socat -,raw,echo=0 UNIX:<run_dir>/serial.sock``).

Every wait has a deadline.  QEMU is started with a parent-death signal (as
colod.testing.qemu_process does), which Linux sends when the starting *thread* ends:
start the lab from the main thread.  stop() (also on errors, at exit, and by
leaving a ``with XenLab() as lab:`` block) always reaps it.

The HVM test guest (create_guest()) is the Debian kernel with a busybox
initramfs printing ``GUEST-TICK <n>`` every 100 ms to its serial log,
/var/log/xen/<name>-serial.log in dom0; guest_ticks() reads the last n.

``python -m colod.testing.xenlab smoke`` builds if needed, boots, creates the guest,
waits for its 20th tick, checks colod and ``twistd colod`` in dom0, and prints
one summary line; ``build`` only builds; ``shell`` boots and runs the lines
it reads, one command each, in dom0.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import compileall
import json
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import attrs

from colod.testing.processes import terminate
from colod.testing.qemu_process import _die_with_parent

TREE = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = Path("/var/cache/colod-xenlab")
QEMU_BINARY = "qemu-system-x86_64"
GiB = 1 << 30

#: The VM's memory.  Xen scrubs all of it at boot, so QEMU's RSS is about this
#: much from the start.
MEMORY = "4G"
#: dom0's share of it: Xen's daemons, one device-model QEMU per guest, two
#: colods and their Python; Xen keeps the rest (about 2.5 GiB) for guests.
DOM0_MEMORY = "1536M"
#: Xen's physical CPUs (the VM's vCPUs): dom0's vCPUs are pinned to the first DOM0_CPUS, the
#: guests of /etc/xenlab/guest.cfg to the last (tools/xenlab/dom0-init, guest.cfg).  Sharing its CPU
#: with a busy dom0, the guest triple-faults in live copies under this nested Xen, and a dom0 with
#: one CPU starts colod's daemons too slowly; the guest's CPU idles while it waits, so the host's
#: two cores carry three.
CPUS = 3
DOM0_CPUS = 2
#: Free memory (MemAvailable) the host needs to start the lab: the VM's memory
#: and QEMU's own, with room for the peak seen (about 5.3 GiB).
MIN_FREE_MEMORY = 6 * GiB
#: Free space the run folder needs (the snapshot overlay of dom0's disk, logs).
MIN_RUN_SPACE = 2 * GiB
#: Deadlines, in seconds.
BUILD_TIMEOUT = 3600.0
BOOT_TIMEOUT = 300.0
COMMAND_TIMEOUT = 60.0
GUEST_TIMEOUT = 300.0
#: How much longer than a command's own deadline the host waits for its
#: result: the runner's SIGTERM-to-SIGKILL grace, its poll, the 9p round trips.
COMMAND_GRACE = 15.0
POLL_INTERVAL = 0.02
#: Xen's console line for an HVM guest's vCPU that triple-faulted (Xen then shuts the guest down).
TRIPLE_FAULT = re.compile(r"\bd(\d+)v\d+ Triple fault\b")
#: Serial console lines that mean the lab is lost.
FAILURE_MARKERS = (
    "XENLAB-FAILED:",
    "Kernel panic",
    "Panic on CPU",
    "Hardware Dom0 crashed",
    "Hardware Dom0 shutdown",
    "Attempted to kill init",
)
READY_MARKER = "XENLAB-READY"
#: What the boot prints on its way (all the strings in one line), for the timeline in milestones.
MILESTONES = (
    ("xen", ("(XEN)", "Xen version")),
    ("dom0-kernel", ("Linux version",)),
    ("dom0-init", ("XENLAB-INIT: start",)),
    ("xen-daemons", ("XENLAB-INIT: xen started",)),
    ("ready", (READY_MARKER,)),
)
GUEST_CONFIG = "/etc/xenlab/guest.cfg"
#: A whole tick line (a line being written is not taken for a smaller number).
TICK = re.compile(rb"GUEST-TICK (\d+)\r?\n")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
TAIL_LINES = 25


class XenLabError(Exception):
    """The lab could not be built, started or driven; the message says why."""


class CommandFailed(XenLabError):
    """A command in dom0 exited with a status other than 0."""

    def __init__(self, command: str, status: int, output: str) -> None:
        self.command = command
        self.status = status
        self.output = output
        what = "was killed at its deadline" if status == 124 else f"exited with status {status}"
        tail = "\n".join(output.rstrip().splitlines()[-TAIL_LINES:])
        super().__init__(f"dom0: `{command}` {what}:\n{tail}")


def _default_progress(message: str) -> None:
    print(f"xenlab: {message}", file=sys.stderr, flush=True)


def _free_memory() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise XenLabError("/proc/meminfo has no MemAvailable")


def _tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.replace("\r", "").rstrip().splitlines()[-lines:])


class XenLab:
    """One Xen lab: build() it, start() it, run() commands in dom0, stop() it."""

    def __init__(
        self,
        run_dir: str | Path | None = None,
        *,
        cache: str | Path | None = None,
        memory: str = MEMORY,
        dom0_memory: str = DOM0_MEMORY,
        tree: str | Path = TREE,
        progress: Callable[[str], None] | None = _default_progress,
    ) -> None:
        self.cache = Path(cache or os.environ.get("XENLAB_CACHE") or DEFAULT_CACHE)
        self.image = self.cache / "image"
        self.run_dir = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="colod-xenlab-"))
        self.spool = self.run_dir / "spool"
        self.serial_log = self.run_dir / "serial.log"
        #: dom0's /var/log/xen, as the host sees it.
        self.xen_log = self.spool / "xen-log"
        self.qemu_log = self.run_dir / "qemu.log"
        self.memory = memory
        self.dom0_memory = dom0_memory
        self.tree = Path(tree).resolve()
        self.tools = self.tree / "tools" / "xenlab"
        self._progress = progress or (lambda message: None)
        #: Seconds the last build() took, or None when the cache was current.
        self.build_seconds: float | None = None
        #: Seconds from QEMU's start to dom0 answering its first command.
        self.boot_seconds: float | None = None
        #: Seconds from QEMU's start at which the boot printed each milestone.
        self.milestones: dict[str, float] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._serial_offset = 0
        self._serial_tail: collections.deque[str] = collections.deque(maxlen=200)
        self._serial_partial = ""
        self._failure: str | None = None
        self._triple_faulted: list[int] = []
        self._ready = False
        self._sequence = 0
        # run() may be called from several threads at once (a long command in one).
        self._lock = threading.Lock()
        self._peak_rss = 0

    # -- building ---------------------------------------------------------

    def image_current(self) -> bool:
        """True when the cache holds an image built from tools/xenlab as it is now."""
        result = subprocess.run(
            [str(self.tools / "build.sh"), "--status"], capture_output=True, text=True,
            env=self._build_env(), timeout=60,
        )
        return result.returncode == 0

    def build(self, *, force: bool = False, timeout: float = BUILD_TIMEOUT) -> float | None:
        """Build the lab unless the cache is current; returns the seconds it took, or None if cached."""
        self.build_seconds = None
        if not force and self.image_current():
            self._progress(f"lab image in {self.image} is current")
            return None
        if os.geteuid() != 0:
            raise XenLabError("building the Xen lab needs root (debootstrap, chroot, apt-get)")
        self._progress(f"building the lab in {self.cache} (tools/xenlab/build.sh; minutes the first time)")
        started = time.monotonic()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        command = [str(self.tools / "build.sh")] + (["--force"] if force else [])
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=self._build_env(), start_new_session=True, preexec_fn=_die_with_parent,
        )
        last: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        assert process.stdout is not None
        try:
            with open(self.run_dir / "build.log", "wb") as log:
                for line in self._lines_until(process, started + timeout):
                    log.write(line)
                    text = line.decode(errors="replace").rstrip()
                    last.append(text)
                    if text.startswith("xenlab "):
                        self._progress(text[len("xenlab "):])
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if process.returncode != 0:
            raise XenLabError(
                f"tools/xenlab/build.sh failed (status {process.returncode}); "
                f"its log is {self.run_dir / 'build.log'}:\n" + "\n".join(last)
            )
        self.build_seconds = time.monotonic() - started
        return self.build_seconds

    @staticmethod
    def _lines_until(process: subprocess.Popen[bytes], deadline: float) -> Iterator[bytes]:
        """The lines a process prints, until it ends or the deadline passes (then XenLabError)."""
        assert process.stdout is not None
        pending = b""
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise XenLabError("tools/xenlab/build.sh did not finish within its deadline")
                if not selector.select(min(left, 1.0)):
                    continue
                chunk = os.read(process.stdout.fileno(), 65536)
                if not chunk:
                    if pending:
                        yield pending
                    return
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line + b"\n"

    def _build_env(self) -> dict[str, str]:
        return dict(os.environ, XENLAB_CACHE=str(self.cache))

    # -- starting and stopping -------------------------------------------

    def check_host(self) -> None:
        """Raise XenLabError, saying what is missing, when this machine cannot run the lab."""
        if shutil.which(QEMU_BINARY) is None:
            raise XenLabError(f"{QEMU_BINARY} is not installed (apt-get install qemu-system-x86)")
        free = _free_memory()
        if free < MIN_FREE_MEMORY:
            raise XenLabError(
                f"only {free / GiB:.1f} GiB of memory available; the Xen lab needs "
                f"{MIN_FREE_MEMORY / GiB:.0f} GiB (a {self.memory} VM that Xen scrubs whole)"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        space = shutil.disk_usage(self.run_dir).free
        if space < MIN_RUN_SPACE:
            raise XenLabError(
                f"only {space / GiB:.1f} GiB free in {self.run_dir}; "
                f"the lab needs {MIN_RUN_SPACE / GiB:.0f} GiB"
            )
        for name in ("xen", "vmlinuz", "initrd.img", "dom0.img"):
            if not (self.image / name).is_file():
                raise XenLabError(f"no lab image in {self.image} (no {name}): build it with `make xenlab`")
        for path in (self.image, self.tree, self.run_dir):
            if "," in str(path) or " " in str(path):
                raise XenLabError(f"{path}: QEMU's -initrd and -virtfs cannot take a path with ',' or ' '")
        if len(str(self.run_dir / "serial.sock")) > 100:
            raise XenLabError(f"{self.run_dir}: too long a path for the serial console's unix socket")

    def _compile_tree(self) -> None:
        """Bring the work tree's bytecode up to date on the host.

        dom0's Python is Debian 12's 3.11, as the host's, so it uses these
        __pycache__ files; it cannot write its own to the read-only share, and
        compiling colod at every import costs seconds under TCG.
        """
        for sub in ("colod", "twisted/plugins"):
            compileall.compile_dir(self.tree / sub, quiet=2)

    def qemu_command(self) -> list[str]:
        xen_args = (
            f"console=com1 com1=115200,8n1 dom0_mem={self.dom0_memory},max:{self.dom0_memory} "
            f"dom0_max_vcpus={DOM0_CPUS} loglvl=all guest_loglvl=all console_timestamps=boot noreboot"
        )
        dom0_args = "root=/dev/vda rw console=hvc0 earlyprintk=xen quiet init=/sbin/xenlab-init"
        return [
            QEMU_BINARY, "-name", "colod-xenlab",
            "-machine", "q35,accel=tcg", "-cpu", "qemu64,+svm,+npt",
            "-smp", str(CPUS), "-m", self.memory,
            "-nodefaults", "-display", "none", "-no-reboot",
            "-chardev", f"socket,id=serial0,path={self.run_dir / 'serial.sock'},server=on,wait=off,"
                        f"logfile={self.serial_log}",
            "-serial", "chardev:serial0",
            "-drive", f"file={self.image / 'dom0.img'},if=none,id=root,format=raw,snapshot=on,cache=unsafe",
            "-device", "virtio-blk-pci,drive=root",
            "-virtfs", f"local,path={self.tree},mount_tag=colod,security_model=none,readonly=on",
            "-virtfs", f"local,path={self.spool},mount_tag=spool,security_model=none",
            "-kernel", str(self.image / "xen"),
            "-append", xen_args,
            "-initrd", f"{self.image / 'vmlinuz'} {dom0_args},{self.image / 'initrd.img'}",
        ]

    def start(self, timeout: float = BOOT_TIMEOUT) -> XenLab:
        """Boot the lab and wait until dom0 answers a command; records boot_seconds."""
        if self._process is not None:
            raise XenLabError("the lab is already started")
        self.check_host()
        if not self.image_current():
            raise XenLabError(
                f"the lab image in {self.image} is older than tools/xenlab: rebuild it with `make xenlab`"
            )
        self._compile_tree()
        # A fresh spool: results of an earlier run in this folder would pass for this run's.
        shutil.rmtree(self.spool, ignore_errors=True)
        for sub in ("cmd", "run", "out", "files", "xen-log"):
            (self.spool / sub).mkdir(parents=True)
        self.serial_log.unlink(missing_ok=True)
        self._progress(f"booting Xen in QEMU (run folder {self.run_dir})")
        self._started_at = time.monotonic()
        with open(self.qemu_log, "wb") as log:
            self._process = subprocess.Popen(
                self.qemu_command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                # snapshot=on puts its temporary overlay in TMPDIR: here, with the rest of the run.
                env=dict(os.environ, TMPDIR=str(self.run_dir)), preexec_fn=_die_with_parent,
            )
        _running.add(self)
        try:
            deadline = self._started_at + timeout
            while "ready" not in self.milestones:
                self._watch(f"dom0 to boot ({READY_MARKER} on the console)", deadline)
                time.sleep(0.2)
            self._ready = True
            self.run("true", timeout=max(1.0, deadline - time.monotonic()))
            self.boot_seconds = time.monotonic() - self._started_at
        except BaseException:
            self.stop()
            raise
        timeline = ", ".join(f"{name} {seconds:.1f}" for name, seconds in self.milestones.items())
        self._progress(f"dom0 ready after {self.boot_seconds:.1f} s (console, in seconds: {timeline})")
        return self

    def _read_serial(self) -> None:
        """Take in what the console printed since the last look; note milestones and failures."""
        with self._lock:
            self._read_serial_locked()

    def _read_serial_locked(self) -> None:
        try:
            with open(self.serial_log, "rb") as f:
                f.seek(self._serial_offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        if not chunk:
            return
        self._serial_offset += len(chunk)
        now = time.monotonic() - self._started_at
        text = self._serial_partial + chunk.decode(errors="replace").replace("\r", "")
        *lines, self._serial_partial = text.split("\n")
        for line in lines:
            self._serial_tail.append(line)
            for name, markers in MILESTONES:
                if name not in self.milestones and all(marker in line for marker in markers):
                    self.milestones[name] = now
            if any(marker in line for marker in FAILURE_MARKERS):
                self._failure = line
            if fault := TRIPLE_FAULT.search(line):
                self._triple_faulted.append(int(fault.group(1)))

    def triple_faulted(self) -> list[int]:
        """The domids of the guests whose vCPU triple-faulted so far, in order, as Xen's console said."""
        self._read_serial()
        return list(self._triple_faulted)

    def serial_tail(self, lines: int = TAIL_LINES) -> str:
        """The console's last lines."""
        self._read_serial()
        return "\n".join(list(self._serial_tail)[-lines:] + [self._serial_partial])

    def _watch(self, waiting_for: str, deadline: float) -> None:
        """One look while waiting: XenLabError if QEMU died, the console shows a failure or time is up."""
        self._read_serial()
        self._note_rss()
        if self._failure is not None:
            raise XenLabError(
                f"waiting for {waiting_for}: the console says: {self._failure.strip()}\n"
                f"last console lines ({self.serial_log}):\n{self.serial_tail()}"
            )
        if self._process is None or self._process.poll() is not None:
            status = None if self._process is None else self._process.returncode
            output = self.qemu_log.read_text(errors="replace") if self.qemu_log.exists() else ""
            raise XenLabError(
                f"waiting for {waiting_for}: QEMU exited (status {status}): {_tail(output, 5)}\n"
                f"last console lines ({self.serial_log}):\n{self.serial_tail()}"
            )
        if time.monotonic() > deadline:
            raise XenLabError(
                f"waiting for {waiting_for}: no result within the deadline\n"
                f"last console lines ({self.serial_log}):\n{self.serial_tail()}"
            )

    def _note_rss(self) -> None:
        if self._process is None:
            return
        try:
            with open(f"/proc/{self._process.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        self._peak_rss = max(self._peak_rss, int(line.split()[1]) * 1024)
        except (FileNotFoundError, ProcessLookupError):
            pass

    def peak_rss(self) -> int:
        """QEMU's peak resident set size in bytes (its VmHWM), kept after stop()."""
        self._note_rss()
        return self._peak_rss

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """Sync dom0, then end and reap QEMU.  Safe to call twice; its logs stay in run_dir."""
        if self._process is None:
            return
        try:
            if self._ready and self.running():
                self.run("sync", timeout=30)
        except XenLabError as e:
            self._progress(f"stopping without a clean sync: {str(e).splitlines()[0]}")
        finally:
            self._note_rss()
            terminate(self._process)
            self._process = None
            self._ready = False
            _running.discard(self)

    def __enter__(self) -> XenLab:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- commands ---------------------------------------------------------

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT) -> tuple[int, str]:
        """Run a bash command in dom0; returns its exit status (124: killed at the deadline) and output.

        stdout and stderr come back together; stdin is /dev/null.  The
        command gets ``PYTHONPATH=/opt/colod-src``.  A daemon it starts
        should be started with ``setsid ... &`` and its output redirected.
        Raises XenLabError if dom0 gives no result within timeout plus a grace.
        """
        if not self._ready or not self.running():
            raise XenLabError(f"cannot run `{command}`: the lab is not running")
        job = f"{self._next():06d}"
        script = f"# xenlab-timeout={timeout:g}\n{command}\n"
        temporary = self.spool / "cmd" / f".{job}.tmp"
        temporary.write_text(script)
        os.replace(temporary, self.spool / "cmd" / f"{job}.sh")
        result_path = self.spool / "out" / f"{job}.rc"
        deadline = time.monotonic() + timeout + COMMAND_GRACE
        while not result_path.exists():
            self._watch(f"dom0 to run `{command}` (spool job {job})", deadline)
            time.sleep(POLL_INTERVAL)
        result = json.loads(result_path.read_text())
        output = (self.spool / "out" / f"{job}.out").read_bytes().decode(errors="replace")
        return int(result["status"]), output

    def _next(self) -> int:
        with self._lock:
            self._sequence += 1
            return self._sequence

    def check(self, command: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """run() a command that must succeed; returns its output, raises CommandFailed if it did not."""
        status, output = self.run(command, timeout)
        if status != 0:
            raise CommandFailed(command, status, output)
        return output

    def push(self, local: str | Path, remote: str, mode: int = 0o644) -> None:
        """Copy a host file into dom0 at remote (through the spool share)."""
        staged = self.spool / "files" / f"{self._next():06d}-{Path(local).name}"
        shutil.copyfile(local, staged)
        self.check(f"install -D -m {mode:o} {shlex.quote('/opt/xenlab-spool/files/' + staged.name)} "
                   f"{shlex.quote(remote)} && rm -f {shlex.quote('/opt/xenlab-spool/files/' + staged.name)}")

    def pull(self, remote: str, local: str | Path) -> None:
        """Copy a dom0 file to the host (through the spool share)."""
        name = f"{self._next():06d}-pull"
        self.check(f"cp {shlex.quote(remote)} /opt/xenlab-spool/files/{name}", timeout=300)
        shutil.move(str(self.spool / "files" / name), str(local))

    # -- the test guest ---------------------------------------------------

    @staticmethod
    def guest_serial(name: str) -> str:
        """The guest's serial log in dom0."""
        return f"/var/log/xen/{name}-serial.log"

    def guest_serial_log(self, name: str) -> Path:
        """The guest's serial log as the host sees it (dom0's /var/log/xen is in the spool)."""
        return self.xen_log / f"{name}-serial.log"

    def create_guest(self, name: str = "hvm1", timeout: float = 120, settings: Sequence[str] = ()) -> None:
        """``xl create`` the HVM test guest, named name, its serial log at guest_serial(name);
        settings are more xl.cfg lines (``memory=512``) that override guest.cfg's."""
        if not NAME.fullmatch(name):
            raise XenLabError(f"{name!r} is not a guest name")
        overrides = [f'name="{name}"', f'serial="file:{self.guest_serial(name)}"', *settings]
        self.check(" ".join(["xl", "create", GUEST_CONFIG, *map(shlex.quote, overrides)]), timeout)

    def guest_ticks(self, name: str = "hvm1") -> int:
        """The last GUEST-TICK the guest printed (0 before the first), read on the host: dom0 runs nothing."""
        try:
            with open(self.guest_serial_log(name), "rb") as log:
                size = log.seek(0, os.SEEK_END)
                log.seek(max(0, size - 4096))
                ticks = TICK.findall(log.read())
        except FileNotFoundError:
            return 0
        return int(ticks[-1]) if ticks else 0

    def wait_guest_ticks(self, name: str = "hvm1", at_least: int = 1, timeout: float = GUEST_TIMEOUT) -> int:
        """Wait until the guest has printed GUEST-TICK at_least (or more); returns the tick seen."""
        deadline = time.monotonic() + timeout
        while (tick := self.guest_ticks(name)) < at_least:
            try:
                self._watch(f"guest {name} to print GUEST-TICK {at_least}", deadline)
            except XenLabError as e:
                log = self.guest_serial_log(name)
                shown = _tail(log.read_text(errors="replace"), 5) if log.exists() else "(none yet)"
                raise XenLabError(f"{e}\nlast tick {tick}; {log} ends:\n{shown}") from None
            time.sleep(0.2)
        return tick

    def destroy_guest(self, name: str = "hvm1", timeout: float = 60) -> None:
        self.check(f"xl destroy {shlex.quote(name)}", timeout)


_running: set[XenLab] = set()


def _stop_all() -> None:
    for lab in list(_running):
        lab.stop()


atexit.register(_stop_all)


@attrs.frozen
class SmokeResult:
    build_seconds: float | None
    boot_seconds: float
    guest_first_tick_seconds: float
    guest_tick20_seconds: float
    peak_rss: int
    milestones: dict[str, float]

    def summary(self) -> str:
        built = "cached" if self.build_seconds is None else f"{self.build_seconds:.0f}s"
        return (
            f"xenlab smoke: OK build={built} boot={self.boot_seconds:.1f}s "
            f"guest-first-tick={self.guest_first_tick_seconds:.1f}s "
            f"guest-tick-20={self.guest_tick20_seconds:.1f}s "
            f"qemu-peak-rss={self.peak_rss / GiB:.2f}GiB"
        )


def smoke(lab: XenLab) -> SmokeResult:
    """Build if needed, boot, run a guest to its 20th tick, check colod in dom0, stop; raises XenLabError."""
    say = lab._progress
    try:
        lab.build()
        lab.start()
        info = lab.check("xl info")
        if not re.search(r"^xen_version\s*:\s*4\.17", info, re.M) or not re.search(r"^virt_caps\s*:.*\bhvm\b",
                                                                                 info, re.M):
            raise XenLabError(f"`xl info` shows no Xen 4.17 with HVM:\n{info}")
        say("creating the HVM guest hvm1")
        created = time.monotonic()
        lab.create_guest("hvm1")
        lab.wait_guest_ticks("hvm1", 1)
        first_tick = time.monotonic() - created
        say(f"hvm1 ticks after {first_tick:.1f} s")
        lab.wait_guest_ticks("hvm1", 20)
        tick20 = time.monotonic() - created
        imported = lab.check(
            "/opt/colod-venv/bin/python -c 'import colod, twisted, qemu.qmp; print(colod.__file__)'", 300
        )
        if "/opt/colod-src/colod/__init__.py" not in imported:
            raise XenLabError(f"dom0 imported colod from elsewhere than the 9p share: {imported.strip()}")
        usage = lab.check("/opt/colod-venv/bin/twistd colod --help", 300)
        if "--role" not in usage:
            raise XenLabError(f"`twistd colod --help` in dom0 does not list --role:\n{_tail(usage)}")
        lab.destroy_guest("hvm1")
        if "hvm1" in lab.check("xl list"):
            raise XenLabError("hvm1 is still listed after xl destroy")
        boot = lab.boot_seconds
        assert boot is not None
    finally:
        lab.stop()
    return SmokeResult(lab.build_seconds, boot, first_tick, tick20, lab.peak_rss(), dict(lab.milestones))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m colod.testing.xenlab",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--cache", help="the build cache (default $XENLAB_CACHE or /var/cache/colod-xenlab)")
    parser.add_argument("--run-dir", help="the run folder (serial log, spool; default a new one in /tmp)")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the lab unless the cache is current")
    build.add_argument("--force", action="store_true", help="rebuild the image even if current")
    sub.add_parser("smoke", help="build if needed, boot, run the HVM guest, check colod in dom0, stop")
    sub.add_parser("shell", help="boot, then run each line read from stdin as a command in dom0")
    args = parser.parse_args(argv)
    lab = XenLab(args.run_dir, cache=args.cache)
    try:
        if args.command == "build":
            seconds = lab.build(force=args.force)
            print("xenlab build: cached" if seconds is None else f"xenlab build: built in {seconds:.0f} s")
        elif args.command == "smoke":
            print(smoke(lab).summary(), flush=True)
        else:
            lab.build()
            with lab.start():
                for line in sys.stdin:
                    if line.strip():
                        status, output = lab.run(line, timeout=600)
                        print(output, end="" if output.endswith("\n") or not output else "\n")
                        print(f"[status {status}]", flush=True)
    except XenLabError as e:
        print(f"xenlab {args.command}: FAILED: {e}", file=sys.stderr)
        print(f"xenlab {args.command}: its logs are in {lab.run_dir}", file=sys.stderr)
        return 1
    finally:
        lab.stop()
    if args.run_dir is None:
        shutil.rmtree(lab.run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
