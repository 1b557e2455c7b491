"""
The Xen lab end to end (colod.testing.xenlab): build it if the cache is not current,
boot Xen 4.17 with its Debian dom0 in QEMU, run the HVM test guest to its
20th tick, import colod and start ``twistd colod --help`` in dom0, stop.

It takes minutes, so it exists only when XENLAB=1 is in the environment;
``make test`` runs only the fast test of how the lab reads Xen's console.
With XENLAB=1 it is never skipped: a lab that cannot be built or booted
fails the test, and the failure says why.
"""

from __future__ import annotations

import os
from pathlib import Path

from colod.testing.xenlab import XenLab, smoke


def test_triple_faults_are_read_from_xens_console(tmp_path: Path) -> None:
    """The domids of guests that triple-faulted, from console lines as Xen 4.17 prints them
    (here written to the serial log by the test; no lab is started)."""
    lab = XenLab(tmp_path / "run", progress=None)
    lab.serial_log.parent.mkdir(parents=True, exist_ok=True)
    with open(lab.serial_log, "wb") as console:
        console.write(b"(d1) [   37.79] Booting from c000:003c\r\n"
                      b"(XEN) [  145.57] d1v0 Triple fault - invoking HVM shutdown action 1\r\n"
                      b"(XEN) [  145.58] *** Dumping Dom1 vcpu#0 state: ***\r\n(XEN) [  150.1] d12v0 Triple")
    assert lab.triple_faulted() == [1]
    with open(lab.serial_log, "ab") as console:  # the rest of a line the lab had read half of
        console.write(b" fault - invoking HVM shutdown action 1\r\n"
                      b"(XEN) [  151.0] d12v0: upcall vector f3\r\n")
    assert lab.triple_faulted() == [1, 12]

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
