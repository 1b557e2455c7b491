"""PAGE_DATA pfn words, split and joined a batch at a time."""

from __future__ import annotations

from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from colod.protocol import PageType, StreamError
from colod.protocol.pagedata import join_words, pages_with_data, split_words


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(st.tuples(st.integers(0, 2**52 - 1), st.sampled_from(list(PageType))), min_size=1,
                max_size=50))
def test_join_then_split(entries: list[tuple[int, PageType]]) -> None:
    pfns, types = array("Q", [p for p, _ in entries]), bytes(t for _, t in entries)
    words = join_words(pfns, types)
    assert len(words) == 8 * len(entries)
    assert split_words(memoryview(words), 0) == (pfns, types)
    for index, (pfn, kind) in enumerate(entries):
        assert int.from_bytes(words[8 * index : 8 * index + 8], "little") == pfn | kind << 60


@pytest.mark.parametrize(
    ("word", "words"),
    [(0x5 << 60, "invalid page type 0x5"), (0x8 << 60, "invalid page type 0x8"),
     (1 << 52, "reserved bits 55-52"), (1 << 59, "reserved bits 59-56")],
)
def test_split_refuses(word: int, words: str) -> None:
    data = (7).to_bytes(8, "little") + word.to_bytes(8, "little")
    with pytest.raises(StreamError) as caught:
        split_words(memoryview(data), 100)
    assert caught.value.offset == 108
    assert f"pfn[1]: {words}" in caught.value.reason


def test_join_refuses() -> None:
    with pytest.raises(ValueError, match="52 bits"):
        join_words(array("Q", [1 << 52]), b"\0")
    with pytest.raises(ValueError, match="not a valid PageType"):
        join_words(array("Q", [1]), b"\x05")
    with pytest.raises(ValueError, match="1 pfns but 2"):
        join_words(array("Q", [1]), b"\0\0")


def test_pages_with_data() -> None:
    assert pages_with_data(bytes(PageType)) == 9
