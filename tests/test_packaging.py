"""The package as pip installs it: every package ships, and the twistd dropin is found and loads."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.rig import ScratchTestCase

REPO = Path(__file__).resolve().parent.parent


class WheelTests(ScratchTestCase):
    def test_plain_install_ships_and_finds_the_plugin(self) -> None:
        """A built wheel carries twisted/plugins/colod_plugin.py (no __init__), and a plain
        install of it lets Twisted's plugin system find the colod ServiceMaker."""
        out = self.workdir
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
             "-w", str(out / "dist"), str(REPO)],
            check=True, timeout=300, capture_output=True, cwd=out,
        )
        (wheel,) = (out / "dist").glob("colod-*.whl")
        names = set(zipfile.ZipFile(wheel).namelist())
        self.assertIn("twisted/plugins/colod_plugin.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        packages = {str(init.relative_to(REPO)) for init in (REPO / "colod").rglob("__init__.py")}
        self.assertEqual(packages - names, set(), "packages missing from setup.cfg's [options] packages")
        target = out / "site"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
            check=True, timeout=300, capture_output=True,
        )
        probe = (
            "import sys; sys.path.insert(0, sys.argv[1]);"
            "from twisted.plugin import getPlugins; from twisted.application.service import IServiceMaker;"
            "import colod.tap as tap; assert tap.__file__.startswith(sys.argv[1]), tap.__file__;"
            "print(sorted(p.tapname for p in getPlugins(IServiceMaker) if p.tapname == 'colod'))"
        )
        # Run outside the repository so that only the installed copy can be found.
        found = subprocess.run(
            [sys.executable, "-S", "-c", probe, str(target)], cwd=out, capture_output=True, text=True,
            timeout=60, env={"PYTHONPATH": ":".join(p for p in sys.path if "site-packages" in p)},
        )
        self.assertEqual(found.stdout.strip(), "['colod']", found.stderr)
