"""Random fault schedules on a real pair (issue 14): ``python -m tests.schedules -n 100``.

Each schedule starts a fresh pair (tests.partition.Pair: the lab's two
daemons and QEMUs, a real etcd-server, the link through the proxy, each
node's way to etcd through a relay), waits until it is protected, then
applies one to three faults drawn at random (a network cut, a frozen colod,
an etcd restart), each at a random moment of the first seconds and held for
a random while, some overlapping, and heals them.  Both guests are watched
throughout; after the heal, the outcome is judged as the partition matrix
judges its rows (tests.partition.settle).  Each schedule prints one line,
and the run ends with the counts: schedules run, takeovers, self-fences,
secondaries waiting for the operator, violations (there must be none).  A
schedule is drawn from ``--seed`` and its number, so any one can be run
again alone (``--first N -n 1``).  Exit status 0 with no violation, 1 with
any.  ``--policy heartbeat-only`` (network cuts and freezes only) shows that
the watch catches two primaries.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from colod.reactor import use_asyncio_reactor

if TYPE_CHECKING:  # imported once the reactor is installed: tests.partition imports the global one
    from tests.partition import Outcome

#: The longest a fault starts after the pair is protected, and the shortest and longest it is held (in
#: leases' TTLs).
LATEST_START = 4.0
SHORTEST_HOLD = 0.2
LONGEST_HOLD = 3.0


@attrs.frozen
class Step:
    fault: str
    at: float
    held: float

    def __str__(self) -> str:
        return f"{self.fault}@{self.at:.1f}+{self.held:.1f}"


def draw(seed: int, number: int, faults: list[str], ttl: int) -> list[Step]:
    """Schedule ``number`` of the run seeded ``seed``: one to three distinct faults, their moments and
    holds."""
    rng = random.Random(seed * 1_000_003 + number)
    chosen = rng.sample(faults, rng.randint(1, min(3, len(faults))))
    return sorted((Step(fault, round(rng.uniform(0, LATEST_START), 1),
                        round(rng.uniform(SHORTEST_HOLD, LONGEST_HOLD) * ttl, 1)) for fault in chosen),
                  key=lambda step: step.at)


async def run_one(workdir: Path, policy: str, ttl: int, steps: list[Step]) -> Outcome:
    """Run one schedule on a fresh pair in ``workdir``; its Outcome."""
    from tests.cluster import wait
    from tests.partition import Fault, Pair, Watch, settle
    from tests.rig import sleep

    pair = Pair(workdir, policy, ttl)
    try:
        await pair.start()
        floor = await wait(pair.lab.ops_floor())
        watch = Watch(pair.lab)
        watch.start()
        try:
            began = time.monotonic()
            events = sorted([(step.at, True, step) for step in steps]
                            + [(step.at + step.held, False, step) for step in steps], key=lambda e: e[0])
            for at, applying, step in events:
                await sleep(max(0.0, began + at - time.monotonic()))
                if applying:
                    await pair.apply(Fault(step.fault))
                else:
                    await pair.heal(Fault(step.fault))
            return await settle(pair, watch, floor)
        finally:
            await watch.stop()
    finally:
        await pair.close()


async def main(reactor: object, args: argparse.Namespace) -> None:
    """Run the schedules.  @raise SystemExit: 1 if any violated the invariant or could not run."""
    from tests.partition import ETCD_FAULTS, Fault

    faults = [fault.value for fault in Fault if args.policy == "etcd" or fault not in ETCD_FAULTS]
    if args.faults:
        faults = args.faults
    counts: Counter[str] = Counter()
    began = time.monotonic()
    for number in range(args.first, args.first + args.n):
        steps = draw(args.seed, number, faults, args.ttl)
        workdir = Path(tempfile.mkdtemp(prefix="colod-schedule-", dir="/tmp"))
        started = time.monotonic()
        try:
            outcome = await run_one(workdir, args.policy, args.ttl, steps)
        except Exception as e:  # noqa: BLE001 - a pair that did not start is counted and named, not fatal
            counts["rig failures"] += 1
            print(f"#{number:3d} {' '.join(map(str, steps))}: the rig failed: {type(e).__name__}: {e}",
                  flush=True)
            continue
        finally:
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
        counts["schedules"] += 1
        counts["takeovers"] += outcome.took_over
        counts["self-fences"] += outcome.fenced
        counts["awaiting operator"] += outcome.secondary == "awaiting_operator"
        counts["violations"] += len(outcome.violations)
        counts["schedules with a violation"] += bool(outcome.violations)
        kept = f" (kept in {workdir})" if args.keep else ""
        print(f"#{number:3d} {' '.join(map(str, steps))}: {outcome.row()} "
              f"[{time.monotonic() - started:.0f} s]{kept}", flush=True)
    took = time.monotonic() - began
    print(f"\npolicy {args.policy}, leases of {args.ttl} s, seed {args.seed}, {took:.0f} s:")
    for name in ("schedules", "takeovers", "self-fences", "awaiting operator", "violations",
                 "schedules with a violation", "rig failures"):
        print(f"  {name}: {counts[name]}")
    if counts["violations"] or counts["rig failures"]:
        raise SystemExit(1)


def arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.schedules", description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=5, help="schedules to run (default 5)")
    parser.add_argument("--seed", type=int, default=1, help="the run's seed (default 1)")
    parser.add_argument("--first", type=int, default=0, help="the first schedule's number (default 0)")
    parser.add_argument("--policy", choices=("etcd", "heartbeat-only"), default="etcd")
    parser.add_argument("--ttl", type=int, default=3, help="the etcd leases' TTL, seconds (default 3)")
    parser.add_argument("--faults", nargs="+", metavar="FAULT",
                        help="draw only from these faults (default: all the policy allows)")
    parser.add_argument("--keep", action="store_true", help="keep each pair's directory, logs included")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("-n must be at least 1")
    return args


if __name__ == "__main__":
    parsed = arguments(sys.argv[1:])
    use_asyncio_reactor()
    from twisted.internet import defer, task

    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, parsed)))
