"""Strangers at a real secondary ``twistd colod``'s door (mutual TLS, the lab's default), then its primary.

Each stranger knows the names a primary would say (it says the primary's
hello for the lab's domain) but not the primary's key: over plain TCP, over
TLS without a certificate, with a certificate from another CA, with one of
the lab's CA for another node; and the primary's own certificate for another
domain.  Each is refused, its reason named in the secondary's log, and none
but the last (the configured peer, authenticated) hears the secondary's
hello or its domain's name.  The guest is untouched; a stranger that holds
a connection open holds no slot: the real primary links meanwhile and
protects the guest.
"""

from __future__ import annotations

import re
import subprocess
import time

from colod.protocol.handshake import Hello, Role
from colod.testing.lab import BIN, Lab, Poll, listening
from colod.testing.nbd_client import open_export
from tests import certs
from tests.cluster import ClusterTestCase, wait
from tests.rig import async_test
from tests.strangers import NO_CERTIFICATE, PLAIN, Credentials, arrive, visit

#: Seconds the secondary's link gives a connection to authenticate and say hello (colod.protocol.peer).
HANDSHAKE_TIMEOUT = 10.0


class HostilePeerTests(ClusterTestCase):
    @async_test
    async def test_strangers_are_refused_unheard_and_hold_no_slot(self) -> None:
        self.lab = lab = Lab(self.workdir)
        self.addCleanup(lab.close)
        lab.prepare()
        # A node of the lab's CA that is no one's peer (make-certs reuses the lab's CA).
        subprocess.run([str(BIN / "colod"), "make-certs", "--dir", str(lab.certs_dir), "host-c"],
                       check=True, capture_output=True, timeout=30)
        lab.start_qemus()
        lab.secondary.start_daemon()
        await wait(Poll(lambda: listening(lab.secondary_port) or None, 30.0, "the secondary listening",
                        lab.secondary.context))
        guest = lab.secondary.qemu_status()
        hello = Hello(Role.PRIMARY, lab.domain, lab.primary.name).encode()
        ca, certificate, key = lab.tls_files(lab.primary)
        primary_files = certs.Files(ca, certificate, key)
        strangers = {
            "plain TCP": (PLAIN, hello, "TLS handshake failed: "),
            "no certificate": (NO_CERTIFICATE, hello, "TLS handshake failed: "),
            "another CA": (Credentials(True, certs.files("host-a", certs.theirs())), hello,
                           "TLS handshake failed: .*certificate verify failed"),
            "another node": (Credentials(True, certs.Files(*(lab.certs_dir / "host-c" / path.name
                                                               for path in (ca, certificate, key)))),
                             hello, "the peer's certificate is for 'host-c', not for 'host-a'"),
            "another domain": (Credentials(True, primary_files),
                               Hello(Role.PRIMARY, "other", "host-a").encode(),
                               "peer protects domain 'other', this side 'lab'"),
        }
        for name, (credentials, says, reason) in strangers.items():
            stranger = await visit(lab.secondary_port, credentials, says)
            refusal = re.compile(rf"no peer link with 127\.0\.0\.1:{stranger.port}: {reason}")
            await wait(Poll(lambda refusal=refusal: refusal.search(lab.secondary.logs()), 10.0,
                            f"{name} refused by name", lab.secondary.context))
            if name != "another domain":  # the configured peer, authenticated: it may hear the hello
                for secret in (b"ColodLnk", lab.domain.encode(), lab.secondary.name.encode()):
                    self.assertNotIn(secret, stranger.heard, name)
            if credentials.tls and name != "another domain":
                self.assertEqual(stranger.heard, b"", name)
        status = lab.secondary.status()
        self.assertEqual((status["role"], status["failed_over"], status["protected"], status["error"]),
                         ("secondary", False, False, None))
        self.assertEqual(lab.secondary.qemu_status(), guest)
        # A stranger holding a connection open holds no slot: the primary links while it waits.
        silent = await arrive(lab.secondary_port, PLAIN, b"")
        opened = time.monotonic()
        lab.primary.start_daemon()
        await wait(lab.until_protected())
        self.assertLess(time.monotonic() - opened, HANDSHAKE_TIMEOUT, "the primary linked too late to tell")
        self.assertFalse(silent.closed.called)
        self.assertRegex(lab.secondary.logs(), r"linked with primary host-a at 127\.0\.0\.1:\d+")
        for node in lab.nodes:
            self.assertNotIn("INSECURE", node.logs())
        # The disks' NBD is TLS too: the secondary's real QEMU refuses a plaintext client.
        self.assertIn("domain lab: NBD is TLS: the NBD server lets in only CN=host-a", lab.secondary.logs())
        refused = open_export(lab.nbd_port, f"{lab.domain}-xvda")
        self.assertFalse(refused.ok, refused.output)
        self.assertIn("TLS negotiation required", refused.output)
