"""How the suite runs under pytest, and the run-wide check that no QEMU outlives it.

Twisted code is tested with trial TestCases, which spin the reactor
themselves; sans-IO code with plain test functions.  pytest-twisted would run
every plain function inside its own reactor greenlet, after which no trial
TestCase can run the reactor again; so plain functions are called directly
here, and pytest-twisted keeps only the functions it marked (its
``inlineCallbacks`` and ``ensureDeferred`` decorators).

A plain function called here must return None.  An ``async def`` (a
coroutine) or a function returning a Deferred would otherwise "pass" without
its body having run to the end, or with its failure only logged; so any other
return value fails the test, naming what came back and what to do instead.
"""

from __future__ import annotations

import inspect

import pytest
from twisted.internet.defer import Deferred

from colod.reactor import use_asyncio_reactor
from colod.testing.qemu_process import reap_all


def _returned(result: object) -> str:
    """Why a plain test function that returned ``result`` cannot be taken as passed."""
    if inspect.iscoroutine(result):
        result.close()  # never awaited: its body did not run to the end
        return ("returned a coroutine that nobody awaited: make it a trial TestCase method "
                "with tests.rig.async_test, or decorate it with pytest_twisted.ensureDeferred")
    if isinstance(result, Deferred):
        result.addErrback(lambda _: None)  # reported here, not as an unhandled error
        return ("returned a Deferred that nobody waited for: make it a trial TestCase method, "
                "or decorate it with pytest_twisted.inlineCallbacks")
    return f"returned {result!r}; a test function must return None"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Install the reactor through colod's own installer, before pytest-twisted's configure.

    colod keeps the loop it installs the reactor on (colod.reactor.asyncio_loop);
    pytest-twisted, asked for ``--reactor=asyncio`` (setup.cfg), then finds an
    asyncio reactor installed and takes it.
    """
    use_asyncio_reactor()


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if getattr(pyfuncitem.obj, "_pytest_twisted_mark", None) is not None:
        return None
    # The same arguments pytest's own call passes: the function's fixtures.
    result = pyfuncitem.obj(**{name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames})
    if result is not None:
        pytest.fail(f"{pyfuncitem.name} {_returned(result)}", pytrace=False)
    return True


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    left = reap_all()
    if left:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print(f"\nFAILED: QEMU processes left running after the tests: {', '.join(left)}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The partition matrix's table of outcomes, when its tests ran (tests.partition)."""
    from tests.partition import MATRIX, matrix_table

    if MATRIX:
        terminalreporter.section("partition matrix (issue 14)")
        for line in matrix_table():
            terminalreporter.write_line(line)
