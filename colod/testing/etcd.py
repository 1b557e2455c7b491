# -*- test-case-name: tests.failover.test_etcd, tests.failover.test_ownership -*-
"""A real etcd-server for tests and the demo: Debian's ``/usr/bin/etcd``, on loopback, alone or as a cluster.

Each member gets its own data directory and two free ports on 127.0.0.1
(client and peer), so it neither needs nor meets an etcd that Debian's package
may run as a service on 2379.  It can be stopped, killed and started again on
the same data directory and ports (what it stored survives, as in a real
restart), and frozen and thawed (SIGSTOP, SIGCONT: a hung member whose sockets
still accept connections).  It gets SIGKILL if the process that started it
dies, so a crashed test run leaks no etcd.

Given TLS files (use_tls(): a certificate that names ``localhost``, from the
CA of the nodes' ``[tls]``), it serves clients over https only, at
``https://localhost:PORT``, and lets in only clients with a certificate of
that CA (``--client-cert-auth``), as a production etcd for colod should;
the rig's own checks show its certificate as theirs.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from colod.config import TLSConfig
from colod.testing.processes import free_port, terminate
from colod.testing.qemu_process import _die_with_parent

ETCD_BINARY = "/usr/bin/etcd"
#: Seconds etcd gets to answer its health check after it was started.
START_TIMEOUT = 20.0
#: Seconds between two health checks while it starts.
PROBE_INTERVAL = 0.05
#: The host a TLS etcd's certificate names, and its clients' URLs.
TLS_HOST = "localhost"


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
        #: Its certificate (and its clients' CA), once use_tls() was called; None: plaintext http.
        self.tls: TLSConfig | None = None
        self._opener = _opener(None)

    def use_tls(self, files: TLSConfig) -> None:
        """Serve clients over https with ``files`` (a certificate naming TLS_HOST), from the next start."""
        self.tls = files
        self._opener = _opener(files)

    def url_at(self, port: int) -> str:
        """The URL of this etcd's kind (https or http) at another ``port``: a relay in front of it."""
        if self.tls is None:
            return f"http://127.0.0.1:{port}"
        return f"https://{TLS_HOST}:{port}"

    @property
    def url(self) -> str:
        """Where clients reach it."""
        return self.url_at(self.client_port)

    @property
    def peer_url(self) -> str:
        """Where the other members reach it."""
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def command(self) -> list[str]:
        listen = self.url.replace(TLS_HOST, "127.0.0.1")
        tls = [] if self.tls is None else [
            "--cert-file", self.tls.certificate, "--key-file", self.tls.key, "--trusted-ca-file", self.tls.ca,
            "--client-cert-auth"]
        return [
            ETCD_BINARY, "--name", self.name, "--data-dir", str(self.data_dir), "--logger", "zap",
            "--listen-client-urls", listen, "--advertise-client-urls", self.url, *tls,
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
            with self._opener.open(self.url + "/health", timeout=1.0) as answer:
                return bool(json.load(answer).get("health") == "true")
        except (OSError, ValueError):
            return False

    def is_leader(self) -> bool:
        """Whether this member leads the cluster now (its status says the leader is itself)."""
        status = self.post("/v3/maintenance/status", {})
        return bool(status["leader"] == status["header"]["member_id"])

    def post(self, path: str, body: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """``body`` to the v3 JSON gateway's ``path`` (with the rig's own certificate under TLS): the answer.

        @raise OSError: no answer.
        """
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with self._opener.open(request, timeout=timeout) as answer:
            return dict(json.load(answer))

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


def _opener(tls: TLSConfig | None) -> urllib.request.OpenerDirector:
    """urllib without the runner's proxy settings (loopback is reached directly), showing ``tls``'s
    certificate and trusting its CA."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if tls is not None:
        context = ssl.create_default_context(cafile=tls.ca)
        context.load_cert_chain(tls.certificate, tls.key)
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)


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
