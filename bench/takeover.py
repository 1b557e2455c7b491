# -*- test-case-name: tests.engine.test_etcd_failover -*-
"""
Takeover time with the etcd failover policy and with heartbeat-only, side by side.

Usage: python bench/takeover.py [--runs N] [--ttl SECONDS]

Each run starts the lab's pair (colod.testing.lab: two real daemons, their
QEMUs, the guest writer), protected, under one policy (etcd: with a real
etcd-server the lab starts, leases of ``--ttl`` seconds), then makes one fault
and times it until the secondary's status says it took over:

- host: the primary's host is lost (its writer, QEMU and colod killed at once);
- freeze: the primary's colod is frozen (SIGSTOP) while its guest runs.

It prints each run, then a table of the median per policy and fault, with
whether the primary's guest still ran when the secondary's began (a split
brain: heartbeat-only's, on a freeze).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import attrs

from colod.testing.etcd import EtcdServer
from colod.testing.lab import Lab

FAULTS = ("host", "freeze")
POLICIES = ("heartbeat-only", "etcd")
#: Seconds a takeover may take before the run counts as failed.
TAKEOVER_TIMEOUT = 60.0


def run(policy: str, fault: str, ttl: int) -> tuple[float, bool]:
    """One run: the seconds from the fault to the takeover, and whether both guests then ran."""
    workdir = Path(tempfile.mkdtemp(prefix="colod-takeover-", dir="/tmp"))
    etcd = EtcdServer(workdir) if policy == "etcd" else None
    lab = Lab(workdir, etcd=etcd, etcd_lease_ttl=ttl, failover=f'policy = "{policy}"')
    try:
        lab.prepare()
        lab.start_qemus()
        lab.start_daemons()
        lab.until_protected().wait()
        lab.start_writer(0.002)
        lab.until_checkpoints(lab.primary.status()["checkpoints"] + 3, 20.0).wait()
        began = time.monotonic()
        if fault == "host":
            lab.lose_primary_host()
        else:
            lab.primary.signal_daemon(signal.SIGSTOP)
        lab.until(lab.secondary, lambda s: s["failed_over"], TAKEOVER_TIMEOUT, "takeover", began).wait()
        took = time.monotonic() - began
        both = fault == "freeze" and not lab.primary.qemu_stopped()
        return took, both
    finally:
        lab.primary.kill_daemon()
        lab.primary.kill_qemu()
        lab.close()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per policy and fault (3)")
    parser.add_argument("--ttl", type=int, default=3, help="the etcd lease's TTL, seconds (3)")
    options = parser.parse_args()
    defaults = attrs.fields(Lab)
    print(f"heartbeat interval {defaults.heartbeat_interval.default:g} s, timeout "
          f"{defaults.heartbeat_timeout.default:g} s; etcd lease TTL {options.ttl} s; "
          f"{options.runs} runs each")
    results: dict[tuple[str, str], list[tuple[float, bool]]] = {}
    for fault in FAULTS:
        for policy in POLICIES:
            for number in range(options.runs):
                took, both = run(policy, fault, options.ttl)
                results.setdefault((policy, fault), []).append((took, both))
                print(f"  {policy:15} {fault:7} run {number + 1}: takeover after {took:.2f} s"
                      + ("; BOTH GUESTS RAN" if both else ""), flush=True)
    print(f"\n{'fault':8}" + "".join(f"{policy:>30}" for policy in POLICIES))
    for fault in FAULTS:
        cells = []
        for policy in POLICIES:
            runs = results[policy, fault]
            median = statistics.median(took for took, _ in runs)
            both = sum(both for _, both in runs)
            cells.append(f"{median:.2f} s median, {both}/{len(runs)} split")
        print(f"{fault:8}" + "".join(f"{cell:>30}" for cell in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
