# -*- test-case-name: tests.protocol.test_pagedata -*-
"""
PAGE_DATA pfn words, handled a whole batch at a time.

A pfn word is a little-endian u64: bits 63-60 the page type, 59-52 reserved
(zero), 51-0 the pfn.  So byte 7 holds the type in its high nibble and two
reserved bits' worth of zeros in its low nibble, and byte 6 holds reserved
bits in its high nibble.  Working on the strided byte slices C{words[7::8]}
and C{words[6::8]} with C{bytes.translate} checks and splits a batch of 1024
pfns in a handful of C calls, without creating one Python object per page:
this is the hot path of every checkpoint.
"""

from __future__ import annotations

from array import array

from .errors import StreamError
from .wire import PAGE_TYPES_WITHOUT_DATA, PageType, u64_array, u64_bytes

_ALL = bytes(range(256))
#: Byte-7 values of a valid word: a known type in the high nibble, zero below.
_VALID_TOP = bytes(t << 4 for t in PageType)
#: Byte-6 values with the reserved high nibble clear.
_CLEAR_HIGH_NIBBLE = bytes(range(16))
_TOP_TO_TYPE = bytes(b >> 4 for b in _ALL)
_TYPE_TO_TOP = bytes((b << 4) & 0xFF for b in _ALL)
_VALID_TYPES = bytes(PageType)
_TYPES_WITHOUT_DATA = bytes(PAGE_TYPES_WITHOUT_DATA)


def _first_outside(data: bytes, allowed: bytes) -> int:
    """Index of the first byte of C{data} not in C{allowed}, or -1 (C speed when valid)."""
    if not data.translate(None, allowed):
        return -1
    return next(i for i, b in enumerate(data) if b not in allowed)


def pages_with_data(types: bytes) -> int:
    """How many of these page types carry 4096 bytes of data in the record."""
    return len(types.translate(None, _TYPES_WITHOUT_DATA))


def split_words(words: memoryview, at: int) -> tuple[array, bytes]:
    """
    Check a batch of pfn words and split it into pfns and page types.

    @param words: C{8 * count} bytes of little-endian pfn words.
    @param at: stream offset of C{words}, for errors.
    @return: C{(pfns, types)}: an C{array('Q')} and one type byte per pfn.
    @raise StreamError: a word has reserved bits set or an invalid type (5-8).
    """
    top = bytes(words[7::8])
    bad = _first_outside(top, _VALID_TOP)
    if bad >= 0:
        kind = top[bad] >> 4
        if top[bad] & 0x0F:
            reason = f"reserved bits 59-56 set ({top[bad] & 0x0F:#x})"
        else:
            reason = f"invalid page type {kind:#x} (types 0x5-0x8 are undefined)"
        raise StreamError(at + 8 * bad, f"PAGE_DATA pfn[{bad}]: {reason}")
    sixth = bytes(words[6::8])
    bad = _first_outside(sixth, _CLEAR_HIGH_NIBBLE)
    if bad >= 0:
        raise StreamError(
            at + 8 * bad,
            f"PAGE_DATA pfn[{bad}]: reserved bits 55-52 set ({sixth[bad] >> 4:#x})",
        )
    raw = bytearray(words)
    raw[7::8] = bytes(len(top))
    return u64_array(raw), top.translate(_TOP_TO_TYPE)


def join_words(pfns: array, types: bytes) -> bytes:
    """
    Build the pfn words of a PAGE_DATA record.

    @raise ValueError: a pfn does not fit in 52 bits, a type is unknown, or
        the two sequences differ in length.
    """
    if len(pfns) != len(types):
        raise ValueError(f"{len(pfns)} pfns but {len(types)} page types")
    bad = _first_outside(types, _VALID_TYPES)
    if bad >= 0:
        raise ValueError(f"page type {types[bad]:#x} of pfn[{bad}] is not a valid PageType")
    raw = bytearray(u64_bytes(pfns))
    if raw[7::8].translate(None, b"\x00") or raw[6::8].translate(None, _CLEAR_HIGH_NIBBLE):
        index = next(i for i, pfn in enumerate(pfns) if pfn >> 52)
        raise ValueError(f"pfn[{index}] = {pfns[index]:#x} does not fit in 52 bits")
    raw[7::8] = types.translate(_TYPE_TO_TOP)
    return bytes(raw)
