# -*- test-case-name: tests.test_demo -*-
"""``make demo``: a protected guest survives the loss of its primary host, on this one machine.

Two nodes (colod.testing.lab) each get a QEMU started from ``colod qemu-args`` and a
``twistd colod`` daemon, linked over mutual TLS with the lab's certificates
(``colod make-certs``), the disks replicated over NBD under TLS with the same
ones (a stranger's NBD client is shown refused), and the etcd failover policy
with a real etcd-server the demo starts (who owns the domain, in which epoch,
is shown from etcd itself); once the first checkpoint is complete, the guest
writer changes the primary's disk and memory.  What the demo shows of the
daemons it asks them with ``colodctl status``, as an administrator would:
both nodes once protected, the checkpoints going by, the secondary after
the takeover.  It kills the primary's QEMU, daemon and guest at once, as a host
loss would, times the secondary's takeover and checks that the secondary's
disk and memory are exactly the last checkpoint's.  It ends with one
``demo: PASSED: ...`` or ``demo: FAILED: ...`` line and exits 0 only on a pass.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from colod.testing.etcd import EtcdServer
from colod.testing.lab import Lab, LabError, Node
from colod.testing.nbd_client import client_files, open_export
from colod.testing.qemu_process import QemuStartError

#: How long the demo shows checkpoints going by, and how often it reports them.
SHOW_SECONDS = 6.0
REPORT_EVERY = 1.0
#: The writer's pause between operations: a busy guest that leaves the CPUs some air.
WRITER_INTERVAL = 0.002


def say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _show_status(node: Node) -> None:
    """Show what ``colodctl status`` says on ``node``."""
    done = node.ctl("status")
    if done.returncode:
        raise LabError(f"colodctl status on {node.name} exited {done.returncode}: {done.stderr.strip()}")
    say(f"`colodctl status` on {node.name}:")
    for line in done.stdout.splitlines():
        say(f"  {line}")


def _show_checkpoints(lab: Lab) -> dict[str, Any]:
    """Report the primary's ``colodctl status --json`` every second for a while; returns its last one."""
    end = time.monotonic() + SHOW_SECONDS
    while True:
        time.sleep(REPORT_EVERY)
        status = lab.primary.ctl_status()["domains"][0]
        if not status["protected"]:
            raise LabError(f"the primary is not protected: {status['error']}{lab.primary.context()}")
        pause = status["pause"]
        say(f"checkpoints {status['checkpoint']['number']:5d}   pause last {_ms(pause['last_ms'])}, "
            f"p50 {_ms(pause['p50_ms'])}, p99 {_ms(pause['p99_ms'])}   writer ops {lab.ops()}")
        if time.monotonic() >= end:
            return status


def _show_nbd_tls(lab: Lab) -> None:
    """The disks' NBD is TLS with the same certificates: the secondary's QEMU refuses a stranger's client."""
    if f"NBD is TLS: the NBD server lets in only CN={lab.primary.name}" not in lab.secondary.logs():
        raise LabError("the secondary does not say that its NBD server is TLS, for the primary alone")
    export = f"{lab.domain}-xvda"
    attempt = open_export(lab.nbd_port, export)
    if attempt.ok:
        raise LabError(f"a plaintext NBD client opened the secondary's export {export}")
    stranger = lab.tls_files(lab.secondary)  # the right CA, but the secondary's own name
    files = client_files(lab.workdir / "stranger", stranger[0], stranger[1], stranger[2])
    other = open_export(lab.nbd_port, export, files, lab.secondary.name)
    if other.ok:
        raise LabError(f"a client with {lab.secondary.name}'s certificate opened the export {export}")
    say(f"NBD is TLS too: the secondary's QEMU lets in only {lab.primary.name}'s certificate; it refused a "
        f"plaintext client ({attempt.output.splitlines()[0].rpartition(': ')[2]}) and one with "
        f"{lab.secondary.name}'s certificate")


def _owner(lab: Lab) -> dict[str, Any]:
    """The domain's owner key, read from etcd itself (its v3 JSON gateway): {"node": ..., "epoch": ...}."""
    assert lab.etcd is not None
    key = base64.b64encode(f"/colod/{lab.domain}/owner".encode()).decode()
    found = lab.etcd.post("/v3/kv/range", {"key": key}).get("kvs", [])
    if not found:
        raise LabError(f"etcd holds no owner for domain {lab.domain}")
    return dict(json.loads(base64.b64decode(found[0]["value"])))


def _show_owner(lab: Lab) -> dict[str, Any]:
    owner = _owner(lab)
    say(f"etcd ({lab.etcd.url if lab.etcd else '-'}): domain {lab.domain} is owned by {owner['node']} in "
        f"epoch {owner['epoch']}, on a lease of {lab.etcd_lease_ttl} s that its colod keeps alive")
    return owner


def run(lab: Lab) -> str:
    """Run the demo on ``lab``; returns the summary of a pass.  @raise LabError: what failed."""
    say(f"two nodes in {lab.workdir}: {lab.disk_size >> 20} MiB disks, "
        f"{lab.memory_pages * 4 >> 10} MiB memory images, checkpoints every {lab.checkpoint_interval:g} s")
    lab.prepare()
    lab.start_qemus()
    for node in lab.nodes:
        say(f"{node.role}: QEMU pid {node.qemu.pid} started with the arguments of "
            f"`colod qemu-args --role {node.role} --config {node.config}`")
    started = time.monotonic()
    lab.start_daemons()
    say("started twistd -n colod --config ... on both nodes; waiting for the first checkpoint")
    status = lab.until_protected().wait()
    say(f"protected {time.monotonic() - started:.1f} s later; guest engine: {status['guest']}")
    if "the peer link is mutual TLS" not in lab.secondary.logs():
        raise LabError("the secondary does not say that its peer link is mutual TLS")
    say(f"the peer link is mutual TLS, with certificates `colod make-certs` made in {lab.certs_dir}")
    _show_nbd_tls(lab)
    if _show_owner(lab) != {"node": lab.primary.name, "epoch": 1}:
        raise LabError(f"etcd does not say that {lab.primary.name} owns the domain in epoch 1")
    say("failover policy etcd: the secondary takes over only once it wins the domain in etcd, which it "
        "cannot while the primary's lease lives; a primary that cannot renew it stops its guest first")
    for node in lab.nodes:
        _show_status(node)
    lab.start_writer(WRITER_INTERVAL)
    say("the guest writer runs on the primary: random disk blocks and memory pages, its count in page 0")
    status = _show_checkpoints(lab)
    floor = lab.ops_floor().wait()
    say("losing the primary host: its QEMU, its colod and the guest writer are killed at once")
    lost = time.monotonic()
    lab.lose_primary_host()
    took_over = lab.until(lab.secondary, lambda s: s["failed_over"],
                          lab.heartbeat_timeout + lab.etcd_lease_ttl + 10.0, "takeover", started=lost).wait()
    after = time.monotonic() - lost
    say(f"the secondary took over {after:.2f} s after the loss: role {took_over['role']}, "
        f"its device model {lab.secondary.qemu_status()}")
    if not lab.secondary.device_state_loaded():
        raise LabError("the secondary's device model did not load the last checkpoint's device state")
    say("the secondary's device model runs on the device state of the last checkpoint")
    if _show_owner(lab) != {"node": lab.secondary.name, "epoch": 2}:
        raise LabError(f"etcd does not say that {lab.secondary.name} owns the domain in epoch 2")
    _show_status(lab.secondary)
    verdict = lab.verify(lab.secondary)
    say(f"the secondary's disk and memory image, checked against the writer: {verdict.summary}")
    if not verdict.ok:
        raise LabError(f"the secondary's state is not a checkpoint's: {verdict.summary}")
    if verdict.ops < floor:
        raise LabError(f"the secondary holds {verdict.ops} writer ops, fewer than the {floor} "
                       "a completed checkpoint had")
    return (f"{status['checkpoint']['number']} checkpoints (pause p50 {_ms(status['pause']['p50_ms'])}, "
            f"p99 {_ms(status['pause']['p99_ms'])}); the secondary took over {after:.2f} s after the "
            f"primary host was lost, with a checkpoint's disk, memory and device state "
            f"({verdict.ops} writer ops)")


def demo(workdir: Path) -> bool:
    """Run the demo in ``workdir`` and print its summary line; True on a pass.  Always reaps its processes."""
    lab = Lab(workdir, domain="demo", checkpoint_interval=0.05, etcd=EtcdServer(workdir))
    try:
        print(f"demo: PASSED: {run(lab)}", flush=True)
        return True
    except (LabError, QemuStartError) as e:
        reason, _, details = str(e).partition("\n")
        if details:
            print(details, flush=True)
        print(f"demo: FAILED: {reason}", flush=True)
        return False
    finally:
        lab.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="keep the demo's files here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.workdir:
        workdir = Path(args.workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        ok = demo(workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="colod-demo-", dir="/tmp") as tmp:
            ok = demo(Path(tmp))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
