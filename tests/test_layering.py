"""The daemon never imports the test rig: no module under colod/ outside colod/testing/ imports colod.testing.

The imports are read from each module's source (ast), every form included:
``import colod.testing.lab``, ``from colod import testing``, ``from colod.testing.lab import Lab``
and relative ones (``from ..testing import lab``), wherever they sit (a function body, a
``TYPE_CHECKING`` block), so adding one anywhere fails this test.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

COLOD = Path(__file__).resolve().parent.parent / "colod"
RIG = "colod.testing"


def module_name(path: Path) -> str:
    """The dotted name of a module file under colod/ (a package's __init__ is the package)."""
    parts = path.relative_to(COLOD.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, module: str, is_package: bool) -> Iterator[str]:
    """Every module name the source imports, or may import (``from a import b`` gives a and a.b)."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            yield origin
            yield from (f"{origin}.{alias.name}" for alias in node.names)


def imports_rig(source: str, module: str, is_package: bool = False) -> list[str]:
    """The names of colod.testing (or below) that the source imports."""
    return [name for name in imported_names(source, module, is_package)
            if name == RIG or name.startswith(RIG + ".")]


def daemon_modules() -> list[Path]:
    return [path for path in sorted(COLOD.rglob("*.py")) if "testing" not in path.relative_to(COLOD).parts]


class LayeringTests(SynchronousTestCase):
    def test_no_daemon_module_imports_the_rig(self) -> None:
        """No module of the daemon imports colod.testing, in any form."""
        modules = daemon_modules()
        self.assertIn(COLOD / "service.py", modules)
        self.assertNotIn(COLOD / "testing" / "lab.py", modules)
        offenders = {
            str(path.relative_to(COLOD.parent)): found
            for path in modules
            if (found := imports_rig(path.read_text(), module_name(path), path.name == "__init__.py"))
        }
        self.assertEqual(offenders, {})

    def test_every_form_of_import_is_caught(self) -> None:
        """The check sees absolute, from-package, relative and nested imports of the rig."""
        caught = [
            ("import colod.testing.lab", "colod.service"),
            ("from colod import testing", "colod.service"),
            ("from colod.testing.qemu_process import QemuProcess", "colod.engine.core"),
            ("from ..testing import writer", "colod.engine.core"),
            ("from . import testing", "colod.service"),
            ("def f():\n    from colod.testing import lab\n", "colod.tap"),
            ("if TYPE_CHECKING:\n    import colod.testing\n", "colod.tap"),
        ]
        for source, module in caught:
            self.assertNotEqual(imports_rig(source, module), [], source)
        self.assertNotEqual(imports_rig("from .testing import lab", "colod", is_package=True), [])

    def test_other_imports_pass(self) -> None:
        """Names that only resemble the rig's are not taken for it."""
        for source, module in [
            ("from colod import config", "colod.tap"),
            ("from ..devices import testing_helpers", "colod.engine.core"),
            ("import colod.testingx", "colod.tap"),
            ("from . import qmp", "colod.service"),
        ]:
            self.assertEqual(imports_rig(source, module), [], source)
