# -*- test-case-name: tests.failover.test_lease -*-
"""Timers on the monotonic clock, for the LeaseKeeper's safe deadline.

Twisted's reactor counts time, and runs its timers, by the wall clock
(``time.time``): were NTP to step the clock back by a minute, every reactor
timer would fire a minute late, the keeper's on_expiring among them, long
after etcd (which measures on its own monotonic clock) let the lease expire
and a rival take the domain.  The asyncio loop under colod's reactor counts on
``time.monotonic``, which no clock step moves; MonotonicClock gives its timers
as an IReactorTime, for the keeper's clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer


@implementer(IDelayedCall)
class _Timer:
    """A call the asyncio loop makes later; getTime() is on the loop's (monotonic) clock."""

    def __init__(self, clock: MonotonicClock, delay: float, call: Callable[[], object]) -> None:
        self._clock = clock
        self._call = call
        self._called = self._cancelled = False
        self._handle = clock.loop.call_later(delay, self._run)
        clock.pending.add(self)

    def _run(self) -> None:
        self._called = True
        self._clock.pending.discard(self)
        self._call()

    def getTime(self) -> float:
        return self._handle.when()

    def cancel(self) -> None:
        self._check()
        self._cancelled = True
        self._handle.cancel()
        self._clock.pending.discard(self)

    def delay(self, secondsLater: float) -> None:
        self.reset(self.getTime() + secondsLater - self._clock.seconds())

    def reset(self, secondsFromNow: float) -> None:
        self._check()
        self._handle.cancel()
        self._handle = self._clock.loop.call_later(secondsFromNow, self._run)

    def active(self) -> bool:
        return not (self._called or self._cancelled)

    def _check(self) -> None:
        if self._called:
            raise AlreadyCalled()
        if self._cancelled:
            raise AlreadyCancelled()


@implementer(IReactorTime)
class MonotonicClock:
    """IReactorTime on an asyncio loop: seconds() is the loop's time, and timers are the loop's."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: set[_Timer] = set()

    def seconds(self) -> float:
        return self.loop.time()

    def callLater(self, delay: float, callable: Callable[..., Any], *args: object,
                  **kw: object) -> IDelayedCall:
        return _Timer(self, delay, lambda: callable(*args, **kw))

    def getDelayedCalls(self) -> list[IDelayedCall]:
        return list(self.pending)
