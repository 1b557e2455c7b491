"""Stands in for Xen's ``xl migrate-receive -r -e``, which needs a hypervisor.

It does what colod can see of the real one: writes the banner, reads the xl
header and then the stream on stdin until EOF, and exits.  It also keeps
what it read (the configuration and the stream bytes) in the file named by
its first argument, so a test can check them; its behaviour comes from the
environment: STAND_IN_BANNER replaces the banner, STAND_IN_SLEEP delays it,
STAND_IN_EXIT is its exit status at EOF (with a line on stderr).

L{guarded_stand_in} is its command line behind colod's real guard
(colod.xen.guard), with an ``xl`` that only records how it was called
(L{recording_xl}: the guard calls ``xl destroy`` when it kills the receiver).
"""

from __future__ import annotations

import os
import struct
import sys
import time
from pathlib import Path

from colod.xen.receiver import BANNER, guarded

#: The name the guard is given for the receiver's paused copy.
INCOMING = "hvm1--incoming"


def recording_xl(directory: Path) -> Path:
    """An ``xl`` in ``directory`` that appends its arguments to ``directory/xl-calls`` and exits 0."""
    xl = directory / "xl"
    xl.write_text(f'#!/bin/sh\necho "$@" >> {directory / "xl-calls"}\n')
    xl.chmod(0o755)
    return xl


def guarded_stand_in(kept: Path, directory: Path) -> list[str]:
    """The stand-in, keeping what it read in ``kept``, run by the guard with a L{recording_xl}."""
    return guarded([sys.executable, "-m", "tests.xen.stand_in_receiver", str(kept)], incoming=INCOMING,
                   xl=str(recording_xl(directory)))


def main() -> int:
    time.sleep(float(os.environ.get("STAND_IN_SLEEP", "0")))
    sys.stdout.buffer.write(os.environ.get("STAND_IN_BANNER", "").encode() or BANNER)
    sys.stdout.buffer.flush()
    data = sys.stdin.buffer.read()
    magic, order, flags, _, optional_length = struct.unpack_from("=32sIIII", data)
    (config_length,) = struct.unpack_from("=I", data, 48)
    config = data[52 : 52 + config_length]
    stream = data[48 + optional_length :]
    with open(sys.argv[1], "wb") as out:
        out.write(struct.pack("=III", flags, len(config), len(stream)) + config + stream)
    code = int(os.environ.get("STAND_IN_EXIT", "0"))
    if code:
        print("migration target: Domain creation failed (code -3).", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
