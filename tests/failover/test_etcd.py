"""The etcd client against a real etcd-server: leases, reads, transactions, named errors and deadlines."""

from __future__ import annotations

import time
from pathlib import Path

from twisted.internet import reactor

from colod import certs
from colod.config import TLSConfig
from colod.failover.etcd import (
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    created,
    get,
    nested,
    put,
    value_is,
)
from colod.testing.etcd import TLS_HOST, EtcdServer
from tests.failover.rig import CALL_TIMEOUT, EtcdTestCase, dead_url
from tests.rig import async_test

#: Seconds a call may overrun its deadline here (the reactor's latency on a busy machine).
OVERRUN = 0.5


class LeaseTests(EtcdTestCase):
    @async_test
    async def test_grant_keepalive_revoke(self) -> None:
        """A granted lease has the TTL asked for, is renewed to it, lives until revoked, and is then gone."""
        client = self.client(self.start_etcd().url)
        lease = await client.grant(5)
        self.assertEqual(lease.ttl, 5)
        self.assertEqual(await client.keepalive(lease.id), 5)
        self.assertIn(await client.time_to_live(lease.id), (4, 5))
        await client.revoke(lease.id)
        self.assertEqual(await client.keepalive(lease.id), 0)
        self.assertEqual(await client.time_to_live(lease.id), -1)
        with self.assertRaises(EtcdError) as raised:
            await client.revoke(lease.id)
        self.assertIn("lease not found", str(raised.exception))
        self.assertEqual(raised.exception.code, 5)  # gRPC's NOT_FOUND

    @async_test
    async def test_keys_go_with_their_lease(self) -> None:
        """A key put with a lease is gone once the lease is revoked; one without a lease stays."""
        client = self.client(self.start_etcd().url)
        lease = await client.grant(30)
        await client.txn([], [put(b"/leased", b"1", lease.id), put(b"/kept", b"2")])
        leased = await client.get(b"/leased")
        assert leased is not None
        self.assertEqual((leased.value, leased.lease), (b"1", lease.id))
        await client.revoke(lease.id)
        self.assertIsNone(await client.get(b"/leased"))
        kept = await client.get(b"/kept")
        assert kept is not None
        self.assertEqual((kept.value, kept.lease), (b"2", 0))


class TxnTests(EtcdTestCase):
    @async_test
    async def test_compares_pick_the_branch(self) -> None:
        """A transaction applies its success branch when every compare holds, else its failure branch,
        whose range requests read the keys."""
        client = self.client(self.start_etcd().url)
        first = await client.txn([created(b"/k")], [put(b"/k", b"a")], [get(b"/k")])
        self.assertTrue(first.succeeded)
        second = await client.txn([created(b"/k")], [put(b"/k", b"b")], [get(b"/k"), get(b"/none")])
        self.assertFalse(second.succeeded)
        found, missing = second.ranges()
        assert found is not None
        self.assertEqual((found.key, found.value), (b"/k", b"a"))
        self.assertIsNone(missing)
        self.assertTrue((await client.txn([value_is(b"/k", b"a")], [])).succeeded)
        self.assertFalse((await client.txn([value_is(b"/absent", b"")], [])).succeeded)

    @async_test
    async def test_nested_transaction(self) -> None:
        """A transaction in a failure branch is applied with its parent: innermost() is its outcome."""
        client = self.client(self.start_etcd().url)
        await client.txn([], [put(b"/k", b"a")])
        inner = nested([value_is(b"/k", b"a")], [put(b"/k", b"b")], [])
        inner_wins = await client.txn([created(b"/k")], [], [inner])
        self.assertFalse(inner_wins.succeeded)
        self.assertTrue(inner_wins.innermost().succeeded)
        inner = nested([value_is(b"/k", b"a")], [], [get(b"/k")])
        both_fail = await client.txn([created(b"/k")], [], [inner])
        self.assertFalse(both_fail.innermost().succeeded)
        (found,) = both_fail.innermost().ranges()
        assert found is not None
        self.assertEqual(found.value, b"b")

    @async_test
    async def test_a_bad_request_is_an_etcd_error(self) -> None:
        """etcd's refusal of a request is an EtcdError carrying etcd's own message."""
        client = self.client(self.start_etcd().url)
        with self.assertRaises(EtcdError) as raised:
            await client.txn([], [put(b"/k", b"1"), put(b"/k", b"2")])
        self.assertIn("duplicate key", str(raised.exception))


class EndpointTests(EtcdTestCase):
    @async_test
    async def test_unreachable_endpoints(self) -> None:
        """With no member listening, a call fails with EtcdUnavailable naming each, within its deadline."""
        urls = [dead_url(), dead_url()]
        client = self.client(*urls, timeout=1.0)
        started = time.monotonic()
        with self.assertRaises(EtcdUnavailable) as raised:
            await client.grant(5)
        self.assertLess(time.monotonic() - started, 1.0 + OVERRUN)
        for url in urls:
            self.assertIn(url, str(raised.exception))

    @async_test
    async def test_frozen_member_meets_the_deadline(self) -> None:
        """A member that accepts connections but never answers (SIGSTOP) fails the call at its deadline."""
        server = self.start_etcd()
        client = self.client(server.url, timeout=1.0)
        await client.grant(5)
        server.pause()
        self.addCleanup(server.resume)
        started = time.monotonic()
        with self.assertRaises(EtcdUnavailable):
            await client.grant(5)
        self.assertGreater(time.monotonic() - started, 0.9)
        self.assertLess(time.monotonic() - started, 1.0 + OVERRUN)

    @async_test
    async def test_dead_first_member(self) -> None:
        """A cluster list whose first member is dead still works: the next member answers."""
        client = self.client(dead_url(), self.start_etcd().url)
        lease = await client.grant(5)
        self.assertEqual(await client.keepalive(lease.id), 5)

    @async_test
    async def test_frozen_first_member(self) -> None:
        """A frozen first member gets its share of the deadline, then the next member answers in time,
        and the next call starts with the member that answered."""
        frozen = self.start_etcd("frozen")
        frozen.pause()
        self.addCleanup(frozen.resume)
        client = self.client(frozen.url, self.start_etcd("live").url, timeout=2.0)
        started = time.monotonic()
        lease = await client.grant(5)
        self.assertLess(time.monotonic() - started, 2.0)
        started = time.monotonic()
        self.assertEqual(await client.keepalive(lease.id), 5)
        self.assertLess(time.monotonic() - started, 0.5)


def site_files(authority: Path, node: str) -> TLSConfig:
    """``node``'s [tls] files in the CA directory ``authority`` (colod make-certs' layout)."""
    directory = authority / node
    return TLSConfig(str(directory / certs.CA_CERT), str(directory / certs.CERT), str(directory / certs.KEY))


class TLSTests(EtcdTestCase):
    """etcd over https with --client-cert-auth, as colod advises: only the site's nodes get in, and a node
    talks only to an etcd of its CA that names the host it dialled."""

    def setUp(self) -> None:
        super().setUp()
        self.site = self.workdir / "site"
        certs.make(self.site, [TLS_HOST, "host-a"])
        self.stranger = self.workdir / "stranger"
        certs.make(self.stranger, [TLS_HOST, "host-a"])
        self.server = EtcdServer(self.workdir)
        self.server.use_tls(site_files(self.site, TLS_HOST))
        self.addCleanup(self.server.stop)
        self.server.start()

    def tls_client(self, tls: TLSConfig, url: str | None = None) -> EtcdClient:
        return EtcdClient([url or self.server.url], reactor, timeout=CALL_TIMEOUT, tls=tls)

    @async_test
    async def test_a_node_of_the_site_gets_in(self) -> None:
        self.assertTrue(self.server.url.startswith(f"https://{TLS_HOST}:"))
        client = self.tls_client(site_files(self.site, "host-a"))
        lease = await client.grant(5)
        self.assertIn(await client.time_to_live(lease.id), (4, 5))

    @async_test
    async def test_strangers_are_refused(self) -> None:
        """A client of another CA is refused by etcd; a client that does not trust etcd's CA, or finds it
        under another host name, refuses etcd; plaintext gets nothing."""
        mine = site_files(self.site, "host-a")
        theirs = site_files(self.stranger, "host-a")
        tries = {
            "another CA's certificate": self.tls_client(TLSConfig(mine.ca, theirs.certificate, theirs.key)),
            "trusting another CA": self.tls_client(TLSConfig(theirs.ca, mine.certificate, mine.key)),
            "another host name": self.tls_client(mine, f"https://127.0.0.1:{self.server.client_port}"),
            "plaintext": self.client(f"http://127.0.0.1:{self.server.client_port}"),
        }
        for what, client in tries.items():
            with self.assertRaises(EtcdUnavailable, msg=what) as raised:
                await client.grant(5)
            self.assertIn(f"no etcd member answered /v3/lease/grant within {CALL_TIMEOUT:g} s",
                          str(raised.exception), what)

    @async_test
    async def test_a_frozen_tls_member_is_no_answer(self) -> None:
        """A member whose port takes the connection but never the handshake (etcd frozen) is a member
        that did not answer, within the call's deadline, wherever the cut lands."""
        client = self.tls_client(site_files(self.site, "host-a"))
        self.server.pause()
        self.addCleanup(self.server.resume)
        for _ in range(3):
            began = time.monotonic()
            with self.assertRaises(EtcdUnavailable):
                await client.grant(5)
            self.assertLess(time.monotonic() - began, CALL_TIMEOUT + OVERRUN)
