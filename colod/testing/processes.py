# -*- test-case-name: tests.engine.test_peering, tests.failover.test_etcd -*-
"""The test rig's small process and port helpers, shared by the lab and the etcd rig (colod.testing)."""

from __future__ import annotations

import signal
import socket
import subprocess

#: Seconds a daemon, the writer or an etcd gets to exit on SIGTERM before it is killed.
STOP_TIMEOUT = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])



def terminate(process: subprocess.Popen[bytes] | None) -> int | None:
    """SIGTERM (after SIGCONT, in case it was stopped), then SIGKILL past the deadline; reaps it."""
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(signal.SIGCONT)
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
