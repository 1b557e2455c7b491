"""``make demo``'s program runs to its PASSED line against real QEMU."""

from __future__ import annotations

import subprocess
import sys

from tests.rig import ScratchTestCase


class DemoTests(ScratchTestCase):
    def test_demo_passes(self) -> None:
        """The demo exits 0 and ends with its one-line summary."""
        out = subprocess.run(
            [sys.executable, "-m", "colod.demo", "--workdir", str(self.workdir)],
            capture_output=True, text=True, timeout=120,
        )
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertTrue(out.stdout.splitlines()[-1].startswith("demo: PASSED"), out.stdout)
        self.assertIn("connected to QEMU 7.2", out.stdout)
