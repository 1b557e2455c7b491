# -*- test-case-name: tests.failover.test_etcd, tests.failover.test_ownership -*-
"""A real etcd-server for tests and the demo: Debian's ``/usr/bin/etcd``, on loopback, alone or as a cluster.

Each member gets its own data directory and two free ports on 127.0.0.1
(client and peer), so it neither needs nor meets an etcd that Debian's package
may run as a service on 2379.  It can be stopped, killed and started again on
the same data directory and ports (what it stored survives, as in a real
restart), and frozen and thawed (SIGSTOP, SIGCONT: a hung member whose sockets
still accept connections).  It gets SIGKILL if the process that started it
dies, so a crashed test run leaks no etcd.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from colod.testing.processes import free_port, terminate
from colod.testing.qemu_process import _die_with_parent

ETCD_BINARY = "/usr/bin/etcd"
#: Seconds etcd gets to answer its health check after it was started.
START_TIMEOUT = 20.0
#: Seconds between two health checks while it starts.
PROBE_INTERVAL = 0.05
#: urllib without the runner's proxy settings: loopback is reached directly.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EtcdStartError(Exception):
    """etcd exited, or did not answer its health check in time; carries what it printed."""


class EtcdServer:
    """One etcd member in ``workdir``: start() it, and stop(), kill(), pause() or restart() it."""

    def __init__(self, workdir: Path, name: str = "etcd") -> None:
        self.name = name
        self.data_dir = workdir / f"{name}.etcd"
        self.log_path = workdir / f"{name}.log"
        self.client_port = free_port()
        self.peer_port = free_port()
        #: The cluster's members as ``name=peer URL``, comma-separated (start_cluster() sets it).
        self.initial_cluster = f"{name}={self.peer_url}"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Where clients reach it."""
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        """Where the other members reach it."""
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def command(self) -> list[str]:
        return [
            ETCD_BINARY, "--name", self.name, "--data-dir", str(self.data_dir), "--logger", "zap",
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster, "--initial-cluster-state", "new",
        ]

    def start(self, timeout: float = START_TIMEOUT) -> EtcdServer:
        """Start etcd (on what its data directory holds) and wait until it says it is healthy."""
        self.launch()
        return self.wait_healthy(timeout)

    def launch(self) -> None:
        """Start etcd, without waiting: a cluster's member is healthy only once a quorum has started."""
        assert not self.running(), f"{self.name} is already running"
        # Its settings are its arguments alone, not an ETCD_* variable the runner happens to have.
        env = {key: value for key, value in os.environ.items() if not key.startswith("ETCD_")}
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> EtcdServer:
        """Wait until the started etcd says it is healthy.  @raise EtcdStartError: it exited, or too late."""
        assert self._process is not None, f"{self.name} was not started"
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self._process.poll() is not None:
                raise EtcdStartError(f"{self.name}: etcd exited with status {self._process.returncode}:\n"
                                     + self.output()[-3000:])
            if time.monotonic() > deadline:
                self.kill()
                raise EtcdStartError(f"{self.name}: etcd was not healthy within {timeout:g} s:\n"
                                     + self.output()[-3000:])
            time.sleep(PROBE_INTERVAL)
        return self

    def healthy(self) -> bool:
        """Whether etcd answers its health check with true (it has a leader and serves)."""
        try:
            with _DIRECT.open(self.url + "/health", timeout=1.0) as answer:
                return bool(json.load(answer).get("health") == "true")
        except (OSError, ValueError):
            return False

    def is_leader(self) -> bool:
        """Whether this member leads the cluster now (its status says the leader is itself)."""
        request = urllib.request.Request(self.url + "/v3/maintenance/status", data=b"{}", method="POST")
        with _DIRECT.open(request, timeout=2.0) as answer:
            status = json.load(answer)
        return bool(status["leader"] == status["header"]["member_id"])

    def output(self) -> str:
        """What etcd has printed so far, over every start."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> int | None:
        """Stop etcd cleanly (SIGTERM; SIGKILL past a deadline) and reap it; its status."""
        return terminate(self._process)

    def kill(self) -> int | None:
        """Kill etcd at once (a crashed member) and reap it; its status."""
        if self._process is None:
            return None
        if self._process.poll() is None:
            self._process.kill()
        return self._process.wait()

    def restart(self, timeout: float = START_TIMEOUT) -> EtcdServer:
        """Stop etcd and start it again on the same data directory and ports."""
        self.stop()
        return self.start(timeout)

    def pause(self) -> None:
        """Freeze etcd (SIGSTOP): its sockets accept connections, nothing answers."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw etcd (SIGCONT)."""
        self._signal(signal.SIGCONT)

    def _signal(self, signum: int) -> None:
        assert self._process is not None and self.running(), f"{self.name} is not running"
        os.kill(self._process.pid, signum)

    def __repr__(self) -> str:
        return f"<EtcdServer {self.name} {self.url} {'running' if self.running() else 'not running'}>"


def start_cluster(workdir: Path, size: int = 3, timeout: float = START_TIMEOUT) -> list[EtcdServer]:
    """A cluster of ``size`` members, started, each healthy.  On failure, no member is left running."""
    members = [EtcdServer(workdir, f"etcd{index}") for index in range(size)]
    for member in members:
        member.initial_cluster = ",".join(f"{other.name}={other.peer_url}" for other in members)
    try:
        for member in members:
            member.launch()
        for member in members:
            member.wait_healthy(timeout)
    except BaseException:
        for member in members:
            member.kill()
        raise
    return members
