# -*- test-case-name: tests.test_tap -*-
"""colod runs on Twisted's asyncio reactor, because qemu.qmp is asyncio-only."""

from __future__ import annotations

import asyncio
import sys

ASYNCIO_REACTOR = "AsyncioSelectorReactor"


class WrongReactor(Exception):
    """Another reactor was installed before colod could install the asyncio one."""


def use_asyncio_reactor() -> None:
    """Install the asyncio reactor, or refuse a different one already installed.

    twistd imports the global reactor only after the plugin's options are
    parsed, so a plain ``twistd colod`` gets here with none installed.
    """
    installed = sys.modules.get("twisted.internet.reactor")
    if installed is None:
        from twisted.internet import asyncioreactor

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        asyncioreactor.install(loop)
        return
    name = type(installed).__name__
    if name != ASYNCIO_REACTOR:
        raise WrongReactor(
            f"colod needs Twisted's asyncio reactor (qemu.qmp is asyncio-only) but the {name} "
            "is installed: run 'twistd colod ...' without --reactor, or with --reactor=asyncio"
        )


def asyncio_loop() -> asyncio.AbstractEventLoop:
    """The asyncio loop the installed Twisted reactor runs on.

    Coroutines for qemu.qmp must be scheduled on this loop, not on whatever
    asyncio.get_event_loop() returns outside a running loop (a test runner or
    library may have set another one).  Twisted keeps the loop in the
    reactor's ``_asyncioEventloop``; there is no public accessor.
    """
    from twisted.internet import reactor

    loop = getattr(reactor, "_asyncioEventloop", None)
    if loop is None:
        raise WrongReactor(
            f"colod needs Twisted's asyncio reactor, not the {type(reactor).__name__}"
        )
    return loop
