"""A primary that never ends its checkpoint cannot make a real secondary daemon hold more than the bound.

The secondary is a ``twistd colod`` with its QEMUs, as the lab starts it
(colod.testing.lab); the primary is tests/engine/flood_peer.py, a process of its own
that passes the real handshake and then streams without end.  While it does,
the daemon's resident memory is read from /proc and must stay within what
one checkpoint may hold (the guest's memory plus the allowance) over what
the daemon used before; the secondary cuts the link off with a named error.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from colod.engine.checkpoint_buffer import CheckpointBuffer
from colod.protocol.wire import PAGE_SIZE
from colod.testing.lab import Lab, Poll, listening
from tests.rig import ScratchTestCase

MiB = 1 << 20
#: The guest: 32 MiB of memory.
GUEST_PAGES = 8192
#: Times the flood sends the whole guest before it goes past it: 768 MiB in all.
PASSES = 24
#: Seconds the flood may last; the secondary must cut it off well before.
FLOOD_DEADLINE = 120.0
#: Memory the daemon may use over its bound for anything else (reads, decoding, a record under way).
SLACK = 48 * MiB
ROOT = Path(__file__).resolve().parents[2]


def rss(pid: int) -> int:
    """The resident memory of process ``pid``, in bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


class BoundedBufferTests(ScratchTestCase):
    timeout = 240

    def setUp(self) -> None:
        super().setUp()
        # A plaintext link, explicitly: the flood is a raw socket (its bounds are the link's codec's, TLS
        # or not; tests.engine.test_hostile_peer is the TLS door).
        self.lab = lab = Lab(self.workdir, memory_pages=GUEST_PAGES, tls=False)
        self.addCleanup(lab.close)
        lab.prepare()
        node = lab.secondary
        node.start_qemu(lab.qemu_args(node))
        node.start_device_model(lab.qemu_args(node, "--device-model"))
        node.start_daemon()
        Poll(lambda: listening(lab.secondary_port) or None, 30.0, "the secondary listening",
             node.context).wait()
        self.limit = CheckpointBuffer(GUEST_PAGES).limit

    def flood(self, mode: str) -> tuple[dict[str, object], int, int]:
        """Run the flood to its end; its summary, and the daemon's RSS before and at its highest."""
        daemon = self.lab.secondary.daemon
        assert daemon is not None
        baseline = peak = rss(daemon.pid)
        command = [sys.executable, "-m", "tests.engine.flood_peer", str(self.lab.secondary_port),
                   self.lab.domain, self.lab.primary.name, mode, str(GUEST_PAGES), str(PASSES),
                   str(FLOOD_DEADLINE)]
        peer = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.addCleanup(peer.wait)
        self.addCleanup(peer.kill)
        deadline = time.monotonic() + FLOOD_DEADLINE + 30.0
        while peer.poll() is None:
            self.assertIsNone(daemon.poll(), f"the secondary daemon died{self.lab.secondary.context()}")
            peak = max(peak, rss(daemon.pid))
            self.assertLess(time.monotonic(), deadline, "the flood did not end")
            time.sleep(0.02)
        output = peer.stdout.read().decode()
        self.assertEqual(peer.returncode, 0, output)
        summary = json.loads(output.splitlines()[-1])
        print(f"\nsecondary colod RSS with {mode} flooding: {baseline / MiB:.0f} MiB before, "
              f"{peak / MiB:.0f} MiB at most, after {summary['sent'] / MiB:.0f} MiB sent "
              f"(guest {GUEST_PAGES * PAGE_SIZE // MiB} MiB, checkpoint bound {self.limit / MiB:.0f} MiB)")
        self.assertLessEqual(peak - baseline, self.limit + SLACK)
        return summary, baseline, peak

    def assertCutOff(self, summary: dict[str, object], error: str) -> None:
        """The secondary ended the link with ``error``, logged it, and waits for a primary again."""
        reason, text = summary["end"]
        self.assertEqual(reason, "PROTOCOL_ERROR")
        self.assertTrue(text.startswith(error), text)
        self.assertIn(text, self.lab.secondary.logs())
        status = self.lab.secondary.status()
        self.assertEqual((status["state"], status["checkpoints"]), ("waiting_for_primary", 0))

    def test_pages_forever(self) -> None:
        """768 MiB of the guest's pages, sent over and over, are held once; the first page past it ends it."""
        summary, _, _ = self.flood("pages")
        self.assertGreaterEqual(summary["sent"], PASSES * GUEST_PAGES * PAGE_SIZE)
        self.assertCutOff(summary, f"page outside the guest: PAGE_DATA carries pfn {GUEST_PAGES:#x}")

    def test_records_forever(self) -> None:
        """Endless records other than pages are cut off once past the bound."""
        summary, _, _ = self.flood("records")
        self.assertGreater(summary["sent"], self.limit - GUEST_PAGES * PAGE_SIZE)
        self.assertCutOff(summary, "checkpoint too large")
