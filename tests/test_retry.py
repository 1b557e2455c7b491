"""colod.retry: attempts until one succeeds, one at a time, a fixed delay apart, stoppable at any time."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from colod.retry import Retry


class Attempts:
    """Each attempt is a Deferred the test fires by hand; records what the Retry reported."""

    def __init__(self, again: bool = True) -> None:
        self.made: list[Deferred[str]] = []
        self.succeeded: list[str] = []
        self.failed: list[Failure] = []
        self.cancelled = 0
        self.again = again

    def attempt(self) -> Deferred[str]:
        self.made.append(Deferred(self.cancel))
        return self.made[-1]

    def cancel(self, attempt: Deferred[str]) -> None:
        self.cancelled += 1

    def failure(self, failure: Failure) -> bool:
        self.failed.append(failure)
        return self.again


class RetryTests(SynchronousTestCase):
    def retry(self, again: bool = True) -> tuple[Retry[str], Attempts, Clock]:
        clock, attempts = Clock(), Attempts(again)
        retry = Retry(attempts.attempt, succeeded=attempts.succeeded.append, failed=attempts.failure,
                      delay=2.0, clock=clock)
        self.addCleanup(lambda: self.assertEqual(clock.getDelayedCalls(), []))
        return retry, attempts, clock

    def test_first_attempt_at_once_and_success_reported(self) -> None:
        """start() attempts at once; a success is reported and nothing more is tried."""
        retry, attempts, clock = self.retry()
        retry.start()
        self.assertEqual(len(attempts.made), 1)
        attempts.made[0].callback("up")
        self.assertEqual(attempts.succeeded, ["up"])
        clock.advance(10)
        self.assertEqual(len(attempts.made), 1)

    def test_failure_retried_after_the_delay(self) -> None:
        """A failed attempt is followed by another exactly ``delay`` seconds later, not before."""
        retry, attempts, clock = self.retry()
        retry.start()
        attempts.made[0].errback(ConnectionRefusedError("no"))
        self.assertEqual(len(attempts.failed), 1)
        clock.advance(1.9)
        self.assertEqual(len(attempts.made), 1)
        clock.advance(0.1)
        self.assertEqual(len(attempts.made), 2)
        attempts.made[1].callback("up")
        self.assertEqual(attempts.succeeded, ["up"])

    def test_one_attempt_at_a_time(self) -> None:
        """start() while an attempt is under way or due makes no second one."""
        retry, attempts, clock = self.retry()
        retry.start()
        retry.start()
        self.assertEqual(len(attempts.made), 1)
        attempts.made[0].errback(ConnectionRefusedError("no"))
        retry.start()
        self.assertEqual(len(attempts.made), 1)
        clock.advance(2)
        self.assertEqual(len(attempts.made), 2)
        retry.stop()

    def test_start_again_after_a_success(self) -> None:
        """After a success (then a lost connection) start() attempts again at once."""
        retry, attempts, _ = self.retry()
        retry.start()
        attempts.made[0].callback("first")
        retry.start()
        attempts.made[1].callback("second")
        self.assertEqual(attempts.succeeded, ["first", "second"])

    def test_giving_up(self) -> None:
        """A failure the caller will not retry ends the attempts."""
        retry, attempts, clock = self.retry(again=False)
        retry.start()
        attempts.made[0].errback(ValueError("never"))
        clock.advance(10)
        self.assertEqual(len(attempts.made), 1)

    def test_stop_cancels_the_attempt_under_way(self) -> None:
        """stop() cancels the attempt under way; its failure reaches nobody, and none follows."""
        retry, attempts, clock = self.retry()
        retry.start()
        retry.stop()
        self.assertEqual(attempts.cancelled, 1)
        self.assertEqual(attempts.failed, [])
        clock.advance(10)
        self.assertEqual(len(attempts.made), 1)

    def test_stop_cancels_the_attempt_due(self) -> None:
        """stop() between two attempts cancels the next one."""
        retry, attempts, clock = self.retry()
        retry.start()
        attempts.made[0].errback(ConnectionRefusedError("no"))
        retry.stop()
        clock.advance(10)
        self.assertEqual(len(attempts.made), 1)
