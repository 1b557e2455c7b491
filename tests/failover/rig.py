"""What the failover tests share: a scratch test case with real etcd servers and clients of them."""

from __future__ import annotations

from twisted.internet import reactor

from colod.failover.etcd import EtcdClient
from colod.failover.lease import LeaseKeeper
from colod.failover.monotonic import MonotonicClock
from colod.reactor import asyncio_loop
from colod.testing.etcd import EtcdServer, start_cluster
from colod.testing.processes import free_port
from tests.rig import ScratchTestCase

#: A call's deadline in these tests (seconds): loopback answers in milliseconds.
CALL_TIMEOUT = 2.0


def now() -> float:
    """The time on MonotonicClock's scale."""
    return asyncio_loop().time()


def dead_url() -> str:
    """An endpoint where nothing listens: connections to it are refused."""
    return f"http://127.0.0.1:{free_port()}"


class EtcdTestCase(ScratchTestCase):
    """A ScratchTestCase whose etcd servers are always stopped and whose keepers always stop renewing."""

    def start_etcd(self, name: str = "etcd") -> EtcdServer:
        server = EtcdServer(self.workdir, name)
        self.addCleanup(server.stop)
        return server.start()

    def start_cluster(self, size: int = 3) -> list[EtcdServer]:
        members = start_cluster(self.workdir, size)
        for member in members:
            self.addCleanup(member.stop)
        return members

    def client(self, *endpoints: str, timeout: float = CALL_TIMEOUT) -> EtcdClient:
        return EtcdClient(endpoints, reactor, timeout=timeout)

    def keeper(self, client: EtcdClient, ttl: int, expiring: list[float], lost: list[str]) -> LeaseKeeper:
        """A keeper on the daemon's clock (MonotonicClock) that notes when it called on_expiring (that
        clock's time, now()) and why it called on_lost."""
        clock = MonotonicClock(asyncio_loop())
        keeper = LeaseKeeper(client, ttl, clock=clock, on_expiring=lambda: expiring.append(clock.seconds()),
                             on_lost=lost.append)
        self.addCleanup(keeper.stop, revoke=False)
        return keeper
