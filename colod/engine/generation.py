# -*- test-case-name: tests.engine.test_generation -*-
"""A domain's generation: how many takeovers of it this node knows of, kept on disk.

Every takeover starts a new generation, written (and fsynced, file and
directory) by the node that takes over *before* its guest runs; both nodes
say theirs in the link's hello, and a secondary that links adopts its
primary's.  So a node whose generation is older than its peer's was taken
over from without knowing it (a partition, a crash, a restore from backup),
and it must never run the guest as primary again: its link is refused and,
if it is the primary, it pauses its guest for good (colod.engine.primary).
It also writes that down (``superseded``: by whom, in which generation), so
that after a restart, and with its peer out of reach, it still knows: a
primary that finds the mark refuses to start (colod.service), whatever its
configuration says.  A secondary's first committed checkpoint makes it hold
the newest data again, and removes the mark.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The file, in the domain's state directory.
FILE_NAME = "generation"
#: The mark of a node that was taken over from, beside it.
SUPERSEDED_NAME = "superseded"
#: A generation is a hello's u64 field, kept below 2**63.
MAXIMUM = 2**63 - 1


class GenerationError(Exception):
    """The generation file cannot be read, holds something else, or cannot be written."""


class Generation:
    """One domain's generation on this node: read once, written through at every change."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        """@raise GenerationError: a file is there but unreadable, or not a generation."""
        self.path = Path(directory) / FILE_NAME
        self.superseded_path = Path(directory) / SUPERSEDED_NAME
        self.value = self._read()
        #: Who took the domain over from this node, in which generation (the mark's line); None: nobody.
        self.superseded = self._read_mark()

    def _read_mark(self) -> str | None:
        try:
            return self.superseded_path.read_text(encoding="utf-8", errors="replace").strip() or "(empty)"
        except FileNotFoundError:
            return None
        except OSError as e:
            raise GenerationError(f"cannot read {self.superseded_path}: {e}") from None

    def supersede(self, node: str, generation: int) -> None:
        """Mark, durably, that ``node`` took the domain over from this node in ``generation``.

        @raise GenerationError: the mark could not be written.
        """
        line = f"generation {generation}, taken over by {node}"
        _write_durably(self.superseded_path, f"{line}\n", "the superseded mark")
        self.superseded = line

    def unmark(self) -> None:
        """This node holds the newest data again: remove the mark.  @raise GenerationError."""
        try:
            self.superseded_path.unlink(missing_ok=True)
            _fsync_directory(self.superseded_path.parent)
        except OSError as e:
            raise GenerationError(f"cannot remove {self.superseded_path}: {e}") from None
        self.superseded = None

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
        _write_durably(self.path, f"{to}\n", f"generation {to}")
        self.value = to


def _write_durably(path: Path, text: str, what: str) -> None:
    """``text`` (``what``, for an error) in ``path``, whole or not at all, on disk (file and directory
    fsynced) before returning.

    @raise GenerationError: it could not be written.
    """
    partial = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        partial.replace(path)
        _fsync_directory(path.parent)
    except OSError as e:
        raise GenerationError(f"cannot write {what} to {path}: {e}") from None


def _fsync_directory(path: Path) -> None:
    directory = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
