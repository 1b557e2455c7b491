"""
Cross-check with Xen's own verify-stream-v2 (Debian's xen-utils-4.17,
fetched by tools/fetch-xen-stream-tools.sh): it accepts what our encoder
writes, and our decoder rejects every corruption it rejects.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from colod.protocol import (
    Channel,
    DomainHeader,
    EmulatorContext,
    End,
    GuestType,
    HvmContext,
    HvmParams,
    ImageHeader,
    LibxcContext,
    LibxcEnd,
    PageData,
    Record,
    SkippedRecord,
    StreamError,
    StreamHeader,
    X86TscInfo,
)
from colod.streamtool import records

from .conftest import XenTools
from .streams import colo_back, colo_main, decode, encode, pages, plain_hvm, plain_pv

BATCH = Path(__file__).with_name("xen_verify_batch.py")


def plain_v2() -> list[Record]:
    """A v2 libxc image: no static-data records at all."""
    return [
        StreamHeader(), LibxcContext(), ImageHeader(2), DomainHeader(GuestType.X86_HVM, 4, 5), pages(1),
        X86TscInfo(0, 1, 2, 3), HvmContext(b"ctx"), HvmParams([(1, 1)]), LibxcEnd(),
        EmulatorContext(blob=b"dm"), End(),
    ]


def _env(tools: XenTools) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tools.pythonpath)}


def xen_verify(tools: XenTools, tmp_path: Path, data: bytes, name: str = "stream") -> int:
    """Run the real verify-stream-v2 script on C{data}; its exit status."""
    path = tmp_path / name
    path.write_bytes(data)
    command = [sys.executable, str(tools.verify_stream), "-f", "libxl", "-i", str(path)]
    return subprocess.run(command, env=_env(tools), capture_output=True, check=False).returncode


def xen_verify_many(tools: XenTools, tmp_path: Path, streams: list[bytes]) -> list[int]:
    paths = []
    for n, data in enumerate(streams):
        path = tmp_path / f"corrupt-{n}"
        path.write_bytes(data)
        paths.append(str(path))
    result = subprocess.run(
        [sys.executable, str(BATCH), str(tools.verify_stream)], input=json.dumps(paths).encode(),
        env=_env(tools), capture_output=True, check=True,
    )
    return json.loads(result.stdout)


def ours(data: bytes) -> list[Record] | None:
    """Our decoder's records for C{data}, or None if it rejects the stream."""
    try:
        return decode(data, Channel.MAIN, sizes=[4093])
    except StreamError:
        return None


def skips_a_record(records: list[Record]) -> bool:
    """The one legitimate way to accept what Xen's tool refuses (see the test below)."""
    return any(isinstance(record, SkippedRecord) for record in records)


def test_xen_accepts_our_plain_streams(xen_tools: XenTools, tmp_path: Path) -> None:
    for name, stream in (("hvm", plain_hvm()), ("pv", plain_pv()), ("v2", plain_v2())):
        data = encode(stream)
        assert xen_verify(xen_tools, tmp_path, data, name) == 0, name
        assert decode(data) == stream


def test_xen_cannot_read_colo_streams_but_we_can(xen_tools: XenTools, tmp_path: Path) -> None:
    """Xen's tool misreads CHECKPOINT_END as a libxc record and has no back-channel mode."""
    main, back = encode(colo_main(3)), encode(colo_back(3), Channel.BACK)
    assert xen_verify(xen_tools, tmp_path, main, "main") == 1
    assert xen_verify(xen_tools, tmp_path, back, "back") == 1
    assert decode(main) == colo_main(3)
    assert decode(back, Channel.BACK) == colo_back(3)


def _page_bytes(data: bytes) -> set[int]:
    """Offsets of guest page contents: any value there is valid, so no need to corrupt them."""
    inside: set[int] = set()
    for frame, record in records(io.BytesIO(data), Channel.MAIN):
        if isinstance(record, PageData):
            start = frame.offset + 16 + 8 * len(record.pfns)
            inside.update(range(start + 1, start + len(record.data) - 1))
    return inside


def corruptions(data: bytes) -> list[bytes]:
    """Each structural byte with a low and a high bit flipped, and every truncation on 4 bytes."""
    skip = _page_bytes(data)
    out = []
    for offset in range(len(data)):
        if offset in skip:
            continue
        for bit in (0x01, 0x80):
            corrupt = bytearray(data)
            corrupt[offset] ^= bit
            out.append(bytes(corrupt))
    out += [data[:cut] for cut in range(0, len(data), 4)]
    out += [data + b"\0" * 8, data[:16] + data[24:]]
    return out


def test_we_reject_whatever_xen_rejects(xen_tools: XenTools, tmp_path: Path) -> None:
    for stream in (plain_hvm(), plain_pv()):
        streams = corruptions(encode(stream))
        statuses = xen_verify_many(xen_tools, tmp_path, streams)
        rejected = [data for data, status in zip(streams, statuses, strict=True) if status != 0]
        accepted = [(data, records) for data in rejected if (records := ours(data)) is not None]
        missed = [data for data, records in accepted if not skips_a_record(records)]
        assert len(rejected) > len(streams) // 4
        assert missed == []
        assert accepted, "some corruption should turn a libxc type into an unknown optional one"


def test_difference_big_endian_bit(xen_tools: XenTools, tmp_path: Path) -> None:
    """
    Xen's tool tests the endianness bit with a mask of 0 and so accepts a
    big-endian stream; libxl's C reader refuses it, and so do we.
    """
    data = bytearray(encode(plain_hvm()))
    data[15] |= 0x01
    assert xen_verify(xen_tools, tmp_path, bytes(data)) == 0
    assert ours(bytes(data)) is None


def test_difference_unknown_optional_libxc_record(xen_tools: XenTools, tmp_path: Path) -> None:
    """
    xg_sr_restore.c skips an unknown optional (bit 31) libxc record; Xen's
    tool refuses every unknown type.  We follow the C code.
    """
    records = plain_hvm()
    data = encode(records)
    static_end = len(encode(records[:7]))
    optional = bytes.fromhex("23010080 05000000 0102030405 000000".replace(" ", ""))
    data = data[:static_end] + optional + data[static_end:]
    assert xen_verify(xen_tools, tmp_path, data) == 1
    assert ours(data) == [*records[:7], SkippedRecord(0x80000123, 5), *records[7:]]
