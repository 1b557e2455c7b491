"""The daemon's Xen wiring (colod.xen.setup, colod.service) up to where a hypervisor is needed.

``xl`` here is a stand-in script (Xen's xl needs a hypervisor): it answers
``domid`` from its environment and refuses it otherwise.  The Xen lab runs
the daemon against the real xl, helper and domain (tests/xenlab).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from twisted.internet import reactor

from colod.config import XenConfig
from colod.xen.setup import XenSetupError, config_name, domain_id, secondary_guest
from tests.rig import TWISTD, ScratchTestCase, async_test, wait_for_text
from tests.test_config import XEN

STAND_IN_XL = """#!/bin/sh
# Stands in for Xen's xl (which needs a hypervisor): "domid NAME" answers $STAND_IN_DOMID, if set.
if [ "$1" = domid ] && [ -n "$STAND_IN_DOMID" ]; then echo "$STAND_IN_DOMID"; exit 0; fi
echo "Error: could not find domain $2" >&2
exit 1
"""


class XenSetupTests(ScratchTestCase):
    def xen(self, **changes: str) -> XenConfig:
        xl = self.workdir / "xl"
        xl.write_text(STAND_IN_XL)
        xl.chmod(0o755)
        fields = {"domain": "guest1", "xl_config": str(self.workdir / "guest1.cfg"),
                  "save_helper": "/usr/lib/xen-4.17/bin/libxl-save-helper", "xl": str(xl), **changes}
        return XenConfig(**fields)

    @async_test
    async def test_domain_id(self) -> None:
        os.environ["STAND_IN_DOMID"] = "7"
        self.addCleanup(os.environ.pop, "STAND_IN_DOMID", None)
        self.assertEqual(await domain_id(reactor, self.xen(), 10.0), 7)

    @async_test
    async def test_no_such_domain(self) -> None:
        xen = self.xen()
        with self.assertRaises(XenSetupError) as caught:
            await domain_id(reactor, xen, 10.0)
        self.assertEqual(str(caught.exception), f"no running Xen domain 'guest1' ({xen.xl} domid: "
                                                "Error: could not find domain guest1)")

    def test_secondary_needs_its_xl_configuration(self) -> None:
        xen = self.xen()
        with self.assertRaises(XenSetupError) as caught:
            secondary_guest(xen, reactor, 10.0)
        self.assertEqual(str(caught.exception), f"cannot read the guest's xl configuration {xen.xl_config}: "
                                                "No such file or directory")


    def test_the_xl_configuration_names_the_same_guest(self) -> None:
        """The guard destroys NAME--incoming by the configured name: a different one is refused."""
        xen = self.xen()
        Path(xen.xl_config).write_text('type = "hvm"\nname = "other"\n')
        with self.assertRaises(XenSetupError) as caught:
            secondary_guest(xen, reactor, 10.0)
        self.assertEqual(str(caught.exception), f"the xl configuration {xen.xl_config} names the guest "
                                                "'other', but [domain.xen] domain is 'guest1': they must be "
                                                "the same, for the receiver's copy is other--incoming until "
                                                "it takes over")


@pytest.mark.parametrize(("text", "name"), [
    ('name = "hvm1"\n', "hvm1"),
    ("  name='hvm-2'  # a comment\n", "hvm-2"),
    ('memory = 128\nname = "x"\n', "x"),
    ('#name = "old"\nmemory = 128\n', None),
    ('hostname = "h"\n', None),
])
def test_config_name(text: str, name: str | None) -> None:
    assert config_name(text.encode()) == name


class XenDaemonTests(ScratchTestCase):
    """twistd colod with a Xen domain, as far as this host (no hypervisor) lets it go."""

    def start(self, role: str, text: str) -> tuple[subprocess.Popen[str], Path]:
        xl = self.workdir / "xl"
        xl.write_text(STAND_IN_XL)
        xl.chmod(0o755)
        (self.workdir / "guest1.cfg").write_text('name = "guest1"\n')
        config = self.workdir / "colod.toml"
        config.write_text(text.replace('role = "secondary"', f'role = "{role}"').replace(
            "[colod]\n", f'[colod]\nstate_dir = "{self.workdir}/state"\n').replace(
            'xl_config = "/etc/xen/guest1.cfg"', f'xl_config = "{self.workdir}/guest1.cfg"\nxl = "{xl}"'))
        log = self.workdir / "colod.log"
        with open(log, "w") as out:
            daemon = subprocess.Popen([TWISTD, "-n", "--pidfile=", "colod", "--config", str(config)],
                                      stdout=out, stderr=subprocess.STDOUT, text=True)
        self.addCleanup(lambda: (daemon.poll() is None and daemon.kill(), daemon.wait()))
        return daemon, log

    def stop(self, daemon: subprocess.Popen[str], log: Path) -> None:
        daemon.send_signal(signal.SIGTERM)
        self.assertEqual(daemon.wait(20), 0, log.read_text())
        self.assertNotIn("Traceback", log.read_text())

    def test_secondary_waits_for_its_primary_without_a_qemu(self) -> None:
        """A Xen secondary has no domain until the first checkpoint: it listens at once, needs no QEMU."""
        daemon, log = self.start("secondary", XEN)
        status = self.workdir / "state" / "guest1" / "status.json"
        deadline = time.monotonic() + 20
        while not status.exists():
            self.assertLess(time.monotonic(), deadline, log.read_text())
            time.sleep(0.05)
        found = json.loads(status.read_text())
        self.assertEqual((found["role"], found["state"], found["protected"]),
                         ("secondary", "waiting_for_primary", False))
        self.assertIn("Xen's Remus receiver", found["guest"])
        self.assertNotIn("connecting to QEMU", log.read_text())
        self.stop(daemon, log)

    def test_primary_waits_for_its_domain(self) -> None:
        """A Xen primary whose domain is not running says so by name and keeps trying."""
        daemon, log = self.start("primary", XEN)
        wait_for_text(log, "no running Xen domain 'guest1'", 20)
        self.assertIn("trying again in 2 s", wait_for_text(log, "trying again in 2 s", 10))
        self.stop(daemon, log)
