"""How the suite runs under pytest, and the run-wide check that no QEMU outlives it.

Twisted code is tested with trial TestCases, which spin the reactor
themselves; sans-IO code with plain test functions.  pytest-twisted would run
every plain function inside its own reactor greenlet, after which no trial
TestCase can run the reactor again; so plain functions are called directly
here, and pytest-twisted keeps only the functions it marked (its
``inlineCallbacks`` and ``ensureDeferred`` decorators).
"""

from __future__ import annotations

import pytest

from colod.qemu_process import reap_all


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if getattr(pyfuncitem.obj, "_pytest_twisted_mark", None) is not None:
        return None
    # The same arguments pytest's own call passes: the function's fixtures.
    pyfuncitem.obj(**{name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames})
    return True


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    left = reap_all()
    if left:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print(f"\nFAILED: QEMU processes left running after the tests: {', '.join(left)}")
