# -*- test-case-name: tests.protocol.test_decoder -*-
"""
Throughput of the codec on its hot path: PAGE_DATA batches of 1024 pages.

Usage: python bench/stream_codec.py [MIB]   (default 512 MiB of pages)
"""

from __future__ import annotations

import argparse
import time

from colod.protocol import (
    NEED_DATA,
    Decoder,
    DomainHeader,
    Encoder,
    ImageHeader,
    LibxcContext,
    PageData,
    StaticDataEnd,
    StreamHeader,
)

PROLOGUE = (StreamHeader(), LibxcContext(), ImageHeader(), DomainHeader(), StaticDataEnd())
PAGES_PER_RECORD = 1024
CHUNK = 256 * 1024  # a typical socket read


MIN_MIB = PAGES_PER_RECORD * 4096 >> 20  # one record's pages


def mib_count(text: str) -> int:
    """The command line's MiB: a whole number, at least one record's worth."""
    if not text.isdigit() or int(text) < MIN_MIB:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of MiB of at least {MIN_MIB}")
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("mib", nargs="?", type=mib_count, default=512, metavar="MIB",
                        help=f"MiB of pages to encode and decode, at least {MIN_MIB} (default 512)")
    total_mib = parser.parse_args().mib
    records = total_mib * 1024 * 1024 // (PAGES_PER_RECORD * 4096)
    batch = PageData(
        pfns=range(PAGES_PER_RECORD), types=bytes(PAGES_PER_RECORD), data=bytes(PAGES_PER_RECORD * 4096)
    )
    encoder = Encoder()
    prologue = b"".join(encoder.send(record) for record in PROLOGUE)

    start = time.perf_counter()
    for _ in range(records):
        encoder.send_buffers(batch)
    encode_s = time.perf_counter() - start

    # The same records joined into one bytes object, as a plain write() needs:
    # one copy of every page, the cost send_buffers() leaves to the kernel.
    start = time.perf_counter()
    for _ in range(records):
        encoder.send(batch)
    joined_s = time.perf_counter() - start

    wire = b"".join(encoder.send_buffers(batch))
    decoder = Decoder()
    decoder.receive_data(prologue)
    while decoder.next_record() is not NEED_DATA:
        pass
    start = time.perf_counter()
    for _ in range(records):
        for offset in range(0, len(wire), CHUNK):
            decoder.receive_data(wire[offset : offset + CHUNK])
            while decoder.next_record() is not NEED_DATA:
                pass
    decode_s = time.perf_counter() - start

    mib = records * PAGES_PER_RECORD * 4096 / 2**20
    print(f"{mib:.0f} MiB of PAGE_DATA in records of {PAGES_PER_RECORD} pages")
    print(f"encode, send_buffers (headers built, pages not copied): {mib / encode_s:10.0f} MiB/s")
    print(f"encode, send (pages copied into one bytes object):      {mib / joined_s:10.0f} MiB/s")
    print(f"  ratio send_buffers / send:                            {joined_s / encode_s:10.1f}x")
    fed = f"decode, fed in {CHUNK // 1024} KiB chunks (pages as memoryviews):"
    print(f"{fed:56} {mib / decode_s:10.0f} MiB/s")


if __name__ == "__main__":
    main()
