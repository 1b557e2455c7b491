# -*- test-case-name: tests.test_demo -*-
"""``make demo``: colod on this one machine, against a real QEMU.

What it shows today: a real ``twistd colod`` daemon starting from a generated
configuration, reaching a QEMU device model over QMP, probing it for the COLO
commands, and stopping cleanly on SIGTERM.  The primary/secondary pair with
checkpoints and failover joins it when the checkpoint engine lands.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from colod.qemu_process import QemuProcess

TWISTD = str(Path(sys.executable).with_name("twistd"))
# How long the daemon gets to reach its QEMU, and to stop.
CONNECT_DEADLINE = 20.0
STOP_DEADLINE = 5.0

CONFIG = """\
[colod]
role = "secondary"
node_name = "demo-secondary"
state_dir = "{workdir}/state"
control_socket = "{workdir}/control.sock"

[peer]
listen = "tcp:0:interface=127.0.0.1"

[[domain]]
name = "demo"
qmp_socket = "{qmp_socket}"
nbd_host = "127.0.0.1"
nbd_port = 18889

[[domain.disk]]
name = "xvda"
quorum_node = "colo-disk0"
image = "{workdir}/disk.raw"
export_name = "demo-xvda"
active_image = "{workdir}/active.qcow2"
hidden_image = "{workdir}/hidden.qcow2"
"""


def say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def wait_for(log: Path, text: str, deadline: float) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if text in log.read_text():
            return True
        time.sleep(0.05)
    return False


def run(workdir: Path) -> bool:
    """Run the demo in ``workdir``; True when everything it checked held."""
    qemu = QemuProcess(workdir, "demo-qemu")
    say(f"starting QEMU ({' '.join(qemu.command[:4])} ...) with QMP at {qemu.qmp_socket}")
    qemu.start()
    config = workdir / "colod.toml"
    config.write_text(CONFIG.format(workdir=workdir, qmp_socket=qemu.qmp_socket))
    log = workdir / "colod.log"
    say(f"starting: twistd -n colod --role secondary --config {config}")
    with open(log, "w") as out:
        daemon = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "colod", "--role", "secondary", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        connected = wait_for(log, "connected to QEMU", CONNECT_DEADLINE)
        for line in log.read_text().splitlines():
            if "colod." in line:
                say(f"colod logged: {line.split('] ', 1)[-1]}")
        if not connected:
            say(f"colod did not reach QEMU within {CONNECT_DEADLINE:g} s")
            return False
        say("sending SIGTERM to colod")
        daemon.send_signal(signal.SIGTERM)
        status = daemon.wait(STOP_DEADLINE)
        say(f"colod exited with status {status}")
        return status == 0 and qemu.running()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        qemu.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="keep the demo's files here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.workdir:
        workdir = Path(args.workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        ok = run(workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="colod-demo-", dir="/tmp") as tmp:
            ok = run(Path(tmp))
    print("demo: PASSED: colod started, reached QEMU over QMP, and stopped cleanly" if ok
          else "demo: FAILED: see the lines above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
