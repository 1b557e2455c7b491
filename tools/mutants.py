#!/usr/bin/env python3
"""Re-run the mutation audit: each mutant must be caught by the tests named for it.

A mutant is a small, plausible defect written into a copy of this tree (one
or more exact text replacements); the tests named for it are run against the
copy and must fail.  The original tree is never touched.  This is how the
safety net is shown to hold where an audit found holes: a wrong state table,
pages applied before CHECKPOINT_END, a takeover from an older checkpoint, a
failing async test passing.

    python tools/mutants.py                 # every mutant
    python tools/mutants.py --list          # their names
    python tools/mutants.py NAME [NAME ...]

Prints one line per mutant (caught or MISSED, and the time it took); exits 1
if any mutant was missed, or if a replacement no longer matches the code (a
stale mutant says so instead of passing silently).  Run it from the project's
virtualenv: the copy is put first on PYTHONPATH, so the daemons the tests
start import the mutant too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parent.parent
#: Seconds one mutant's tests may take.
TIMEOUT = 900
#: Failing tests named per mutant; the rest are counted.
SHOWN = 3


@attrs.frozen
class Mutant:
    name: str
    what: str
    #: (file, exact text, replacement): each text must occur exactly once.
    edits: tuple[tuple[str, str, str], ...]
    #: pytest node ids (or files) that must fail on the mutant: each test id, and some test of each file.
    tests: tuple[str, ...]


def _table_move(name: str, state: str, addition: str, tests: tuple[str, ...]) -> Mutant:
    """A mutant that makes one more move legal in the stream's state table."""
    anchor = f"    S.{state}: {{"
    return Mutant(name, f"the state table lets {state} accept {addition.split(':')[0]}",
                  (("colod/protocol/state.py", anchor, f"{anchor}{addition}, "),), tests)


_TABLE_TEST = ("tests/protocol/test_state_table.py",)

MUTANTS = (
    _table_move("await-new-svm-suspended", "AWAIT_NEW", "CheckpointId.SVM_SUSPENDED: S.LIBXC_CHECKPOINTED",
                _TABLE_TEST),
    _table_move("checkpoint-end", "CHECKPOINT", "End: S.DONE", _TABLE_TEST),
    _table_move("back-start-svm-resumed", "BACK_START", "CheckpointId.SVM_RESUMED: S.SVM_RESUMED",
                _TABLE_TEST),
    _table_move("libxc-checkpointed-checkpoint-end", "LIBXC_CHECKPOINTED", "CheckpointEnd: S.AWAIT_NEW",
                _TABLE_TEST),
    _table_move("svm-resumed-svm-ready", "SVM_RESUMED", "CheckpointId.SVM_READY: S.SVM_READY", _TABLE_TEST),
    _table_move("first-checkpoint-new", "FIRST_CHECKPOINT", "CheckpointId.NEW: S.LIBXC_CHECKPOINTED",
                _TABLE_TEST),
    Mutant(
        "remus-waits-for-new",
        "a Remus stream is read as if CHECKPOINT_STATE(NEW) followed each CHECKPOINT_END",
        (("colod/protocol/state.py", "    Checkpointed.REMUS: S.LIBXC_CHECKPOINTED,",
          "    Checkpointed.REMUS: S.AWAIT_NEW,"),),
        ("tests/protocol/test_remus.py", "tests/protocol/test_streamtool.py"),
    ),
    Mutant(
        "pages-applied-on-arrival",
        "the secondary writes each PAGE_DATA into guest memory as it arrives, before CHECKPOINT_END",
        (("colod/engine/secondary.py",
          "    def _buffer_record(self, record: Record) -> None:\n        self._buffer.append(record)\n",
          "    def _buffer_record(self, record: Record) -> None:\n"
          "        from colod.protocol import PageData\n"
          "        if isinstance(record, PageData):\n"
          "            self.guest._memory.apply(record)\n"
          "        self._buffer.append(record)\n"),),
        ("tests/engine/test_failover.py::FailoverTests::test_daemon_killed_before_checkpoint_end",
         "tests/engine/test_failover.py::FailoverTests::test_qemu_killed_before_checkpoint"),
    ),
    Mutant(
        "later-checkpoints-never-applied",
        "the secondary applies its first checkpoint and holds every later one unapplied: it takes over "
        "from a checkpoint older than the last it received whole",
        (("colod/engine/secondary.py",
          "        records, self._buffer = self._buffer, []\n"
          "        await self.guest.apply_checkpoint(records)\n",
          "        records, self._buffer = self._buffer, []\n"
          "        if not self._first:\n"
          "            return\n"
          "        await self.guest.apply_checkpoint(records)\n"),),
        ("tests/engine/test_failover.py::FailoverTests::test_daemon_killed_with_svm_ready_held",
         "tests/engine/test_failover.py::FailoverTests::test_qemu_killed_between_checkpoints"),
    ),
    Mutant(
        "older-device-state-kept",
        "the secondary keeps the first device state it was sent instead of the newest",
        (("colod/guest/device_model.py", "            os.replace(name, self._staged)\n",
          "            os.replace(name, self._staged) if not self._staged.exists() else os.unlink(name)\n"),),
        ("tests/engine/test_engines.py::CheckpointTests::test_secondary_keeps_the_last_checkpoints_device_state",
         "tests/guest/test_device_model.py::DeviceModelTests::test_failover_loads_the_newest_state_and_runs"),
    ),
    Mutant(
        "failed-detach-swallowed",
        "dropping the secondary hides a detach that QEMU refused",
        (("colod/devices/qdisk_primary.py", "        await self._remove(\"drop_secondary\")\n",
          "        try:\n            await self._remove(\"drop_secondary\")\n"
          "        except Exception:  # noqa: BLE001\n            pass\n"),),
        ("tests/engine/test_engines.py::PeerLossTests::test_a_failed_drop_is_kept_in_the_error",),
    ),
    Mutant(
        "stream-cut-short-is-a-protocol-error",
        "a link that closes inside a record is taken for a malformed stream, which forbids the takeover",
        (("colod/protocol/peer.py", "reason = Failure(StreamCutShort(error))", "reason = Failure(error)"),),
        ("tests/engine/test_failover.py::FailoverTests::test_daemon_killed_in_page_data",
         "tests/protocol/test_peer.py::PeerLinkTests::test_truncated_stream"),
    ),
    Mutant(
        "nbd-tls-off-by-default",
        "a domain's NBD is plaintext unless the file asks for TLS",
        (("colod/config.py", 'table.take("nbd_tls", bool, True)', 'table.take("nbd_tls", bool, False)'),),
        ("tests/devices/test_cli.py::QemuArgsCommandTests::test_nbd_tls_objects_and_their_files",
         "tests/test_bad_config.py::test_refused_in_one_line[nbd_tls_without_tls_table]"),
    ),
    Mutant(
        "nbd-server-lets-any-certificate-in",
        "the secondary's NBD server requires TLS but not the primary's certificate (no tls-authz)",
        (("colod/devices/nbd_tls.py", '{"tls-creds": CREDS, "tls-authz": AUTHZ}', '{"tls-creds": CREDS}'),),
        ("tests/devices/test_nbd_tls.py::NbdTLSTests::test_only_the_primarys_certificate_gets_in",),
    ),
    Mutant(
        "nbd-tls-objects-unchecked",
        "the disks' setup trusts that QEMU was started with the NBD TLS objects",
        (("colod/devices/nbd_tls.py", "    if domain.nbd_tls is None:\n        return\n",
          "    if True:\n        return\n"),),
        ("tests/devices/test_nbd_tls.py::NbdTLSTests::test_a_qemu_without_the_objects_is_refused_by_name",),
    ),
    Mutant(
        "async-test-passes-unrun",
        "the test runner lets a plain test return a coroutine or a Deferred",
        (("tests/conftest.py", "    if result is not None:\n", "    if False:\n"),),
        ("tests/test_conftest.py",),
    ),
)


def _copy_tree(into: Path) -> None:
    """The tracked and new (not ignored) files of the work tree, as they are now."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)


def _apply(tree: Path, mutant: Mutant) -> str | None:
    """Write the mutant's edits into ``tree``; why not, if a text does not occur exactly once."""
    for name, text, replacement in mutant.edits:
        path = tree / name
        source = path.read_text()
        if source.count(text) != 1:
            return f"{name}: the text to replace occurs {source.count(text)} times (a stale mutant)"
        path.write_text(source.replace(text, replacement))
    return None


def run(mutant: Mutant) -> tuple[bool, str]:
    """Whether ``mutant`` is caught, and a line saying how."""
    with tempfile.TemporaryDirectory(prefix=f"colod-mutant-{mutant.name}-") as scratch:
        tree = Path(scratch)
        _copy_tree(tree)
        problem = _apply(tree, mutant)
        if problem is not None:
            return False, problem
        env = {**os.environ, "PYTHONPATH": str(tree)}
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *mutant.tests],
            cwd=tree, env=env, capture_output=True, text=True, timeout=TIMEOUT)
        took = time.monotonic() - started
        failed = [line.split(" - ")[0].removeprefix("FAILED ") for line in done.stdout.splitlines()
                  if line.startswith("FAILED ")]
        uncaught = [test for test in mutant.tests
                    if not any(f == test or f.startswith(f"{test}::") for f in failed)]
        more = f" and {len(failed) - SHOWN} more" if len(failed) > SHOWN else ""
        shown = ", ".join(failed[:SHOWN]) + more
        if done.returncode == 1 and not uncaught:
            return True, f"caught by {shown} ({took:.0f} s)"
        if failed:
            return False, f"{', '.join(uncaught)} passed; failed: {shown} ({took:.0f} s)"
        last = done.stdout.strip().splitlines()[-1:] or ["no output"]
        return False, f"pytest exit {done.returncode}: {last[0]} ({took:.0f} s)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and what they break")
    args = parser.parse_args()
    known = {mutant.name: mutant for mutant in MUTANTS}
    if args.list:
        for mutant in MUTANTS:
            print(f"{mutant.name}: {mutant.what}")
        return 0
    unknown = [name for name in args.names if name not in known]
    if unknown:
        parser.error(f"no such mutant: {', '.join(unknown)}")
    missed = 0
    for name in args.names or known:
        caught, how = run(known[name])
        missed += not caught
        print(f"{name}: {'caught' if caught else 'MISSED'}: {how}", flush=True)
    print(f"mutants: {len(args.names or known)} run, {missed} missed")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
