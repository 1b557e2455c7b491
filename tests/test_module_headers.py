"""Each ``# -*- test-case-name: ... -*-`` header names test modules or packages that exist.

Editors and ``trial --testmodule`` run the tests a module's header names; a
header naming a test that was renamed or never written runs nothing, silently.
"""

from __future__ import annotations

import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
HEADER = re.compile(r"^#.*-\*-\s*test-case-name:\s*(?P<names>[\w.,\s]+?)\s*-\*-", re.MULTILINE)
SOURCES = ("colod", "twisted/plugins", "bench", "tools", "tests")


def named_tests(source: str) -> list[str]:
    """The dotted names a module's header (a comment in its first two lines) gives, or none."""
    match = HEADER.search("\n".join(source.splitlines()[:2]))
    return [name.strip() for name in match["names"].split(",")] if match else []


def exists(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


class HeaderTests(SynchronousTestCase):
    def test_every_header_names_existing_tests(self) -> None:
        """No module's test-case-name header names a test module that does not exist."""
        stale = {
            str(path.relative_to(ROOT)): missing
            for folder in SOURCES
            for path in sorted((ROOT / folder).rglob("*.py"))
            if (missing := [name for name in named_tests(path.read_text()) if not exists(name)])
        }
        self.assertEqual(stale, {})

    def test_headers_are_read(self) -> None:
        """The header is found with one or several names, and a missing name is told from a present one."""
        self.assertEqual(named_tests("# -*- test-case-name: tests.a,tests.b -*-\n"), ["tests.a", "tests.b"])
        self.assertEqual(named_tests('"""No header."""\n'), [])
        self.assertEqual(named_tests(ROOT.joinpath("colod", "tap.py").read_text()), ["tests.test_tap"])
        self.assertTrue(exists("tests.engine"))
        self.assertFalse(exists("tests.test_service"))
