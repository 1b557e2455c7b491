# -*- test-case-name: tests.test_startup_failures -*-
"""What only the daemon's start can tell about its configuration on this host.

colod.config judges the file; whether the secondary's peer port is free, the
state directory writable and the memory image usable are facts of this host
at this moment.  The daemon checks them before any service starts, and a
problem ends it at once with one line and exit status 1
(colod.service.ColodService.fail), so that systemd sees the failure rather
than a daemon that idles.  The same faults met later (a port taken in
between) end it the same way.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from colod.config import Config
from colod.endpoints import listen_problem
from colod.guest.memory_image import MemoryImage
from colod.role import Role

#: Bytes written, and synced, to see that the state directory takes data (a full disk takes none).
PROBE_SIZE = 4096


def problem(config: Config) -> str | None:
    """The first thing that stops ``config`` working here now, as ``key: problem``; None if nothing does."""
    if config.role is Role.SECONDARY:
        assert config.peer.listen is not None  # the configuration requires it for the secondary
        found = listen_problem(config.peer.listen)
        if found is not None:
            return f"peer.listen: {found}"
    for index, domain in enumerate(config.domains):
        found = _state_dir_problem(Path(config.state_dir) / domain.name)
        if found is not None:
            return f"colod.state_dir: {found}"
        if domain.memory_image is not None:
            found = _memory_image_problem(domain.memory_image)
            if found is not None:
                return f"domain[{index}].memory_image: {found}"
    return None


def _state_dir_problem(directory: Path) -> str | None:
    """Make the domain's state directory and write a file there, as its status and device state will be."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".colod-start-") as probe:
            probe.write(bytes(PROBE_SIZE))
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as e:
        return f"cannot write in {directory}: {e.strerror}"
    return None


def _memory_image_problem(path: str) -> str | None:
    """Open the image as the guest engine will (colod.guest.qemu_guest)."""
    try:
        MemoryImage.open(path).close()
    except OSError as e:  # the image or a file beside it (its dirty map)
        return f"cannot use the memory image: {e.filename}: {e.strerror}"
    except ValueError as e:
        return f"cannot use the memory image: {e}" if path in str(e) else (
            f"cannot use the memory image: {path}: {e}")
    return None
