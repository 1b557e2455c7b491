"""The control protocol's codec, sans-IO: lines framed, requests checked, responses both ways."""

from __future__ import annotations

import json

import pytest

from colod.control.protocol import (
    MAX_REQUEST,
    VERSION,
    Command,
    ErrorCode,
    LineReader,
    LineTooLong,
    ProtocolError,
    Request,
    RequestError,
    encode_request,
    encode_response,
    parse_request,
    parse_response,
)


def _line(**fields: object) -> bytes:
    return json.dumps({"version": VERSION, **fields}).encode()


#: (line, the request it is) for good lines.
GOOD = [
    (_line(command="status"), Request(Command.STATUS)),
    (_line(command="status", domain="lab"), Request(Command.STATUS, {"domain": "lab"})),
    (_line(command="checkpoint", domain="lab"), Request(Command.CHECKPOINT, {"domain": "lab"})),
    (_line(command="log-level", level="debug"), Request(Command.LOG_LEVEL, {"level": "debug"})),
]

#: (line, error code, words the message has) for bad lines.
BAD = [
    (b"", ErrorCode.BAD_REQUEST, "not JSON"),
    (b"hello", ErrorCode.BAD_REQUEST, "not JSON (Expecting value at column 1)"),
    (b"\xff\xfe", ErrorCode.BAD_REQUEST, "not UTF-8"),
    (b"[1, 2]", ErrorCode.BAD_REQUEST, "a JSON list, not an object"),
    (b"[" * 100000, ErrorCode.BAD_REQUEST, "nested too deeply"),
    (b'{"command": "status"}', ErrorCode.UNSUPPORTED_VERSION, "version 1 of the control protocol; got None"),
    (b'{"version": 2, "command": "status"}', ErrorCode.UNSUPPORTED_VERSION, "got 2"),
    (b'{"version": true, "command": "status"}', ErrorCode.UNSUPPORTED_VERSION, "got True"),
    (_line(), ErrorCode.BAD_REQUEST, 'needs a "command" string'),
    (_line(command=7), ErrorCode.BAD_REQUEST, 'needs a "command" string'),
    (_line(command="reboot"), ErrorCode.UNKNOWN_COMMAND, "no command 'reboot'; the commands are status, "),
    (_line(command="x" * 5000), ErrorCode.UNKNOWN_COMMAND, "no command 'xxxxxxxx"),
    (_line(command="checkpoint"), ErrorCode.BAD_REQUEST, 'checkpoint needs "domain"'),
    (_line(command="status", force=True), ErrorCode.BAD_REQUEST, "status takes no argument 'force'"),
    (_line(command="drop", domain=["lab"]), ErrorCode.BAD_REQUEST, 'drop: "domain" must be a string'),
]


@pytest.mark.parametrize(("line", "request_"), GOOD)
def test_good_requests(line: bytes, request_: Request) -> None:
    assert parse_request(line) == request_


@pytest.mark.parametrize(("line", "code", "words"), BAD)
def test_bad_requests_are_named(line: bytes, code: ErrorCode, words: str) -> None:
    with pytest.raises(RequestError) as raised:
        parse_request(line)
    assert raised.value.code is code
    assert words in raised.value.message
    assert len(raised.value.message) < 200  # one line, whatever came


def test_requests_and_responses_both_ways() -> None:
    """What colodctl sends the daemon parses; what the daemon answers colodctl reads."""
    assert parse_request(encode_request(Command.DROP, domain="lab").rstrip(b"\n")) == Request(
        Command.DROP, {"domain": "lab"})
    assert parse_response(encode_response({"checkpoint": 3}).rstrip(b"\n")) == {"checkpoint": 3}
    with pytest.raises(RequestError) as raised:
        parse_response(encode_response(error=RequestError(ErrorCode.REFUSED, "not now")).rstrip(b"\n"))
    assert (raised.value.code, raised.value.message) == (ErrorCode.REFUSED, "not now")


@pytest.mark.parametrize("line", [b"garbage", b'{"version": 2, "ok": true, "result": {}}', b'{"version": 1}',
                                  b'{"version": 1, "ok": true, "result": 3}'])
def test_a_response_that_is_not_one(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_response(line)


def test_lines_whole_byte_by_byte_and_with_trailing_data() -> None:
    data = b'{"a": 1}\n{"b": 2}\n{"c"'
    whole = LineReader(MAX_REQUEST)
    whole.receive_data(data)
    assert [whole.next_line(), whole.next_line(), whole.next_line()] == [b'{"a": 1}', b'{"b": 2}', None]
    trickle = LineReader(MAX_REQUEST)
    lines = []
    for byte in data:
        trickle.receive_data(bytes([byte]))
        while (line := trickle.next_line()) is not None:
            lines.append(line)
    assert lines == [b'{"a": 1}', b'{"b": 2}']


@pytest.mark.parametrize("data", [b"x" * 101, b"x" * 101 + b"\n", b"x" * 5000])
def test_a_line_over_the_limit_breaks_the_reader(data: bytes) -> None:
    """Refused as soon as the limit is passed, newline or not; and for good: its end cannot be found."""
    reader = LineReader(100)
    reader.receive_data(b"y" * 100 + b"\n")
    assert reader.next_line() == b"y" * 100
    reader.receive_data(data)
    with pytest.raises(LineTooLong):
        reader.next_line()
    reader.receive_data(b"\n")
    with pytest.raises(LineTooLong):
        reader.next_line()
