"""colod.reactor: the asyncio loop colod keeps is the one the reactor runs on, and other reactors are refused.

The tests run on the reactor colod installed (tests/conftest.py, tests/__init__.py);
a reactor installed some other way needs a process of its own.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial import unittest

from colod import reactor as colod_reactor
from colod.reactor import WrongReactor, asyncio_loop


def _in_reactor(check: Callable[[], None]) -> Deferred[None]:
    """``check()`` called from the running reactor (a callLater callback), as a Deferred."""
    return deferLater(reactor, 0, check)


def _run(script: str) -> subprocess.CompletedProcess[str]:
    """``script`` in a fresh Python, which has no reactor until the script installs one."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=60)


class KeptLoopTests(unittest.TestCase):
    def test_the_kept_loop_is_the_one_callbacks_run_on(self) -> Deferred[None]:
        """Before the reactor runs and inside it, asyncio_loop() is the loop running its callbacks."""
        before = asyncio_loop()
        self.assertIs(colod_reactor._loop, before)

        def check() -> None:
            self.assertIs(asyncio.get_running_loop(), before)
            self.assertIs(asyncio_loop(), before)

        return _in_reactor(check)

    def test_a_task_made_before_the_reactor_runs_is_run_by_it(self) -> Deferred[None]:
        """What qemu.qmp's client does (colod.qmp): a task made before the reactor runs, awaited in it."""
        async def where() -> asyncio.AbstractEventLoop:
            return asyncio.get_running_loop()

        done = Deferred.fromFuture(asyncio_loop().create_task(where()))
        return done.addCallback(self.assertIs, asyncio_loop())

    def test_a_reactor_on_another_loop_is_refused(self) -> Deferred[None]:
        """Inside a reactor running another loop than the kept one, asyncio_loop() says so."""
        other = asyncio.new_event_loop()
        self.addCleanup(other.close)
        self.patch(colod_reactor, "_loop", other)

        def check() -> None:
            with self.assertRaisesRegex(WrongReactor, "runs on another loop than the one colod kept"):
                asyncio_loop()

        return _in_reactor(check)

    def test_without_a_kept_loop_only_the_running_reactor_tells(self) -> Deferred[None]:
        """An asyncio reactor colod did not install: its loop is known inside it, and not before."""
        running = asyncio_loop()
        self.patch(colod_reactor, "_loop", None)
        with self.assertRaisesRegex(WrongReactor, r"cannot know the loop of an asyncio reactor installed "
                                    r"without colod\.reactor\.use_asyncio_reactor\(\) until it runs"):
            asyncio_loop()

        def check() -> None:
            self.assertIs(asyncio_loop(), running)

        return _in_reactor(check)


class OtherReactorTests(unittest.TestCase):
    def test_a_non_asyncio_reactor_is_refused_by_name(self) -> None:
        """The default reactor installed: both functions refuse it, naming it, and say what to do."""
        out = _run("""
            from twisted.internet import default
            default.install()
            from twisted.internet import reactor
            from colod.reactor import WrongReactor, asyncio_loop, use_asyncio_reactor
            print(type(reactor).__name__)
            for call in (use_asyncio_reactor, asyncio_loop):
                try:
                    call()
                except WrongReactor as e:
                    print(e)
        """)
        self.assertEqual(out.stderr, "")
        name, installing, asking = out.stdout.splitlines()
        self.assertIn(name, ("EPollReactor", "PollReactor", "SelectReactor"))
        self.assertEqual(installing, "colod needs Twisted's asyncio reactor (qemu.qmp is asyncio-only) "
                         f"but the {name} is installed: run 'twistd colod ...' without --reactor, or with "
                         "--reactor=asyncio")
        self.assertEqual(asking, f"colod needs Twisted's asyncio reactor, not the {name}: install it with "
                         "colod.reactor.use_asyncio_reactor()")

    def test_no_reactor_is_refused_and_none_installed(self) -> None:
        out = _run("""
            import sys
            from colod.reactor import WrongReactor, asyncio_loop
            try:
                asyncio_loop()
            except WrongReactor as e:
                print(e)
            print("twisted.internet.reactor" in sys.modules)
        """)
        self.assertEqual((out.stdout, out.stderr), (
            "no reactor is installed: install it with colod.reactor.use_asyncio_reactor()\nFalse\n", ""))

    def test_an_asyncio_reactor_installed_by_another_is_taken_with_its_loop(self) -> None:
        """twistd/trial --reactor=asyncio install it without a loop: use_asyncio_reactor() keeps its loop."""
        out = _run("""
            import asyncio
            from twisted.internet import asyncioreactor
            asyncioreactor.install()
            from twisted.internet import reactor
            from colod.reactor import asyncio_loop, use_asyncio_reactor
            use_asyncio_reactor()
            kept = asyncio_loop()
            def check():
                try:
                    print(asyncio.get_running_loop() is kept, asyncio_loop() is kept)
                finally:
                    reactor.stop()
            reactor.callLater(0, check)  # not callWhenRunning: its callbacks run before the loop does
            reactor.run()
        """)
        self.assertEqual((out.stdout, out.stderr), ("True True\n", ""))
