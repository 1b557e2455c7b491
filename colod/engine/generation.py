# -*- test-case-name: tests.engine.test_generation -*-
"""A domain's generation: how many takeovers of it this node knows of, kept on disk.

Every takeover starts a new generation, written (and fsynced, file and
directory) by the node that takes over *before* its guest runs; both nodes
say theirs in the link's hello, and a secondary that links adopts its
primary's.  So a node whose generation is older than its peer's was taken
over from without knowing it (a partition, a crash, a restore from backup),
and it must never run the guest as primary again: its link is refused and,
if it is the primary, it pauses its guest for good (colod.engine.primary).
"""

from __future__ import annotations

import os
from pathlib import Path

#: The file, in the domain's state directory.
FILE_NAME = "generation"
#: A generation is a hello's u64 field, kept below 2**63.
MAXIMUM = 2**63 - 1


class GenerationError(Exception):
    """The generation file cannot be read, holds something else, or cannot be written."""


class Generation:
    """One domain's generation on this node: read once, written through at every change."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        """@raise GenerationError: the file is there but unreadable or not a generation."""
        self.path = Path(directory) / FILE_NAME
        self.value = self._read()

    def _read(self) -> int:
        try:
            text = self.path.read_text(encoding="ascii")
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as e:
            raise GenerationError(f"cannot read {self.path}: {e}") from None
        if not (text.endswith("\n") and text[:-1].isdigit() and int(text) <= MAXIMUM):
            raise GenerationError(f"{self.path} does not hold a generation (a number and a newline): "
                                  f"{text[:40]!r}; restore it, or remove it only if this node has never "
                                  "taken the domain over")
        return int(text)

    def advance(self, to: int) -> None:
        """Make ``to`` (never less than now) this node's generation, durably, before returning.

        @raise GenerationError: it could not be written; the value is unchanged.
        """
        if to < self.value:
            raise ValueError(f"a generation never goes back ({self.value} to {to})")
        if to == self.value and self.path.exists():
            return
        partial = self.path.with_name(FILE_NAME + ".partial")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(partial, "w", encoding="ascii") as f:
                f.write(f"{to}\n")
                f.flush()
                os.fsync(f.fileno())
            partial.replace(self.path)
            directory = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as e:
            raise GenerationError(f"cannot write generation {to} to {self.path}: {e}") from None
        self.value = to
