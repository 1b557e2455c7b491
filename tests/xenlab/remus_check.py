"""Runs in the lab's dom0: colod's Xen parts protect a real HVM guest through Xen's Remus receiver.

    python -m tests.xenlab.remus_check --domain hvm1 --config /etc/xenlab/guest.cfg --checkpoints 20

Nothing here is a stand-in: the hypervisor, libxl-save-helper, xl and the
guest are real.  colod's Xen guest engines (colod.xen.guest) are driven in
the order colod's checkpoint engines drive them, with no peer link between:
XenPrimaryGuest checkpoints the running guest ``--checkpoints`` times
through the real save helper, and each checkpoint goes whole to
XenSecondaryGuest, which feeds a real ``xl migrate-receive -r -e`` started
with this host's configuration of the guest (its serial log renamed, so the
two copies write to different files).  At the last checkpoint the guest's counter (its
serial log's last GUEST-TICK while it is suspended) is noted; then the
primary's domain is destroyed and the receiver's input closed, as if the
primary's host had died.  The receiver must fail over, and the secondary's
copy must run and count on from at least the checkpoint's value.

Prints one line starting "remus-check: PASSED" or "remus-check: FAILED"
and exits 0 only on a pass.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from colod.reactor import use_asyncio_reactor

use_asyncio_reactor()

from twisted.internet import reactor  # noqa: E402 - after the reactor's installation
from twisted.internet.defer import Deferred  # noqa: E402
from twisted.internet.task import deferLater  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

from colod.protocol import Checkpoint, CheckpointDirtyPfnList, LibxcContext, Record, StreamHeader  # noqa: E402
from colod.qmp import QMPConnection  # noqa: E402
from colod.xen.domain import XenDomain, load_bindings, qmp_socket  # noqa: E402
from colod.xen.guest import XenPrimaryGuest, XenSecondaryGuest  # noqa: E402
from colod.xen.receiver import receive_command  # noqa: E402
from colod.xen.setup import DEVICE_MODEL_COMMANDS  # noqa: E402

TICK = re.compile(rb"GUEST-TICK (\d+)")


def last_tick(path: Path) -> int:
    found = TICK.findall(path.read_bytes()) if path.exists() else []
    return int(found[-1]) if found else 0


def ticks(path: Path) -> list[int]:
    return [int(n) for n in TICK.findall(path.read_bytes())] if path.exists() else []


def secondary_config(text: str, serial: Path) -> bytes:
    """The guest's xl configuration with its serial log moved to ``serial``."""
    moved, count = re.subn(r'(?m)^serial\s*=.*$', f'serial = "file:{serial}"', text)
    if count != 1:
        raise SystemExit(f"remus-check: FAILED: the configuration has {count} serial lines, not 1")
    return moved.encode()


class NotingDomain(XenDomain):
    """A XenDomain that notes the guest's counter each time it is suspended (for the check only)."""

    serial: Path
    at_suspend: int = 0

    async def suspend(self) -> None:
        await super().suspend()
        self.at_suspend = last_tick(self.serial)


async def check(args: argparse.Namespace) -> str:
    domid = int(subprocess.run(["xl", "domid", args.domain], capture_output=True, text=True, check=True,
                               timeout=30).stdout)
    primary_serial = Path(f"/var/log/xen/{args.domain}-serial.log")
    secondary_serial = Path(f"/var/log/xen/{args.domain}-secondary-serial.log")
    secondary_serial.unlink(missing_ok=True)
    xc, xs = load_bindings()
    qmp = QMPConnection(qmp_socket(domid), name=args.domain, required_commands=DEVICE_MODEL_COMMANDS)
    await qmp.connect()
    domain = NotingDomain(domid, xc.xc(), xs.xs(), qmp, reactor, Path(f"/var/lib/xen/colod-dm-{domid}"), 30.0)
    domain.serial = primary_serial
    config = secondary_config(Path(args.config).read_text(), secondary_serial)
    primary = XenPrimaryGuest(domain, reactor, timeout=120.0)
    secondary = XenSecondaryGuest(reactor, receive_command(args.domain), config, timeout=60.0)
    started = time.monotonic()
    live: list[Record] = []
    await primary.copy_live(live.append)
    for n in range(args.checkpoints):
        await primary.suspend()
        if n == 0:
            records = [StreamHeader(), LibxcContext(), *live, *await primary.first_records()]
        else:
            records = list(await primary.checkpoint_records(CheckpointDirtyPfnList()))
        emulator = await primary.emulator_records()
        await secondary.apply_checkpoint([*records, Checkpoint(), *emulator])
        await primary.resume()
        await deferLater(reactor, args.interval, lambda: None)
    checkpointed = domain.at_suspend
    sending = time.monotonic() - started
    await primary.close()
    subprocess.run(["xl", "destroy", str(domid)], check=True, timeout=60)
    lost = time.monotonic()
    await secondary.take_over()
    failed_over = time.monotonic() - lost
    while len(ticks(secondary_serial)) < 5:
        if time.monotonic() - lost > 60:
            return f"FAILED: the secondary's copy printed {ticks(secondary_serial)} within 60 s"
        await deferLater(reactor, 0.1, lambda: None)
    first = ticks(secondary_serial)[0]
    figures = (f"{args.checkpoints} checkpoints in {sending:.1f} s; counter {checkpointed} at the last one; "
               f"secondary running {failed_over:.1f} s after the primary's loss, counting on from {first}")
    if first < checkpointed or first <= 1:
        return f"FAILED: {figures}"
    return f"PASSED: {figures}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domain", required=True)
    parser.add_argument("--config", required=True, help="the guest's xl configuration file")
    parser.add_argument("--checkpoints", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.5)
    args = parser.parse_args()
    outcome: list[str] = []

    def done(result: str | Failure) -> None:
        outcome.append(f"FAILED: {result.getErrorMessage()}" if isinstance(result, Failure) else result)
        reactor.stop()

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(check(args)).addBoth(done))
    reactor.run()
    line = f"remus-check: {outcome[0] if outcome else 'FAILED: the reactor stopped without a result'}"
    print(line, flush=True)
    return 0 if line.startswith("remus-check: PASSED") else 1


if __name__ == "__main__":
    sys.exit(main())
