"""Faults among the lab's two daemons and etcd, a watch on both guests, and the judgement of a healed pair:
the rig of the partition matrix (tests/engine/test_partition_matrix.py) and of the random fault schedules
(``python -m tests.schedules``).

A L{Pair} is the lab's primary and secondary under a failover policy, linked
through the link proxy (tests.cluster), each reaching etcd through a relay of
its own (colod.testing.relay).  A L{Fault} is held from apply() to heal():

- ``link``: the peer link, both ways: the proxy holds every byte, heartbeats
  too, and TCP retries, as in a network partition;
- ``primary-etcd``, ``secondary-etcd``: that node's way to etcd (its relay
  frozen);
- ``freeze-primary``, ``freeze-secondary``: that node's colod SIGSTOPped (its
  QEMUs, and the primary's guard, run on), SIGCONT at heal;
- ``etcd-down``: etcd stopped, and started again on its data at heal: a
  restart.

A L{Watch} looks at both guests every LOOK seconds, in a thread (a query of a
QEMU that the guard is stopping waits for its deadline, and the proxy must
keep forwarding meanwhile): a look at which both guests run is a violation.
After the faults heal, L{settle} waits until exactly one guest runs and the
other node says why not, watches a while longer, and judges the outcome: the
one that runs is the one etcd names; if it took over, with no checkpoint
older than the last it said it applied (SVM_READY), and none newer than the
last sent to it.
"""

from __future__ import annotations

import enum
import json
import signal
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import LoopingCall

from colod.failover.etcd import EtcdClient
from colod.testing.etcd import EtcdServer
from colod.testing.lab import Lab, LabError
from colod.testing.relay import Relay
from tests.cluster import Direction, LinkProxy, start_protected, wait
from tests.rig import sleep

#: Seconds between two looks at both guests.
LOOK = 0.05
#: The looks L{Watch.runs} goes by: a second's worth.
RECENT = 20
#: Seconds from the last heal until exactly one guest must run: a claim's round, the lease's TTL
#: (added by settle()), and a loaded machine's slack.
SETTLE = 30.0
#: The writer's operations a primary that keeps its guest must make after the heal (it runs, really).
PROGRESS = 20
#: The secondary's states while it stands by, and the one in which it waits for an operator.
STANDING_BY = frozenset({"applying", "resuming", "running", "suspending", "receiving_checkpoint"})
AWAITING_OPERATOR = "awaiting_operator"
#: The primary's states in which it stopped its guest for good.
STOPPED_FOR_GOOD = frozenset({"fenced", "superseded"})


class Fault(enum.Enum):
    LINK = "link"
    PRIMARY_ETCD = "primary-etcd"
    SECONDARY_ETCD = "secondary-etcd"
    FREEZE_PRIMARY = "freeze-primary"
    FREEZE_SECONDARY = "freeze-secondary"
    ETCD_DOWN = "etcd-down"


#: The faults that need etcd.
ETCD_FAULTS = frozenset({Fault.PRIMARY_ETCD, Fault.SECONDARY_ETCD, Fault.ETCD_DOWN})


class Pair:
    """The lab's pair under ``policy`` ("etcd", with an etcd-server of its own and ``ttl`` s leases, or
    "heartbeat-only"), the link through a proxy and each node's way to etcd through a relay."""

    def __init__(self, workdir: Path, policy: str = "etcd", ttl: int = 3) -> None:
        self.etcd = EtcdServer(workdir) if policy == "etcd" else None
        self.relays: dict[str, Relay] = {}
        settings: dict[str, Any] = {"failover": f'policy = "{policy}"'}
        if self.etcd is not None:
            for name in ("host-a", "host-b"):
                self.relays[name] = Relay(reactor, self.etcd.client_port)
            settings.update(etcd=self.etcd, etcd_lease_ttl=ttl,
                            etcd_ports={name: relay.port for name, relay in self.relays.items()})
        self.ttl = ttl
        self.lab = Lab(workdir, **settings)
        self.proxy = LinkProxy(self.lab.secondary_port)
        self.held: set[Fault] = set()

    async def start(self) -> None:
        """Both nodes protected, the writer running on the primary."""
        await start_protected(self.lab, self.proxy)

    async def apply(self, fault: Fault) -> None:
        if fault in ETCD_FAULTS and self.etcd is None:
            raise ValueError(f"{fault.value} needs the etcd policy")
        self.held.add(fault)
        await maybeDeferred(self._switch(fault)[0])

    async def heal(self, fault: Fault) -> None:
        self.held.discard(fault)
        await maybeDeferred(self._switch(fault)[1])

    def _switch(self, fault: Fault) -> tuple[Callable[[], object], Callable[[], object]]:
        """What applies ``fault``, and what heals it (either may return a Deferred)."""
        if fault is Fault.LINK:
            return lambda: self._link(self.proxy.hold), lambda: self._link(self.proxy.release)
        if fault in (Fault.PRIMARY_ETCD, Fault.SECONDARY_ETCD):
            relay = self.relays["host-a" if fault is Fault.PRIMARY_ETCD else "host-b"]
            return relay.freeze, relay.thaw
        if fault in (Fault.FREEZE_PRIMARY, Fault.FREEZE_SECONDARY):
            node = self.lab.primary if fault is Fault.FREEZE_PRIMARY else self.lab.secondary
            return lambda: node.signal_daemon(signal.SIGSTOP), lambda: node.signal_daemon(signal.SIGCONT)
        etcd = self.etcd
        assert etcd is not None

        def restart() -> Deferred[object]:
            etcd.launch()  # from the reactor's thread: etcd dies with the thread that started it
            return threads.deferToThread(etcd.wait_healthy)

        return lambda: threads.deferToThread(etcd.stop), restart

    @staticmethod
    def _link(act: Callable[[Direction], None]) -> None:
        for direction in Direction:
            act(direction)

    async def owner(self) -> dict[str, Any] | None:
        """The domain's owner key in etcd (node and epoch), read straight from etcd; None: no owner."""
        assert self.etcd is not None
        client = EtcdClient([self.etcd.url], reactor, tls=self.etcd.tls)
        found = await client.get(f"/colod/{self.lab.domain}/owner".encode())
        return None if found is None else dict(json.loads(found.value))

    async def epoch(self) -> int | None:
        """The domain's newest epoch in etcd; None: none yet."""
        assert self.etcd is not None
        client = EtcdClient([self.etcd.url], reactor, tls=self.etcd.tls)
        found = await client.get(f"/colod/{self.lab.domain}/epoch".encode())
        return None if found is None else int(found.value)

    async def close(self) -> None:
        """Heal what is held, then stop everything, whatever state it is in."""
        for fault in list(self.held):
            if fault is not Fault.ETCD_DOWN:
                await self.heal(fault)
        for node in self.lab.nodes:  # a QEMU the guard stopped, or a daemon frozen, is killed, not waited for
            node.kill_daemon()
            node.kill_qemu()
        self.lab.close()
        await self.proxy.close()
        for relay in self.relays.values():
            await relay.close()


class Watch:
    """Looks at both guests every LOOK seconds from start() to stop(): who runs, and the looks at which both
    did ('RR')."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.looks = 0
        #: The looks at which both guests ran, by their number.
        self.both: list[int] = []
        #: Who ran at the last RECENT looks: the primary's guest, the secondary's.
        self.recent: deque[tuple[bool, bool]] = deque(maxlen=RECENT)
        self._loop = LoopingCall(self._look)
        self._done: Deferred[Any] | None = None

    def start(self) -> None:
        self._done = self._loop.start(LOOK)

    async def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        if self._done is not None:
            await self._done

    def _look(self) -> Deferred[None]:
        primary, secondary = self.lab.primary, self.lab.secondary
        looked = threads.deferToThread(lambda: (primary.guest_runs(), secondary.guest_runs()))
        return looked.addCallback(self._seen)

    def _seen(self, runs: tuple[bool, bool]) -> None:
        self.looks += 1
        self.recent.append(runs)
        if all(runs):
            self.both.append(self.looks)

    def runs(self) -> str:
        """Whose guest ran lately: "primary", "secondary", "both" (not at one look) or "none".  A protected
        primary's guest is paused at each checkpoint, so one look may miss it."""
        primary, secondary = (any(look[side] for look in self.recent) for side in (0, 1))
        return {(True, False): "primary", (False, True): "secondary", (True, True): "both"}.get(
            (primary, secondary), "none")


@attrs.frozen
class Outcome:
    """How a pair ended up after its faults healed."""

    #: "primary", "secondary", "none" or "both": whose guest ran lately (L{Watch.runs}).
    runs: str
    primary: str
    secondary: str
    #: etcd's owner of the domain and its epoch ("host-b/2"), "-" without an owner or etcd.
    owner: str
    took_over: bool
    #: The primary stopped its guest (fenced or superseded, or stopped by its guard).
    fenced: bool
    violations: tuple[str, ...]
    looks: int
    #: After a takeover, the writer's operations the secondary holds, and the range allowed (what it said it
    #: applied, what was sent to it); "" otherwise.
    data: str = ""

    def row(self) -> str:
        judged = "ok" if not self.violations else "VIOLATION: " + "; ".join(self.violations)
        return (f"runs {self.runs}; primary {self.primary}, secondary {self.secondary}; owner {self.owner}; "
                f"{self.data}{self.looks} looks; {judged}")


def _state(status: dict[str, Any] | None) -> str:
    return "-" if status is None else str(status.get("state"))


def _quiet(pair: Pair, runs: str, primary: dict[str, Any] | None, secondary: dict[str, Any] | None) -> bool:
    """Whether the node whose guest does not run says why: the secondary stands by or awaits the operator;
    the primary stopped its guest for good; and the one whose guest runs is the primary there."""
    if runs == "primary":
        return _state(secondary) in STANDING_BY | {AWAITING_OPERATOR}
    if runs == "secondary":
        return _state(primary) in STOPPED_FOR_GOOD and bool((secondary or {}).get("failed_over"))
    return False


async def settle(pair: Pair, watch: Watch, floor: int) -> Outcome:
    """Wait (with a deadline) until exactly one guest runs and the other node says why not, watch a
    lease's TTL longer, and judge: both guests never ran; the one that runs is etcd's owner; a takeover
    holds a checkpoint no older than the last the secondary said it applied (and than ``floor`` writer
    operations, those done before the first fault) and no newer than the last sent to it; a primary that
    keeps its guest makes progress.
    """
    lab = pair.lab
    deadline = time.monotonic() + SETTLE + pair.ttl
    # Quiet for a lease's TTL on end: a late change (a frozen node's stale status, a recheck that wins, a
    # guard that stops its guest) shows meanwhile.
    quiet_since: float | None = None
    while time.monotonic() < deadline:
        if not _quiet(pair, watch.runs(), lab.primary.status(), lab.secondary.status()):
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= pair.ttl:
            break
        await sleep(0.2)
    primary, secondary, now = lab.primary.status(), lab.secondary.status(), watch.runs()
    violations: list[str] = []
    if watch.both:
        violations.append(f"both guests ran at {len(watch.both)} of {watch.looks} looks (first at look "
                          f"{watch.both[0]})")
    if not _quiet(pair, now, primary, secondary):
        violations.append(f"not settled {SETTLE + pair.ttl:g} s after the heal: the guest runs: {now}; "
                          f"primary {_state(primary)}, secondary {_state(secondary)}")
    owner = await pair.owner() if pair.etcd is not None else None
    owner_name = "-" if owner is None else f"{owner['node']}/{owner['epoch']}"
    if owner is not None and now in ("primary", "secondary"):
        runner = lab.primary if now == "primary" else lab.secondary
        if owner["node"] != runner.name:
            violations.append(f"the guest runs on the {now} ({runner.name}), etcd's owner is {owner_name}")
    took_over = bool((secondary or {}).get("failed_over"))
    if pair.etcd is not None and owner is None and now != "none":
        epoch = await pair.epoch()
        if not (now == "secondary" and took_over and epoch == (secondary or {}).get("generation")):
            violations.append(f"the guest runs on the {now}, and nobody owns the domain in etcd "
                              f"(epoch {epoch})")
        # else: a node that took over keeps no owner key once its own lease lapsed (docs/engine.md); etcd's
        # epoch is its generation, so no other node can win the domain.
        owner_name = f"- (epoch {epoch})"
    data = ""
    if took_over and now == "secondary":
        verdict = lab.verify(lab.secondary)
        ledger = pair.proxy.ledger
        newest, applied = ledger.committed_ops or 0, max(ledger.applied_ops or 0, floor)
        data = f"took over at {verdict.ops} ops (applied {applied}, sent {newest}); "
        if not verdict.ok or not applied <= verdict.ops <= newest:
            violations.append(f"the secondary took over with {verdict.summary}; it had said it applied "
                              f"{applied} writer operations; the last checkpoint sent to it held {newest}")
    if now == "primary":
        try:
            await wait(lab.until_ops(lab.ops() + PROGRESS, 10.0))
        except LabError as e:
            violations.append(f"the primary's guest makes no progress: {e}")
    fenced = _state(primary) in STOPPED_FOR_GOOD or lab.primary.qemu_stopped()
    return Outcome(now, _state(primary), _state(secondary), owner_name, took_over, fenced, tuple(violations),
                   watch.looks, data)


#: The partition matrix's outcomes as its tests ran, for the run's summary (tests/conftest.py).
MATRIX: list[tuple[str, str, Outcome]] = []


def matrix_table() -> list[str]:
    """MATRIX as a table: the faults, what was expected, what happened."""
    lines = [f"{'faults (held together, then healed)':<48} {'expected':<10} outcome"]
    for faults, expected, outcome in MATRIX:
        lines.append(f"{faults:<48} {expected:<10} {outcome.row()}")
    return lines
