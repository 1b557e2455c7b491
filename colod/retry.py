# -*- test-case-name: tests.test_retry -*-
"""Trying again: the one reconnection loop of colod, for its QEMU and for the primary's peer link.

Twisted's ClientService keeps a connection up: it owns it, makes a new one
whenever it is lost and closes it at stop.  Neither thing colod reaches fits
that.  Its QEMU is reached through qemu.qmp, not a Twisted endpoint.  Its
secondary is dialled only until the engine has answered one link's hello;
from then on the link is the engine's, and stopping to dial must never cut it
(a link cut short of its last record can make a secondary take over while the
primary runs on).  So this is ClientService's retry part alone: run an attempt
until one succeeds, after a fixed delay, stoppable at any time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

_T = TypeVar("_T")


class Retry(Generic[_T]):
    """Call ``attempt`` until one succeeds, ``delay`` seconds after each failure, until stop().

    ``succeeded`` gets the result of the attempt that succeeded; then this
    rests until start() is called again (a lost connection).  ``failed`` gets
    each failure and says whether to try again (False gives up, as for a QEMU
    that can never do).  stop() cancels the attempt under way, whose failure
    is then nobody's: it is dropped.
    """

    def __init__(self, attempt: Callable[[], Deferred[_T]], *, succeeded: Callable[[_T], None],
                 failed: Callable[[Failure], bool], delay: float, clock: IReactorTime) -> None:
        self.delay = delay
        self._attempt = attempt
        self._succeeded = succeeded
        self._failed = failed
        self._clock = clock
        self._running = False
        self._pending: Deferred[_T] | None = None
        self._waiting: IDelayedCall | None = None

    def start(self) -> None:
        """Make an attempt now, unless one is under way or due."""
        self._running = True
        if self._pending is None and self._waiting is None:
            self._try()

    def stop(self) -> None:
        """Make no more attempts, and cancel the one under way."""
        self._running = False
        if self._waiting is not None:
            self._waiting.cancel()
            self._waiting = None
        if self._pending is not None:
            self._pending.cancel()

    def _try(self) -> None:
        self._waiting = None
        self._pending = pending = maybeDeferred(self._attempt)
        pending.addCallbacks(self._done, self._not_done)

    def _done(self, result: _T) -> None:
        self._pending = None
        self._succeeded(result)

    def _not_done(self, failure: Failure) -> None:
        self._pending = None
        if self._running and self._failed(failure) and self._running:
            self._waiting = self._clock.callLater(self.delay, self._try)
