# -*- test-case-name: tests.control.test_protocol -*-
"""The control socket's protocol: JSON lines, one response for each request, sans-IO.

A request is one line holding a JSON object::

    {"version": 1, "command": "checkpoint", "domain": "guest1"}

and its response one line, in the order the requests came::

    {"version": 1, "ok": true, "result": {...}}
    {"version": 1, "ok": false, "error": {"code": "unknown-domain", "message": "..."}}

``version`` is this protocol's (VERSION); a request of another is answered
``unsupported-version``.  Each command takes the arguments COMMANDS names
(``domain`` or ``level``), no others.  A line longer than MAX_REQUEST is answered
``line-too-long`` and the connection is closed: what follows it cannot be told
from the rest of that line.  Any other bad line is answered and the next one
read.  docs/operations.md documents the commands and the error codes.

LineReader frames both directions; parse_request and parse_response check a
line, encode_request and encode_response make one.  No socket here
(colod.control.server and colod.control.client carry the lines).
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

import attrs

#: This protocol's version: a request carries it, a response says it.
VERSION = 1
#: The longest request line the daemon takes, newline excluded (the longest real one is some 100 bytes).
MAX_REQUEST = 64 << 10
#: The longest response line colodctl takes: a status of many domains stays far below.
MAX_RESPONSE = 16 << 20


class Command(StrEnum):
    STATUS = "status"
    CHECKPOINT = "checkpoint"
    FAILOVER = "failover"
    DROP = "drop"
    PAUSE = "pause"
    RESUME = "resume"
    LOG_LEVEL = "log-level"


#: Each command's arguments: required (True) or optional (False).
COMMANDS: dict[Command, dict[str, bool]] = {
    Command.STATUS: {"domain": False},
    Command.CHECKPOINT: {"domain": True},
    Command.FAILOVER: {"domain": True},
    Command.DROP: {"domain": True},
    Command.PAUSE: {"domain": True},
    Command.RESUME: {"domain": True},
    Command.LOG_LEVEL: {"level": True},
}


class ErrorCode(StrEnum):
    """Why a request was not carried out, as the response's ``error.code`` says it."""

    #: Not a JSON object, or a field missing, unknown or of the wrong type.
    BAD_REQUEST = "bad-request"
    #: A line longer than MAX_REQUEST; the connection is closed after it.
    LINE_TOO_LONG = "line-too-long"
    UNSUPPORTED_VERSION = "unsupported-version"
    UNKNOWN_COMMAND = "unknown-command"
    UNKNOWN_DOMAIN = "unknown-domain"
    #: The daemon cannot do it now (not the primary, not protected, no such policy); the message says why.
    REFUSED = "refused"
    #: The request did not finish in time (a checkpoint waiting for a secondary that never comes).
    TIMEOUT = "timeout"
    #: Too many clients are connected; the connection is closed.
    BUSY = "busy"
    #: colod failed to carry it out; its log has the details.
    INTERNAL = "internal"


class RequestError(Exception):
    """A request that gets an error response: its code, and one line saying what is wrong."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ProtocolError(Exception):
    """The other side broke this protocol (a response that is not one)."""


class LineTooLong(Exception):
    """A line longer than the reader's limit."""


@attrs.frozen
class Request:
    """A well-formed request: its command and its arguments."""

    command: Command
    arguments: dict[str, str] = attrs.field(factory=dict)

    @property
    def domain(self) -> str | None:
        return self.arguments.get("domain")


class LineReader:
    """Bytes in, lines out; a line over ``limit`` bytes raises LineTooLong, and the reader stays broken."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buffer = bytearray()
        self._searched = 0  # how much of the buffer is known to hold no newline
        self._broken = False

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def next_line(self) -> bytes | None:
        """The next whole line (without its newline), or None until one has come."""
        if self._broken:
            raise LineTooLong(f"a line longer than {self._limit} bytes")
        end = self._buffer.find(b"\n", self._searched)
        if end < 0:
            self._searched = len(self._buffer)
            if self._searched > self._limit:
                self._broken = True
                self._buffer.clear()
                raise LineTooLong(f"a line longer than {self._limit} bytes")
            return None
        if end > self._limit:
            self._broken = True
            self._buffer.clear()
            raise LineTooLong(f"a line longer than {self._limit} bytes")
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        self._searched = 0
        return line


def _json_object(line: bytes) -> dict[str, Any]:
    """The JSON object ``line`` holds.  @raise ValueError: it holds none (the message says why)."""
    try:
        value = json.loads(line.decode("utf-8"))  # decoded here: json.loads would guess UTF-16 or -32
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise ValueError("not JSON (nested too deeply)") from None
    if not isinstance(value, dict):
        raise ValueError(f"a JSON {type(value).__name__}, not an object")
    return value


def parse_request(line: bytes) -> Request:
    """The request ``line`` holds.  @raise RequestError: what is wrong with it."""
    try:
        fields = _json_object(line)
    except ValueError as e:
        raise RequestError(ErrorCode.BAD_REQUEST,
                           f"a request is a JSON object on one line; got {e}") from None
    version = fields.pop("version", None)
    if version != VERSION or isinstance(version, bool):
        raise RequestError(ErrorCode.UNSUPPORTED_VERSION,
                           f"this colod speaks version {VERSION} of the control protocol; got {version!r}")
    name = fields.pop("command", None)
    if not isinstance(name, str):
        raise RequestError(ErrorCode.BAD_REQUEST, "a request needs a \"command\" string")
    try:
        command = Command(name)
    except ValueError:
        raise RequestError(ErrorCode.UNKNOWN_COMMAND, f"no command {_shown(name)}; the commands are "
                           + ", ".join(c.value for c in Command)) from None
    wanted = COMMANDS[command]
    for key, value in fields.items():
        if key not in wanted:
            raise RequestError(ErrorCode.BAD_REQUEST, f"{command} takes no argument {_shown(key)}")
        if not isinstance(value, str):
            raise RequestError(ErrorCode.BAD_REQUEST, f"{command}: \"{key}\" must be a string")
    missing = [key for key, required in wanted.items() if required and key not in fields]
    if missing:
        raise RequestError(ErrorCode.BAD_REQUEST, f"{command} needs \"{missing[0]}\"")
    return Request(command, fields)


def _shown(text: str, most: int = 40) -> str:
    """``text`` quoted for a message, cut short: a request may be a megabyte of one word."""
    return repr(text if len(text) <= most else text[:most] + "...")


def encode_request(command: Command, **arguments: str) -> bytes:
    return _line({"version": VERSION, "command": command.value, **arguments})


def encode_response(result: dict[str, Any] | None = None, error: RequestError | None = None) -> bytes:
    """The response line: ``result`` on success, else ``error``."""
    if error is not None:
        return _line({"version": VERSION, "ok": False,
                      "error": {"code": error.code.value, "message": error.message}})
    return _line({"version": VERSION, "ok": True, "result": result or {}})


def parse_response(line: bytes) -> dict[str, Any]:
    """The result of the response ``line``.

    @raise RequestError: it is an error response.
    @raise ProtocolError: it is not a response of this version.
    """
    try:
        fields = _json_object(line)
    except ValueError as e:
        raise ProtocolError(f"the daemon's response is {e}") from None
    if fields.get("version") != VERSION:
        raise ProtocolError(f"the daemon speaks version {fields.get('version')!r} of the control protocol, "
                            f"not {VERSION}")
    if fields.get("ok") is True and isinstance(fields.get("result"), dict):
        return fields["result"]
    error = fields.get("error")
    if fields.get("ok") is False and isinstance(error, dict):
        try:
            code = ErrorCode(str(error.get("code")))
        except ValueError:
            code = ErrorCode.INTERNAL
        raise RequestError(code, str(error.get("message", "")))
    raise ProtocolError("the daemon's response is neither a result nor an error")


def _line(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, separators=(",", ":"), allow_nan=False).encode() + b"\n"
