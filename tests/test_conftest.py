"""The suite's own runner (tests/conftest.py) fails a plain test that returns anything but None.

A plain ``async def`` test returns a coroutine that nobody awaits, and a plain
test returning a Deferred is never waited for: without the check both would
pass whatever their bodies assert.  Each case runs in a pytest of its own,
with a copy of the real conftest.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).with_name("conftest.py")

CASES = '''
from twisted.internet.defer import fail, succeed

async def test_async_that_fails():
    assert False

async def test_async_that_passes():
    pass

def test_failed_deferred():
    return fail(ValueError("boom"))

def test_fired_deferred():
    return succeed(None)

def test_value():
    return 3

def test_none():
    assert True
'''


def test_plain_tests_must_return_none(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(CONFTEST, suite / "conftest.py")
    (suite / "test_cases.py").write_text(CASES)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "--reactor=asyncio",
         str(suite)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    outcomes = {line.split()[1].split("::")[-1]: line.split()[0] for line in done.stdout.splitlines()
                if line.startswith(("PASSED ", "FAILED "))}
    assert outcomes == {
        "test_async_that_fails": "FAILED", "test_async_that_passes": "FAILED",
        "test_failed_deferred": "FAILED", "test_fired_deferred": "FAILED", "test_value": "FAILED",
        "test_none": "PASSED",
    }, done.stdout
    assert "test_async_that_fails returned a coroutine that nobody awaited" in done.stdout
    assert "test_failed_deferred returned a Deferred that nobody waited for" in done.stdout
    assert "test_value returned 3; a test function must return None" in done.stdout
    assert "never awaited" not in done.stdout + done.stderr  # closed, not left to a RuntimeWarning

