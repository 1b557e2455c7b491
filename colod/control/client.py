# -*- test-case-name: tests.control.test_colodctl -*-
"""A blocking client of the control socket, for colodctl: one request, one response, within a deadline."""

from __future__ import annotations

import socket
import time
from typing import Any

from colod.control.protocol import (
    MAX_RESPONSE,
    Command,
    LineReader,
    LineTooLong,
    ProtocolError,
    encode_request,
    parse_response,
)

#: Bytes read from the socket at a time.
READ_SIZE = 64 << 10


class Unreachable(Exception):
    """The daemon could not be asked: no socket, nobody listening, no answer in time."""


def ask(path: str, command: Command, timeout: float, **arguments: str) -> dict[str, Any]:
    """Send one request to the control socket at ``path`` and return its result.

    @raise colod.control.protocol.RequestError: the daemon answered with an error.
    @raise Unreachable: it could not be asked, or did not answer within ``timeout`` seconds.
    @raise ProtocolError: it answered something that is not a response.
    """
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        try:
            connection.settimeout(timeout)
            connection.connect(path)
            connection.sendall(encode_request(command, **arguments))
            reader = LineReader(MAX_RESPONSE)
            while (line := reader.next_line()) is None:
                connection.settimeout(max(deadline - time.monotonic(), 0.001))
                data = connection.recv(READ_SIZE)
                if not data:
                    raise Unreachable(f"{path}: the daemon closed the connection without answering")
                reader.receive_data(data)
        except TimeoutError:
            raise Unreachable(f"{path}: no answer within {timeout:g} s") from None
        except LineTooLong as e:
            raise ProtocolError(f"the daemon's response is {e}") from None
        except OSError as e:
            raise Unreachable(f"cannot reach colod at {path}: {e.strerror or e}") from None
    return parse_response(line)
