"""Run-wide checks: no QEMU started by a test may outlive the test run."""

from __future__ import annotations

import pytest

from colod.qemu_process import reap_all


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    left = reap_all()
    if left:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print(f"\nFAILED: QEMU processes left running after the tests: {', '.join(left)}")
