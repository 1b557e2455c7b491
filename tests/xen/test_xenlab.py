"""
The Xen lab end to end (colod.testing.xenlab): build it if the cache is not current,
boot Xen 4.17 with its Debian dom0 in QEMU, run the HVM test guest to its
20th tick, import colod and start ``twistd colod --help`` in dom0, stop.

It takes minutes, so it exists only when XENLAB=1 is in the environment
(``make xen-test`` sets it); ``make test`` collects nothing from this file.
With XENLAB=1 it is never skipped: a lab that cannot be built or booted
fails the test, and the failure says why.
"""

from __future__ import annotations

import os
from pathlib import Path

from colod.testing.xenlab import XenLab, smoke

if os.environ.get("XENLAB") == "1":

    def test_xenlab_smoke(tmp_path: Path) -> None:
        lab = XenLab(tmp_path / "run")
        result = smoke(lab)
        print(result.summary())
        assert not lab.running(), "QEMU outlived the lab"
        assert result.boot_seconds > 0
        assert result.guest_first_tick_seconds <= result.guest_tick20_seconds
        assert result.peak_rss > 0
        assert "ready" in result.milestones
