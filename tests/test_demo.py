"""``make demo``'s program runs to its PASSED line against real QEMU and two real daemons."""

from __future__ import annotations

import subprocess
import sys

from tests.rig import ScratchTestCase


class DemoTests(ScratchTestCase):
    def test_demo_passes(self) -> None:
        """The demo exits 0, ends with its one-line summary, and showed NBD's TLS refusing strangers,
        checkpoints and a takeover."""
        out = subprocess.run(
            [sys.executable, "-m", "colod.testing.demo", "--workdir", str(self.workdir)],
            capture_output=True, text=True, timeout=120,
        )
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertTrue(out.stdout.splitlines()[-1].startswith("demo: PASSED: "), out.stdout)
        self.assertIn("demo: checkpoints ", out.stdout)
        self.assertIn("demo: NBD is TLS too: the secondary's QEMU lets in only host-a's certificate; it "
                      "refused a plaintext client", out.stdout)
        self.assertIn("the secondary took over", out.stdout)
        self.assertRegex(out.stdout, r"demo: etcd \(https://localhost:[0-9]+\): domain demo is owned by "
                                     r"host-a in epoch 1, on a lease of 3 s")
        self.assertIn("domain demo is owned by host-b in epoch 2", out.stdout)
        # What it shows of the daemons is colodctl's: both nodes protected, the secondary after the takeover.
        self.assertIn("demo: `colodctl status` on host-a:\ndemo:   demo on host-a: primary, protected since ",
                      out.stdout)
        self.assertIn("demo: `colodctl status` on host-b:\ndemo:   demo on host-b: secondary, running since ",
                      out.stdout)
        self.assertIn("demo:   demo on host-b: primary (took over), primary_unprotected since ", out.stdout)
        self.assertIn("memory and disk match", out.stdout)
