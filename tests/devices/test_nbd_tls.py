"""NBD under TLS between two real QEMUs started from ``colod qemu-args``: replication runs over it, and the
secondary's real NBD server refuses every client but the primary's certificate.

The strangers are QEMU's own NBD client (qemu-img, colod.testing.nbd_client) with the files a stranger
could hold: none, a certificate of the right CA for another node (host-c), the primary's name from
another CA.  The primary's own certificate, in the same client, gets in: the refusals are the server's.
"""

from __future__ import annotations

from pathlib import Path

from colod.devices import DeviceFailures
from colod.devices.nbd_tls import AUTHZ, CREDS
from colod.testing.nbd_client import client_files, force_certificate, open_export
from tests import certs
from tests.devices.pair import ReplicationTestCase, Side
from tests.rig import async_test

K64 = 64 * 1024
EXPORT = "guest-xvda"


class NbdTLSTests(ReplicationTestCase):
    def stranger(self, name: str, certificate: certs.Files | None) -> Path:
        """QEMU client files trusting the lab's CA (so the client accepts the server), showing
        ``certificate`` (none if None)."""
        ca = certs.files("host-a").ca
        if certificate is None:
            return client_files(self.workdir / name, ca)
        return client_files(self.workdir / name, ca, certificate.certificate, certificate.key)

    def assertRefused(self, secondary: Side, credentials: Path | None, client_says: str,
                      server_says: str) -> None:
        """The client cannot open the export; the client and the secondary's QEMU say why."""
        before = len(secondary.qemu.output())
        attempt = open_export(self.port, EXPORT, credentials, hostname="host-b")
        self.assertFalse(attempt.ok, attempt.output)
        self.assertIn(client_says, attempt.output)
        self.assertIn(server_says, secondary.qemu.output()[before:])

    @async_test
    async def test_replication_runs_over_tls(self) -> None:
        """Both QEMUs hold the objects colod qemu-args printed; the NBD server is TLS only; a primary
        write reaches the secondary's disk through it."""
        primary, secondary = await self.protected_pair()
        self.assertEqual(await secondary.qmp.execute("qom-get", {"path": f"/objects/{AUTHZ}",
                                                                "property": "identity"}), "CN=host-a")
        for side, endpoint in ((primary, "client"), (secondary, "server")):
            found = await side.qmp.execute("qom-get", {"path": f"/objects/{CREDS}", "property": "endpoint"})
            self.assertEqual(found, endpoint)
        self.assertFalse(open_export(self.port, EXPORT).ok)  # the server the primary writes to is TLS only
        await primary.write("colo-disk0", 0xAB, 0, K64)
        await self.checkpoint(primary, secondary)
        printed = await secondary.hmp_qemu_io(EXPORT, f"read -P 0xab 0 {K64}")
        self.assertIn(f"read {K64}/{K64} bytes", printed)
        self.assertNotIn("verification failed", printed)

    @async_test
    async def test_only_the_primarys_certificate_gets_in(self) -> None:
        """A plaintext client, one without a certificate, one with another node's certificate of the right
        CA (tls-authz) and one with the primary's name from another CA are refused by the secondary's
        QEMU, while replication runs; the primary's certificate, in the same clients, gets in."""
        await self.protected_pair()
        secondary, ours, theirs = self.secondary, certs.files("host-a"), certs.files("host-a", certs.theirs())
        self.assertRefused(secondary, None, "TLS negotiation required", "")
        self.assertRefused(secondary, self.stranger("none", None), "Cannot read from TLS channel",
                           "No certificate was found")
        self.assertRefused(secondary, self.stranger("host-c", certs.files("host-c")),
                           "Cannot read from TLS channel", "TLS x509 authz check for CN=host-c is denied")
        # GnuTLS (qemu-img) sends no certificate of a CA the server does not name: it looks like none ...
        self.assertRefused(secondary, self.stranger("theirs", theirs), "Cannot read from TLS channel",
                           "No certificate was found")
        # ... so a client of our own sends it anyway, and the server checks its issuer.
        before = len(secondary.qemu.output())
        forced = force_certificate(self.port, ours.ca, theirs.certificate, theirs.key, "host-b")
        self.assertFalse(forced.ok, forced.output)
        self.assertIn("The certificate hasn't got a known issuer", secondary.qemu.output()[before:])

        forced = force_certificate(self.port, ours.ca, ours.certificate, ours.key, "host-b")
        self.assertTrue(forced.ok, forced.output)
        primary = open_export(self.port, EXPORT, self.stranger("primary", ours), "host-b")
        self.assertTrue(primary.ok, primary.output)
        self.assertIn("virtual size: 8 MiB", primary.output)

    async def protected_pair(self, disks: int = 1) -> tuple[Side, Side]:
        primary, self.secondary = await super().protected_pair(disks)
        return primary, self.secondary

    @async_test
    async def test_the_primary_refuses_another_server(self) -> None:
        """A secondary whose certificate is the CA's but names host-c, not the configured host-b, gets no
        replication child: the primary's setup fails and undoes itself."""
        self.make_images(1)
        impostor = await self.start_side("secondary", self.write_config("secondary", [0], node="host-c"))
        await impostor.group.setup()
        primary = await self.start_side("primary", self.write_config("primary", [0]))
        with self.assertRaises(DeviceFailures) as caught:
            await primary.group.setup()
        self.assertIn("Certificate does not match the hostname host-b", str(caught.exception))
        self.assertNotIn("colod0-rep", {name for name, _ in await primary.node_names()})

    @async_test
    async def test_a_qemu_without_the_objects_is_refused_by_name(self) -> None:
        """A secondary QEMU started for plaintext NBD, under a TLS configuration: setup refuses it, naming
        the missing object, before it changes anything (no NBD server)."""
        self.make_images(1)
        plain = self.write_config("secondary", [0], nbd_tls=False, name="-plain")
        secondary = await self.start_side("secondary", self.write_config("secondary", [0]), qemu_config=plain)
        with self.assertRaises(DeviceFailures) as caught:
            await secondary.group.setup()
        self.assertIn(f"QEMU has no object '{CREDS}'", str(caught.exception))
        self.assertIn("colod qemu-args", str(caught.exception))
        self.assertFalse(open_export(self.port, EXPORT).ok)

    @async_test
    async def test_plaintext_only_when_the_files_say_so(self) -> None:
        """nbd_tls = false on both nodes: no TLS objects, and replication runs in plaintext, which any
        client may then open (what TLS closes)."""
        self.make_images(1)
        secondary = await self.start_side("secondary", self.write_config("secondary", [0], nbd_tls=False))
        primary = await self.start_side("primary", self.write_config("primary", [0], nbd_tls=False))
        self.assertNotIn("-object", self.qemu_args("secondary", self.write_config("secondary", [0],
                                                                                  nbd_tls=False)))
        await secondary.group.setup()
        await primary.group.setup()
        attempt = open_export(self.port, EXPORT)
        self.assertTrue(attempt.ok, attempt.output)
