# -*- test-case-name: tests.test_reactor -*-
"""colod runs on Twisted's asyncio reactor, because qemu.qmp is asyncio-only.

qemu.qmp's coroutines must run on the asyncio loop under the reactor, and
colod schedules some before the reactor runs (twistd starts the services
first; trial calls a test's setUp first).  Twisted has no public way to ask
a reactor for its loop, so colod keeps the loop itself, from the moment the
reactor is installed: use_asyncio_reactor().
"""

from __future__ import annotations

import asyncio
import sys

#: The loop under the installed reactor, once use_asyncio_reactor() has installed or accepted it.
_loop: asyncio.AbstractEventLoop | None = None


class WrongReactor(Exception):
    """Another reactor was installed before colod could install the asyncio one."""


def use_asyncio_reactor() -> None:
    """Install the asyncio reactor on a loop colod keeps, or refuse a different one already installed.

    twistd imports the global reactor only after the plugin's options are
    parsed, so a plain ``twistd colod`` gets here with none installed.  An
    asyncio reactor already installed (``twistd --reactor=asyncio``, ``trial
    --reactor=asyncio``) was made by Twisted's ``asyncioreactor.install()``
    without a loop, which wraps asyncio's current event loop and makes it
    current: colod keeps that loop, taken here, right after the install.
    asyncio_loop() refuses it later if the reactor turns out to run another.
    """
    global _loop
    installed = sys.modules.get("twisted.internet.reactor")
    if installed is None:
        from twisted.internet import asyncioreactor

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        asyncioreactor.install(loop)
        _loop = loop
        return
    if not _is_asyncio(installed):
        raise WrongReactor(
            "colod needs Twisted's asyncio reactor (qemu.qmp is asyncio-only) but the "
            f"{type(installed).__name__} is installed: run 'twistd colod ...' without --reactor, "
            "or with --reactor=asyncio"
        )
    if _loop is None:
        _loop = asyncio.get_event_loop()


def asyncio_loop() -> asyncio.AbstractEventLoop:
    """The asyncio loop the installed Twisted reactor runs on.

    Coroutines for qemu.qmp must be scheduled on this loop, not on whatever
    asyncio.get_event_loop() returns outside a running loop (a test runner or
    library may have set another one).  It is the loop use_asyncio_reactor()
    kept.  Without it, an asyncio reactor installed by someone else tells
    its loop only by running on it: inside the running reactor that loop is
    the answer; outside, there is none.

    @raise WrongReactor: no reactor, another kind, or an asyncio one whose loop colod cannot know here.
    """
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if _loop is not None:
        if running is not None and running is not _loop:
            raise WrongReactor(
                "the asyncio reactor runs on another loop than the one colod kept when it was installed: "
                "install it with colod.reactor.use_asyncio_reactor() before anything else"
            )
        return _loop
    installed = sys.modules.get("twisted.internet.reactor")
    if installed is None:
        raise WrongReactor("no reactor is installed: install it with colod.reactor.use_asyncio_reactor()")
    if not _is_asyncio(installed):
        raise WrongReactor(
            f"colod needs Twisted's asyncio reactor, not the {type(installed).__name__}: "
            "install it with colod.reactor.use_asyncio_reactor()"
        )
    if running is None:
        raise WrongReactor(
            "colod cannot know the loop of an asyncio reactor installed without "
            "colod.reactor.use_asyncio_reactor() until it runs: install it with that"
        )
    return running


def _is_asyncio(reactor: object) -> bool:
    """Whether ``reactor`` is Twisted's asyncio reactor (imported late: importing it installs nothing)."""
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    return isinstance(reactor, AsyncioSelectorReactor)
