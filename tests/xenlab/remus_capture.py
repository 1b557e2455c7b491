"""A Remus stream written by real Xen, read by colod-stream.

    python -m tests.xenlab.remus_capture [--checkpoints N]

In the lab's dom0, Xen's own ``xl remus`` checkpoints the HVM test guest
into Xen's own receiver through ``tee``, which keeps the stream.  Once the
file holds N checkpoints after the first copy and has stopped growing right
after a CHECKPOINT_END (the interval between checkpoints), ``xl remus`` is
stopped.  ``colod-stream verify --channel main`` must accept the file
(``--checkpointed auto`` and ``remus``; xl's own header, before the
libxl stream, is cut off first), and ``colod-stream dump`` must list
every CHECKPOINT_END: as many as ``xl remus`` reported checkpoints, plus the
first copy's.  Prints one summary line; exit 0 only on a pass.
"""

from __future__ import annotations

import argparse
import sys
import time

from colod.testing.xenlab import XenLab, XenLabError

GUEST = "hvm1"
CAPTURE = "/root/remus.bin"
#: The libxl stream in it, after xl's own header.
STREAM = "/root/remus.libxl"
#: libxl's CHECKPOINT_END record: type 4, no body.
CHECKPOINT_END = "0400000000000000"
STREAMTOOL = "/opt/colod-venv/bin/python -m colod.streamtool"


class Failed(Exception):
    pass


def run(lab: XenLab, checkpoints: int) -> str:
    lab.build()
    lab.start()
    lab.create_guest(GUEST)
    lab.wait_guest_ticks(GUEST, 10)
    lab.check(f"setsid xl -v remus -F -n -d -i 3000 -s '' {GUEST} "
              f"'tee {CAPTURE} | xl migrate-receive -r -e 2>/var/log/xen/remus-receiver.log' "
              "> /var/log/xen/remus-sender.log 2>&1 < /dev/null & echo $! > /root/remus.pid")
    deadline = time.monotonic() + 600
    while True:
        if time.monotonic() > deadline:
            raise Failed(f"no {checkpoints} checkpoints within 600 s")
        _, out = lab.run(f"grep -c 'Checkpointed save' /var/log/xen/remus-sender.log; "
                         f"stat -c %s {CAPTURE}; tail -c 8 {CAPTURE} | od -An -tx1 | tr -d ' \\n'; echo; "
                         f"sleep 1; stat -c %s {CAPTURE}")
        lines = out.split()
        if len(lines) == 4 and int(lines[0]) >= checkpoints and lines[2] == CHECKPOINT_END \
                and lines[1] == lines[3]:
            break
        time.sleep(0.5)
    lab.check("kill -TERM $(cat /root/remus.pid); sleep 2")
    sent = int(lab.check("grep -c 'Checkpointed save' /var/log/xen/remus-sender.log"))
    # xl writes its own header (magic, flags, the domain's configuration) before the libxl stream.
    lab.check(f"skip=$(python3 -c \"import struct; h=open('{CAPTURE}','rb').read(48); "
              f"print(48 + struct.unpack_from('=I', h, 44)[0])\"); "
              f"tail -c +$((skip + 1)) {CAPTURE} > {STREAM}")
    size = int(lab.check(f"stat -c %s {STREAM}"))
    for mode in ("auto", "remus"):
        lab.check(f"{STREAMTOOL} verify --channel main --checkpointed {mode} {STREAM}", timeout=600)
    ends = int(lab.check(f"{STREAMTOOL} dump --checkpointed auto {STREAM} | grep -c CHECKPOINT_END",
                         timeout=600))
    colo = lab.run(f"{STREAMTOOL} verify --channel main --checkpointed colo {STREAM}", timeout=600)
    figures = (f"{size} bytes from xl remus, {sent} checkpoints it reported; colod-stream verify accepts it "
               f"(auto, remus), dump finds {ends} CHECKPOINT_END; read as COLO it is refused: "
               f"{colo[1].strip().splitlines()[-1] if colo[1].strip() else colo[0]}")
    if ends != sent + 1 or colo[0] == 0:
        raise Failed(figures)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", type=int, default=5)
    args = parser.parse_args()
    try:
        with XenLab() as lab:
            figures = run(lab, args.checkpoints)
    except (Failed, XenLabError) as error:
        print(f"remus-capture: FAILED: {error}", flush=True)
        return 1
    print(f"remus-capture: PASSED: {figures}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
