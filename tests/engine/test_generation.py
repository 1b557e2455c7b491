"""The generation file: read, advanced durably, never backwards, and refused by name when damaged."""

from __future__ import annotations

import os

from colod.engine.generation import MAXIMUM, Generation, GenerationError
from tests.rig import ScratchTestCase


class GenerationFileTests(ScratchTestCase):
    def test_absent_is_zero_and_written_on_advance(self) -> None:
        directory = self.workdir / "guest1"
        generation = Generation(directory)
        self.assertEqual(generation.value, 0)
        self.assertFalse(directory.exists())
        generation.advance(3)
        self.assertEqual(((directory / "generation").read_text(), generation.value), ("3\n", 3))
        self.assertEqual(os.listdir(directory), ["generation"])
        self.assertEqual(Generation(directory).value, 3)

    def test_never_backwards(self) -> None:
        generation = Generation(self.workdir)
        generation.advance(5)
        with self.assertRaises(ValueError) as caught:
            generation.advance(4)
        self.assertEqual(str(caught.exception), "a generation never goes back (5 to 4)")
        self.assertEqual(Generation(self.workdir).value, 5)

    def test_damaged_files_are_refused_by_name(self) -> None:
        path = self.workdir / "generation"
        for content in (b"", b"7", b"-1\n", b"seven\n", b"\xff\n", f"{MAXIMUM + 1}\n".encode()):
            path.write_bytes(content)
            with self.assertRaises(GenerationError) as caught:
                Generation(self.workdir)
            self.assertIn(f"{path}", str(caught.exception))
        path.write_bytes(f"{MAXIMUM}\n".encode())
        self.assertEqual(Generation(self.workdir).value, MAXIMUM)

    def test_an_unreadable_place_is_refused(self) -> None:
        blocker = self.workdir / "not-a-directory"
        blocker.write_text("")
        with self.assertRaises(GenerationError) as caught:
            Generation(blocker / "guest1")
        self.assertIn("cannot read", str(caught.exception))

    def test_a_write_that_fails_changes_nothing(self) -> None:
        directory = self.workdir / "guest1"
        generation = Generation(directory)
        directory.write_text("")  # where the domain's directory should be, a file
        with self.assertRaises(GenerationError) as caught:
            generation.advance(1)
        self.assertIn("cannot write generation 1 to", str(caught.exception))
        self.assertEqual(generation.value, 0)

    def test_the_superseded_mark_outlives_a_restart(self) -> None:
        """A node taken over from says so on disk, read again at the next start; removed, it is gone."""
        directory = self.workdir / "guest1"
        generation = Generation(directory)
        self.assertIsNone(generation.superseded)
        generation.supersede("host-b", 2)
        self.assertEqual(Generation(directory).superseded, "generation 2, taken over by host-b")
        self.assertEqual((directory / "superseded").read_text(), "generation 2, taken over by host-b\n")
        self.assertEqual(Generation(directory).value, 0, "the mark is not this node's generation")
        generation.unmark()
        self.assertIsNone(Generation(directory).superseded)
        generation.unmark()  # twice is once

    def test_a_mark_that_cannot_be_written_is_an_error(self) -> None:
        directory = self.workdir / "guest1"
        generation = Generation(directory)
        directory.write_text("")
        with self.assertRaisesRegex(GenerationError, "cannot write the superseded mark to"):
            generation.supersede("host-b", 1)
        self.assertIsNone(generation.superseded)
