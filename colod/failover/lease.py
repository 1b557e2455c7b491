# -*- test-case-name: tests.failover.test_lease -*-
"""A node's etcd lease, kept alive, and the moment until which this node may act on it.

etcd expires a lease ``TTL`` seconds after the last renewal it applied, and
that renewal was applied after this node sent it.  So the lease cannot expire
before ``sent + TTL``, where ``sent`` is when the last renewal that succeeded
was sent (not answered: the answer may be slow) and TTL is the one etcd
returned.  The keeper's **safe deadline** is that moment less a margin (for
the pause of the guest, timers running late and clocks of different rates);
when it passes with no newer renewal, the keeper calls ``on_expiring``, and
the primary pauses its guest, while its lease, and so its ownership, is still
alive in etcd.  A renewal that succeeds later moves the deadline on again
(the lease never expired, so nobody can have taken the domain) and a later
lapse calls ``on_expiring`` again.  When etcd answers that the lease is gone
(expired or revoked) the keeper stops and calls ``on_lost``, after
``on_expiring`` if the deadline had not passed yet.

It renews every TTL/3, each renewal cut off at the next one's time, so two
renewals may fail before the deadline (TTL - TTL/4 by default) comes.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from colod.failover.etcd import EtcdClient, EtcdError, EtcdUnavailable, Lease

#: Renewals per TTL.
RENEWALS_PER_TTL = 3
#: The default margin, as a share of the TTL etcd granted.
MARGIN_SHARE = 0.25


class LeaseKeeper:
    """Grant a lease of ``ttl`` seconds at start(), renew it until stop(), and say when it may lapse.

    ``clock`` gives the time and the timers: in the daemon a MonotonicClock
    (the reactor's own follow the wall clock: colod.failover.monotonic), in
    unit tests a task.Clock.  ``margin`` (seconds) defaults to MARGIN_SHARE of
    the granted TTL.  ``on_renewed`` gets each later safe deadline (for colod.failover.guard).
    """

    log = Logger()

    def __init__(self, client: EtcdClient, ttl: int, *, clock: IReactorTime, on_expiring: Callable[[], None],
                 on_lost: Callable[[str], None], on_renewed: Callable[[float], None] = lambda deadline: None,
                 margin: float | None = None) -> None:
        self.ttl = ttl
        self.lease: Lease | None = None
        #: When the last renewal that succeeded (or the grant) was sent: etcd cannot expire the lease
        #: before this plus its TTL.
        self.renewed_at: float | None = None
        #: The safe deadline: renewed_at plus the TTL less the margin (clock time); None before the grant.
        self.deadline: float | None = None
        #: Renewals that succeeded (for tests and status).
        self.renewals = 0
        self._client = client
        self._clock = clock
        self._on_expiring = on_expiring
        self._on_lost = on_lost
        self._on_renewed = on_renewed
        self._margin = margin
        self._expiring = False
        self._stopped = False
        self._renewing: Deferred[int] | None = None
        self._next: IDelayedCall | None = None
        self._alarm: IDelayedCall | None = None

    def start(self) -> Deferred[Lease]:
        """Grant the lease and start renewing it; the lease.  @raise EtcdUnavailable, EtcdError."""
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> Lease:
        sent = self._clock.seconds()
        self.lease = await self._client.grant(self.ttl)
        self.log.info("etcd lease {lease:x} granted, TTL {ttl} s", lease=self.lease.id, ttl=self.lease.ttl)
        self._renewed(sent, self.lease.ttl)
        return self.lease

    @property
    def interval(self) -> float:
        """Seconds between two renewals."""
        return (self.lease.ttl if self.lease else self.ttl) / RENEWALS_PER_TTL

    def safe(self) -> bool:
        """Whether this node may act on its lease now: granted, not lost, and its safe deadline ahead."""
        return not self._stopped and self.deadline is not None and self._clock.seconds() < self.deadline

    def stop(self, revoke: bool = True) -> Deferred[None]:
        """Stop renewing; with ``revoke``, end the lease in etcd now (its keys go with it)."""
        return Deferred.fromCoroutine(self._stop(revoke))

    async def _stop(self, revoke: bool) -> None:
        was_stopped, self._stopped = self._stopped, True
        for timer in (self._next, self._alarm):
            if timer is not None and timer.active():
                timer.cancel()
        if self._renewing is not None:
            self._renewing.cancel()
        if revoke and not was_stopped and self.lease is not None:
            await self._client.revoke(self.lease.id)

    def _renewed(self, sent: float, ttl: int) -> None:
        """A renewal (or the grant) sent at ``sent`` succeeded and etcd gave the lease ``ttl`` seconds."""
        margin = self._margin if self._margin is not None else ttl * MARGIN_SHARE
        if self.deadline is None or sent + ttl - margin > self.deadline:
            self.renewed_at, self.deadline = sent, sent + ttl - margin
            self._on_renewed(self.deadline)
        if self._alarm is not None and self._alarm.active():
            self._alarm.cancel()
        now = self._clock.seconds()
        if now < self.deadline:
            self._expiring = False
            self._alarm = self._clock.callLater(self.deadline - now, self._expire)
        else:  # answered too late to count: the deadline it gives has passed already
            self._expire()
        self._schedule(sent + self.interval)

    def _schedule(self, at: float) -> None:
        if not self._stopped:
            self._next = self._clock.callLater(max(0.0, at - self._clock.seconds()), self._renew)

    def _renew(self) -> None:
        assert self.lease is not None
        sent = self._clock.seconds()
        self._renewing = self._client.keepalive(self.lease.id).addTimeout(self.interval, self._clock)
        self._renewing.addCallbacks(lambda ttl: self._answered(sent, ttl),
                                    lambda failure: self._failed(sent, failure))

    def _answered(self, sent: float, ttl: int) -> None:
        self._renewing = None
        if ttl > 0:
            self.renewals += 1
            self._renewed(sent, ttl)
        else:
            assert self.lease is not None
            self._lose(f"etcd no longer has lease {self.lease.id:x} (expired or revoked)")

    def _failed(self, sent: float, failure: Failure) -> None:
        self._renewing = None
        if self._stopped:
            return
        if failure.check(EtcdUnavailable, EtcdError, defer.TimeoutError):
            self.log.warn("etcd lease renewal failed: {why}", why=failure.getErrorMessage())
        else:
            self.log.failure("etcd lease renewal failed unexpectedly", failure)
        # Renewing on, whatever the failure: only a renewal can keep the deadline ahead.
        self._schedule(sent + self.interval)

    def _expire(self) -> None:
        if not self._expiring:
            self._expiring = True
            self.log.error("etcd lease {lease:x} was not renewed in time: it may expire soon",
                           lease=self.lease.id if self.lease else 0)
            self._on_expiring()

    def _lose(self, why: str) -> None:
        self._stopped = True
        if self._alarm is not None and self._alarm.active():
            self._alarm.cancel()
        self._expire()
        self.log.error("etcd lease lost: {why}", why=why)
        self._on_lost(why)
