# -*- test-case-name: tests.devices.test_group -*-
"""Run one hook on many devices at once and collect every failure by device name.

libxl joins its parallel device operations and keeps the last error; an admin
then sees one disk's problem and not the others'.  Here each failure stays
attached to the device it belongs to, and a deadline covers the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred, DeferredList, TimeoutError, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from colod.devices.errors import DeviceFailures, DeviceTimeout

_T = TypeVar("_T")

# One task: the names of the devices it stands for, and how to start it.
Task = tuple[Sequence[str], Callable[[], Deferred[_T] | Any]]


async def run_all(
    hook: str,
    tasks: Sequence[Task[_T]],
    deadline: tuple[float, IReactorTime] | None = None,
) -> list[_T]:
    """Start every task, wait for all of them, return their results in order.

    Fails with one DeviceFailures listing every device whose task failed.  A
    task's own DeviceFailures is merged (it already names its devices); any
    other error counts against all the names of its task.  With a ``deadline``
    (seconds, and the clock that counts them), the tasks still running then are
    cancelled and fail with DeviceTimeout.
    """
    started: list[Deferred[_T]] = []
    for _names, start in tasks:
        d = maybeDeferred(start)
        if deadline is not None:
            d.addTimeout(*deadline)
        started.append(d)
    outcomes = await DeferredList(started, consumeErrors=True)
    failures: dict[str, BaseException] = {}
    results: list[_T] = []
    for (names, _start), (ok, value) in zip(tasks, outcomes, strict=True):
        if ok:
            results.append(value)
            continue
        assert isinstance(value, Failure) and value.value is not None  # DeferredList's outcome of a failure
        error: BaseException = value.value
        if isinstance(error, DeviceFailures):
            failures.update(error.failures)
            continue
        if isinstance(error, (TimeoutError, CancelledError)) and deadline is not None:
            error = DeviceTimeout(hook, deadline[0])
        for name in names:
            failures[name] = error
    if failures:
        raise DeviceFailures(hook, failures)
    return results
