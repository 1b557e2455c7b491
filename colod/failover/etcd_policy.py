# -*- test-case-name: tests.failover.test_etcd_policy, tests.engine.test_etcd_failover -*-
"""The ``etcd`` failover policy: a domain runs as primary only on the node that owns it in etcd.

Each node keeps a lease in etcd for each of its domains (L{EtcdSeat}); the
domain's owner key is attached to its owner's lease.  The epoch etcd keeps
for a domain is the domain's generation (colod.engine.generation):

- The primary claims the domain at start with its generation as the epoch it
  knows (L{EtcdSeat.own}); it runs its guest as primary only if it wins, and
  then writes the won epoch as its generation, which the secondary adopts
  through the link's hello.  It pauses its guest before its lease can expire
  when it cannot renew it (colod.engine.primary's ``fenced``, and the guard
  process, colod.failover.guard, should colod itself die or freeze).
- The secondary, when its primary is lost, claims with its generation
  (L{EtcdPolicy}): the claim wins only once the primary's lease has expired
  (a live primary keeps its owner key) and only if no node took the domain
  in a newer epoch; the epoch won is the generation the takeover then writes.
  An operator's request to take over needs a won claim too
  (L{EtcdOperatorRequest}): etcd, not a person, breaks the tie.

etcd's linearizable transactions and lease expiry carry the safety: a claim
that wins is the only one for its epoch, and the loser of a partition is the
one whose lease lapses, which pauses its guest first.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from colod.config import FailoverConfig, PolicyName
from colod.failover.etcd import EtcdClient, EtcdError, EtcdUnavailable
from colod.failover.lease import LeaseKeeper
from colod.failover.ownership import ClaimResult, MalformedRecord, NotLeased, Ownership
from colod.failover.policy import OperatorRequest, Verdict

#: Seconds between two claims of a secondary deciding a takeover.
CLAIM_INTERVAL = 1.0
#: Seconds a secondary claims beyond the lease's TTL and two calls' deadlines before it gives up.
CLAIM_SLACK = 3.0
#: Back-off between two tries to reach etcd at start: the first delay, and the most.
FIRST_DELAY, MOST_DELAY = 0.5, 10.0


class EtcdSeat:
    """One domain's place in etcd for this node: a lease kept alive, and claims made with it.

    ``clock`` is the keeper's (a MonotonicClock in the daemon); ``reactor``
    carries the HTTP calls.  ``on_expiring`` and ``on_lost`` are the keeper's
    (the primary fences on either); ``on_renewed`` gets each new safe deadline
    (on ``clock``), for the guard.  A lease etcd lost is granted again (a
    secondary needs one to claim with): on_lost is called first.
    """

    log = Logger()

    def __init__(self, failover: FailoverConfig, domain: str, node: str, reactor: IReactorTime,
                 clock: IReactorTime, *, on_expiring: Callable[[], None] = lambda: None,
                 on_lost: Callable[[str], None] = lambda why: None,
                 on_renewed: Callable[[float], None] = lambda deadline: None) -> None:
        self.domain = domain
        self.node = node
        self.ttl = failover.etcd_lease_ttl
        self.prefix = failover.etcd_prefix
        self.client = EtcdClient(failover.etcd_endpoints, reactor, failover.etcd_timeout, failover.etcd_tls)
        self._reactor = reactor
        self._clock = clock
        self._on_expiring = on_expiring
        self._on_lost = on_lost
        self._on_renewed = on_renewed
        self.keeper: LeaseKeeper | None = None
        self.ownership: Ownership | None = None
        self._stopped = False
        self._leasing: Deferred[LeaseKeeper] | None = None

    def lease(self) -> Deferred[LeaseKeeper]:
        """A granted lease, kept alive: tries until etcd grants one (or stop()), backing off, a log line per
        try."""
        self._leasing = Deferred.fromCoroutine(self._lease())
        return self._leasing

    async def _lease(self) -> LeaseKeeper:
        delay = FIRST_DELAY
        while True:
            keeper = LeaseKeeper(self.client, self.ttl, clock=self._clock, on_expiring=self._on_expiring,
                                 on_lost=self._lost, on_renewed=self._on_renewed)
            try:
                await keeper.start()
            except (EtcdUnavailable, EtcdError) as e:
                self.log.warn("domain {domain}: no etcd lease yet ({error}); trying again in {delay:g} s",
                              domain=self.domain, error=e, delay=delay)
                await deferLater(self._reactor, delay, lambda: None)
                delay = min(2 * delay, MOST_DELAY)
                continue
            self.keeper, self.ownership = keeper, Ownership(self.client, keeper, self.prefix)
            return keeper

    def _lost(self, why: str) -> None:
        self.keeper = self.ownership = None
        self._on_lost(why)
        if not self._stopped:
            self.lease().addErrback(lambda failure: None if failure.check(defer.CancelledError) else
                                    self.log.failure("domain {domain}: granting a new etcd lease", failure,
                                                     domain=self.domain))

    def claim(self, known_epoch: int) -> Deferred[ClaimResult]:
        """Claim the domain in epoch ``known_epoch + 1`` (colod.failover.ownership).  @raise NotLeased."""
        if self.ownership is None:
            raise NotLeased(f"no etcd lease yet to claim {self.domain} with")
        return self.ownership.claim(self.domain, self.node, known_epoch)

    def own(self, generation: int) -> Deferred[ClaimResult]:
        """The primary's claim at start, with its ``generation``: tried until etcd answers it, backing off,
        a log line per try.  The result may be a loss: another node owns the domain, or a newer epoch."""
        return Deferred.fromCoroutine(self._own(generation))

    async def _own(self, generation: int) -> ClaimResult:
        delay = FIRST_DELAY
        while True:
            if self.keeper is None:
                await self.lease()
            try:
                return await self.claim(generation)
            except (EtcdUnavailable, EtcdError, NotLeased) as e:
                self.log.warn("domain {domain}: cannot claim it in etcd ({error}); the guest is left as it "
                              "is; trying again in {delay:g} s", domain=self.domain, error=e, delay=delay)
            await deferLater(self._reactor, delay, lambda: None)
            delay = min(2 * delay, MOST_DELAY)

    def safe(self) -> bool:
        """Whether this node may act on its lease now."""
        return self.keeper is not None and self.keeper.safe()

    def stop(self) -> Deferred[None]:
        """Stop renewing, and revoke the lease (its owner key goes with it)."""
        self._stopped = True
        if self._leasing is not None and not self._leasing.called:
            self._leasing.cancel()
        keeper, self.keeper, self.ownership = self.keeper, None, None
        if keeper is None:
            return defer.succeed(None)
        return keeper.stop(revoke=True)


class EtcdPolicy:
    """Yes once this node wins the domain in etcd with its generation; no if it cannot by a deadline.

    A claim is made every CLAIM_INTERVAL: a primary that died loses its owner
    key when its lease expires, at most the lease's TTL after the loss was
    seen, so the secondary claims for that long, plus two calls' deadlines and
    CLAIM_SLACK, before it says no (the primary is alive and cut off, or etcd
    is unreachable, or a newer epoch is there: the operator decides).  While
    the operator has not, it claims again once a TTL (L{Rechecking}): so a
    primary that fenced itself while etcd was out of reach of both nodes is
    taken over once etcd is back, with no operator.
    """

    name = PolicyName.ETCD

    def __init__(self, seat: EtcdSeat, generation: Callable[[], int], reactor: IReactorTime,
                 timeout: float) -> None:
        self._seat = seat
        self._generation = generation
        self._reactor = reactor
        self.deadline = seat.ttl + 2 * timeout + CLAIM_SLACK

    def decide(self) -> Deferred[Verdict]:
        return Deferred.fromCoroutine(self._decide())

    @property
    def recheck_interval(self) -> float:
        """A claim per lease TTL while the operator decides: a primary that fenced itself, or died
        while etcd was out of reach, loses its key within a TTL of etcd's coming back."""
        return float(self._seat.ttl)

    def recheck(self) -> Deferred[Verdict]:
        return self.claim_once()

    def claim_once(self) -> Deferred[Verdict]:
        """One claim, and what it says."""
        return Deferred.fromCoroutine(self._try(self._generation()))

    async def _decide(self) -> Verdict:
        began = self._reactor.seconds()
        while True:
            verdict = await self._try(self._generation())
            if verdict.allowed or self._reactor.seconds() - began >= self.deadline:
                return verdict
            await deferLater(self._reactor, CLAIM_INTERVAL, lambda: None)

    async def _try(self, known: int) -> Verdict:
        """One claim, and what it says; a refusal's reason as the verdict's."""
        domain = self._seat.domain
        try:
            result = await self._seat.claim(known)
        except NotLeased as e:
            return Verdict(False, f"this node's etcd lease is not safe to act on ({e})")
        except (EtcdUnavailable, EtcdError, MalformedRecord) as e:
            return Verdict(False, f"etcd did not answer the claim: {e}")
        if result.won:
            if result.epoch != known + 1 or self._generation() != known:  # the takeover writes known + 1
                return Verdict(False, f"won {domain} in etcd in epoch {result.epoch}, yet this node's "
                                      f"generation is now {self._generation()}: not taking over")
            if not self._seat.safe():
                return Verdict(False, f"won {domain} in etcd in epoch {result.epoch}, but this node's lease "
                                      "was no longer safe to act on")
            return Verdict(True, f"this node owns {domain} in etcd now, epoch {result.epoch}")
        if result.epoch > known:
            owner = f" (owner {result.owner.node})" if result.owner else ""
            return Verdict(False, f"etcd's epoch {result.epoch} for {domain} is newer than this node's "
                                  f"generation {known}{owner}: another node took it over")
        if result.owner is not None:
            return Verdict(False, f"{result.owner.node} still holds {domain} in etcd (epoch "
                                  f"{result.owner.epoch}): its lease is alive, so may be its guest")
        return Verdict(False, f"etcd's epoch for {domain} is {result.epoch}, older than this node's "
                              f"generation {known}: etcd lost data, or another cluster's")


class EtcdOperatorRequest(OperatorRequest):
    """An operator's request to take over, handed to the engine only once this node wins the domain in etcd.

    A request found makes one claim (L{EtcdPolicy.claim_once}); it is handed
    over at the next look if the claim won, and dropped, with the reason in
    the log, if it lost: a primary that still holds its lease may run its
    guest, whatever the operator believes.  The engine's first take() removes
    a request left from before its start (colod.engine.secondary): that one
    is passed through unclaimed.
    """

    log = Logger()

    def __init__(self, state_dir: str, domain: str, policy: EtcdPolicy) -> None:
        super().__init__(state_dir, domain)
        self._domain = domain
        self._policy = policy
        self._started = False
        self._claiming = False
        self._granted: str | None = None

    def take(self) -> str | None:
        if not self._started:
            self._started = True
            return super().take()
        granted, self._granted = self._granted, None
        if granted is not None or self._claiming:
            return granted
        by = super().take()
        if by is not None:
            self._claiming = True
            self._policy.claim_once().addCallback(self._answered, by)
        return None

    def _answered(self, verdict: Verdict, by: str) -> None:
        self._claiming = False
        if verdict.allowed:
            self._granted = f"{by}; {verdict.why}"
        else:
            self.log.error("domain {domain}: the operator's takeover request ({by}) is refused: {why}",
                           domain=self._domain, by=by, why=verdict.why)
