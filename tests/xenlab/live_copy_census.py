"""How often the lab's HVM guest dies under Xen's own checkpointing, with no colod at all (issue 10).

    python -m tests.xenlab.live_copy_census [--runs N] [--checkpoints K] [--set XL_CFG_LINE ...]
                                            [--rate MIB_PER_S] [--busy N]

``make xen-test`` fails now and then because the guest triple-faults during a
live copy (Xen's console: ``Triple fault - invoking HVM shutdown action``),
a copy colod drives through libxl-save-helper.  This asks whether Xen alone
does the same here: the lab boots once, and each run creates the HVM test
guest, lets it tick, and has Xen's own ``xl remus`` (the live copy under
log-dirty tracking, then a checkpoint every 3 s) send it to Xen's own
receiver (``xl migrate-receive -r -e``) in the same dom0, until the sender
reports K checkpoints, the console shows a triple fault, or the deadline
passes; then every guest is destroyed.  One line per run, then the counts:
runs, runs that reached K checkpoints, triple faults, other ends.  Exit
status 0 when every run could be judged (whatever the counts say).

``--rate`` slows the stream to the receiver (a copy loop in dom0, the
sender's other direction untouched), so that Xen's live copy takes as long
as colod's does in the lab (colod's stream goes through two daemons and TLS
in a dom0 under TCG: about 2 MiB/s); ``--busy`` keeps dom0's CPUs busy, as
colod's daemons do while they copy.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import attrs

from colod.testing.xenlab import XenLab, XenLabError

GUEST = "hvm1"
SENDER_LOG = "/var/log/xen/census-sender.log"
#: Seconds one run may take: the live copy under TCG, then the checkpoints.
RUN_DEADLINE = 420.0
#: Copies stdin to stdout at no more than argv[1] bytes a second.
THROTTLE = ("import sys, time\n"
            "rate = float(sys.argv[1]); began = time.monotonic(); sent = 0\n"
            "while chunk := sys.stdin.buffer.read1(65536):\n"
            "    sys.stdout.buffer.write(chunk); sys.stdout.buffer.flush(); sent += len(chunk)\n"
            "    time.sleep(max(0.0, began + sent / rate - time.monotonic()))\n")


@attrs.frozen
class Conditions:
    """What a census holds the same for all its runs."""

    #: xl.cfg lines over guest.cfg's.
    settings: list[str]
    #: MiB a second that the stream is slowed to, or None for Xen's own pace.
    rate: float | None
    #: Busy loops that keep dom0's CPUs busy during each run, as colod's two daemons do.
    busy: int

    def __str__(self) -> str:
        said = [f"guest.cfg + {', '.join(self.settings)}"] if self.settings else []
        said += [f"the stream at {self.rate:g} MiB/s"] if self.rate is not None else []
        said += [f"{self.busy} busy loops in dom0"] if self.busy else []
        return f" ({'; '.join(said)})" if said else ""


def one_run(lab: XenLab, checkpoints: int, conditions: Conditions) -> tuple[str, str]:
    """One guest through xl remus under the conditions; its end ("checkpoints", "triple fault",
    "deadline", "sender ended") and what was seen."""
    faults = len(lab.triple_faulted())
    lab.create_guest(GUEST, settings=conditions.settings)
    lab.wait_guest_ticks(GUEST, 10)
    receiver = "xl migrate-receive -r -e 2>>/var/log/xen/census-receiver.log"
    if conditions.rate is not None:
        receiver = f"python3 /root/throttle.py {conditions.rate * (1 << 20):.0f} | {receiver}"
        lab.check(f"cat > /root/throttle.py <<'EOF'\n{THROTTLE}EOF")
    lab.check(f"rm -f /root/busy.pids; for i in $(seq {conditions.busy}); do "
              "setsid sh -c 'while :; do :; done' </dev/null >/dev/null 2>&1 & "
              "echo $! >> /root/busy.pids; done")
    began = time.monotonic()
    lab.check(f"rm -f {SENDER_LOG}; setsid xl -v remus -F -n -d -i 3000 -s '' {GUEST} "
              f"{shlex.quote(receiver)} > {SENDER_LOG} 2>&1 < /dev/null & echo $! > /root/census.pid")
    end = "deadline"
    done = 0
    while time.monotonic() - began < RUN_DEADLINE:
        time.sleep(2)
        _, out = lab.run(f"grep -c 'Checkpointed save' {SENDER_LOG}; kill -0 $(cat /root/census.pid) && "
                         "echo alive || echo gone")
        words = out.split()
        done = int(words[0]) if words and words[0].isdigit() else done
        if len(lab.triple_faulted()) > faults:
            end = "triple fault"
            break
        if done >= checkpoints:
            end = "checkpoints"
            break
        if words[-1:] == ["gone"]:
            end = "sender ended"
            break
    seen = f"{done} checkpoints in {time.monotonic() - began:.0f} s"
    lab.run("kill -TERM $(cat /root/census.pid /root/busy.pids) 2>/dev/null; sleep 2; "
            "for d in $(xl list | awk 'NR > 2 {print $1}'); do xl destroy $d; done", timeout=120)
    if end == "sender ended":
        seen += "; sender: " + lab.run(f"tail -n 2 {SENDER_LOG}")[1].strip().replace("\n", " | ")
    return end, seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--checkpoints", type=int, default=10)
    parser.add_argument("--set", action="append", default=[], metavar="XL_CFG_LINE",
                        help="an xl.cfg line over the guest's (hap=0, or extra=\"...\" for its kernel)")
    parser.add_argument("--rate", type=float, metavar="MIB_PER_S",
                        help="the stream's pace (default: Xen's own)")
    parser.add_argument("--busy", type=int, default=0, metavar="N", help="busy loops in dom0 during each run")
    args = parser.parse_args()
    conditions = Conditions(args.set, args.rate, args.busy)
    counts = {"checkpoints": 0, "triple fault": 0, "deadline": 0, "sender ended": 0}
    try:
        with XenLab() as lab:
            lab.build()
            lab.start()
            for number in range(args.runs):
                end, seen = one_run(lab, args.checkpoints, conditions)
                counts[end] += 1
                print(f"run {number + 1}: {end}: {seen}", flush=True)
    except XenLabError as error:
        print(f"live-copy census: the lab failed: {error}", flush=True)
        return 1
    print(f"live-copy census, xl remus alone{conditions}, {args.runs} runs: reached {args.checkpoints} "
          f"checkpoints {counts['checkpoints']}, triple faults {counts['triple fault']}, "
          f"deadline {counts['deadline']}, sender ended {counts['sender ended']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
