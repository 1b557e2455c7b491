"""How often the lab's HVM guest dies under Xen's own checkpointing, with no colod at all (issue 10).

    python -m tests.xenlab.live_copy_census [--runs N] [--checkpoints K]

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
"""

from __future__ import annotations

import argparse
import sys
import time

from colod.testing.xenlab import GUEST_CONFIG, XenLab, XenLabError

GUEST = "hvm1"
SENDER_LOG = "/var/log/xen/census-sender.log"
TRIPLE_FAULT = "Triple fault"
#: Seconds one run may take: the live copy under TCG, then the checkpoints.
RUN_DEADLINE = 420.0


def triple_faults(lab: XenLab) -> int:
    """The triple faults Xen's console has shown so far."""
    lab.serial_tail()  # reads what the console wrote meanwhile into the log
    return lab.serial_log.read_text(errors="replace").count(TRIPLE_FAULT)


def one_run(lab: XenLab, checkpoints: int, extra: str) -> tuple[str, str]:
    """One guest (``extra`` appended to its kernel's command line) through xl remus; its end
    ("checkpoints", "triple fault", "deadline", "sender ended") and what was seen."""
    faults = triple_faults(lab)
    if extra:
        lab.check(f"xl create {GUEST_CONFIG} 'name=\"{GUEST}\"' 'serial=\"file:{lab.guest_serial(GUEST)}\"' "
                  f"'extra=\"console=ttyS0,115200 quiet loglevel=3 {extra}\"'", timeout=120)
    else:
        lab.create_guest(GUEST)
    lab.wait_guest_ticks(GUEST, 10)
    began = time.monotonic()
    lab.check(f"rm -f {SENDER_LOG}; setsid xl -v remus -F -n -d -i 3000 -s '' {GUEST} "
              f"'xl migrate-receive -r -e 2>>/var/log/xen/census-receiver.log' > {SENDER_LOG} 2>&1 "
              "< /dev/null & echo $! > /root/census.pid")
    end = "deadline"
    done = 0
    while time.monotonic() - began < RUN_DEADLINE:
        time.sleep(2)
        _, out = lab.run(f"grep -c 'Checkpointed save' {SENDER_LOG}; kill -0 $(cat /root/census.pid) && "
                         "echo alive || echo gone")
        words = out.split()
        done = int(words[0]) if words and words[0].isdigit() else done
        if triple_faults(lab) > faults:
            end = "triple fault"
            break
        if done >= checkpoints:
            end = "checkpoints"
            break
        if words[-1:] == ["gone"]:
            end = "sender ended"
            break
    seen = f"{done} checkpoints in {time.monotonic() - began:.0f} s"
    lab.run("kill -TERM $(cat /root/census.pid) 2>/dev/null; sleep 2; "
            "for d in $(xl list | awk 'NR > 2 {print $1}'); do xl destroy $d; done", timeout=120)
    if end == "sender ended":
        seen += "; sender: " + lab.run(f"tail -n 2 {SENDER_LOG}")[1].strip().replace("\n", " | ")
    return end, seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--checkpoints", type=int, default=10)
    parser.add_argument("--extra", default="", help="appended to the guest kernel's command line")
    args = parser.parse_args()
    counts = {"checkpoints": 0, "triple fault": 0, "deadline": 0, "sender ended": 0}
    try:
        with XenLab() as lab:
            lab.build()
            lab.start()
            for number in range(args.runs):
                end, seen = one_run(lab, args.checkpoints, args.extra)
                counts[end] += 1
                print(f"run {number + 1}: {end}: {seen}", flush=True)
    except XenLabError as error:
        print(f"live-copy census: the lab failed: {error}", flush=True)
        return 1
    kernel = f" (guest kernel + {args.extra!r})" if args.extra else ""
    print(f"live-copy census, xl remus alone{kernel}, {args.runs} runs: reached {args.checkpoints} "
          f"checkpoints {counts['checkpoints']}, triple faults {counts['triple fault']}, "
          f"deadline {counts['deadline']}, sender ended {counts['sender ended']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
