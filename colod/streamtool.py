# -*- test-case-name: tests.protocol.test_streamtool -*-
"""
colod-stream: check or list a captured checkpoint stream.

Unlike Xen's verify-stream-v2 it understands checkpointed COLO and Remus
streams and the header-less back channel, and it streams its input, so
captures of many GiB need no more memory than their largest record.

Exit status: 0 valid, 1 invalid (one line "offset N: reason" on stderr),
2 usage or I/O error (one line naming the file and the error), 141 when the
reader of its output left early (``dump FILE | head``), quietly, as a shell
reports a filter ended by SIGPIPE.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from array import array
from collections.abc import Iterator, Sequence
from typing import BinaryIO

import attrs

from colod.protocol import (
    CLOSED,
    NEED_DATA,
    Channel,
    Checkpointed,
    Decoder,
    Frame,
    PageData,
    PageType,
    Record,
    StreamError,
    record_name,
)

READ_SIZE = 1 << 20
#: The exit status of a filter whose reader left: what a shell shows for one killed by SIGPIPE.
EXIT_PIPE_CLOSED = 128 + signal.SIGPIPE


class ReadFailed(Exception):
    """Reading the stream failed (EIO, say): an I/O error, not a malformed stream."""

    def __init__(self, offset: int, error: OSError) -> None:
        super().__init__(f"at offset {offset}: {error.strerror or error}")


def records(
    stream: BinaryIO, channel: Channel, checkpointed: Checkpointed = Checkpointed.AUTO
) -> Iterator[tuple[Frame, Record]]:
    """Each record of C{stream} with its position, reading it a chunk at a time.

    @raise ReadFailed: a read failed; the records before it were yielded.
    """
    decoder = Decoder(channel, checkpointed)
    offset = 0
    while True:
        try:
            chunk = stream.read(READ_SIZE)
        except OSError as error:
            raise ReadFailed(offset, error) from error
        offset += len(chunk)
        decoder.receive_data(chunk)
        while (record := decoder.next_record()) is not NEED_DATA:
            if record is CLOSED:
                return
            yield decoder.last_frame, record


def _pfn_range(pfns: array) -> str:
    return f"{min(pfns):#x}-{max(pfns):#x}" if pfns else "none"


def _page_types(types: bytes) -> str:
    counts = ((kind, types.count(kind)) for kind in PageType)
    return ",".join(f"{kind.name}:{n}" for kind, n in counts if n)


def fields(record: Record) -> dict[str, object]:
    """A record's fields as JSON-ready values; bulk data as sizes, PAGE_DATA as a summary."""
    if isinstance(record, PageData):
        pfns = record.pfns
        return {"count": len(pfns), "pfns": _pfn_range(pfns), "types": _page_types(record.types)}
    out: dict[str, object] = {}
    for field in attrs.fields(type(record)):
        value = getattr(record, field.name)
        if isinstance(value, array):
            out[field.name] = f"{len(value)} pfns {_pfn_range(value)}"
        elif isinstance(value, (bytes, bytearray, memoryview)):
            out[field.name] = f"{len(value)} bytes"
        elif hasattr(value, "name"):
            out[field.name] = value.name
        elif isinstance(value, tuple):
            out[field.name] = [[_plain(item) for item in entry] for entry in value]
        else:
            out[field.name] = value
    return out


def _plain(item: object) -> object:
    return item.decode(errors="backslashreplace") if isinstance(item, bytes) else item


def _namespace(record: Record) -> str:
    return record.NAMESPACE.value if record.NAMESPACE else "colod"


def dump_line(frame: Frame, record: Record, as_json: bool) -> str:
    name, namespace, values = record_name(record), _namespace(record), fields(record)
    if as_json:
        line = {"offset": frame.offset, "namespace": namespace, "type": name, "length": frame.length}
        return json.dumps({**line, "fields": values})
    text = " ".join(f"{key}={value}" for key, value in values.items())
    return f"{frame.offset:>12} {namespace:<5} {name:<26} {frame.length:>10} {text}".rstrip()


def _run(args: argparse.Namespace, stream: BinaryIO) -> int:
    channel = Channel(args.channel)
    count = 0
    try:
        for frame, record in records(stream, channel, Checkpointed(args.checkpointed)):
            count += 1
            if args.command == "dump":
                print(dump_line(frame, record, args.json))
    except StreamError as error:
        sys.stdout.flush()
        print(error, file=sys.stderr)
        return 1
    if args.command == "verify":
        print(f"valid {channel.value} stream: {count} records")
    sys.stdout.flush()  # here, where a failure to write is still ours to report
    return 0


def _io_error(text: str) -> int:
    print(f"colod-stream: error: {text}", file=sys.stderr)
    return 2


def _pipe_closed() -> int:
    """The reader of standard output left: stop quietly, and let nothing try to flush to it again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_PIPE_CLOSED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="colod-stream", description=__doc__.split("\n\n")[0].strip())
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("verify", "check a stream"), ("dump", "list its records, one per line")):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("file", help="stream file, or - for standard input")
        command.add_argument("--channel", choices=[c.value for c in Channel], default="main")
        command.add_argument(
            "--checkpointed", choices=[c.value for c in Checkpointed], default="auto",
            help="main channel: COLO (CHECKPOINT_STATE after each CHECKPOINT_END), Remus (xl remus: "
            "none), or decided by the record after the first CHECKPOINT_END (default)",
        )
        if name == "dump":
            command.add_argument("--json", action="store_true", help="one JSON object per record")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    name = "standard input" if args.file == "-" else args.file
    try:
        if args.file == "-":
            return _run(args, sys.stdin.buffer)
        with open(args.file, "rb") as stream:
            return _run(args, stream)
    except ReadFailed as error:
        return _io_error(f"cannot read {name} {error}")
    except BrokenPipeError:
        return _pipe_closed()
    except OSError as error:
        if error.filename is not None:  # opening it
            return _io_error(f"cannot read {name}: {error.strerror}")
        return _io_error(f"cannot write the output: {error.strerror or error}")


if __name__ == "__main__":
    sys.exit(main())
