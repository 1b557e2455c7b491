"""colod's reading of Twisted's endpoint strings (colod.endpoints._split) is Twisted's own."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet import endpoints

from colod.endpoints import _split, _Unparsable, client_problem, server_problem

#: The grammar's own characters, often, among others (a non-ASCII one for keyword names).
_CHARACTERS = st.sampled_from(":=\\") | st.sampled_from("tcpunix0129 /.é") | st.characters()


def _twisted_reading(description: str) -> tuple[str, list[str], dict[str, str]] | None:
    """Twisted's reading of ``description``; None where Twisted's parser fails on it.

    The reference is Twisted's private parser, ``endpoints._parse``, which
    serverFromString and clientFromString build from: a test may use what colod must not.
    """
    try:
        positional, keywords = endpoints._parse(description)
    except (RuntimeError, UnicodeEncodeError):  # a backslash at the end; a keyword not in ASCII
        return None
    if not positional:
        return None  # serverFromString and clientFromString fail on positional[0]
    return positional[0], positional[1:], keywords


@settings(max_examples=2000, deadline=None, database=None)
@given(st.text(_CHARACTERS, max_size=40))
@example("tcp:9000:interface=\\:\\:1")
@example("a=b=c:tcp:x\\=y=z:\\\\:=:")
@example("tcp:9000\\")
@example("tcp:é=1")
@example("é:\\é=1")
@example("port=9000")
@example("")
def test_colod_reads_every_string_as_twisted_does(description: str) -> None:
    """The same type, positional and keyword arguments, or a refusal where Twisted's parser fails."""
    expected = _twisted_reading(description)
    if expected is None:
        with pytest.raises(_Unparsable):
            _split(description)
    else:
        assert _split(description) == expected


@pytest.mark.parametrize(("description", "problem"), [
    ("tcp:9000\\", "ends in a backslash, which escapes nothing (write \\\\ for one)"),
    ("tcp:9000:interfacé=::1", "keyword 'interfacé' is not ASCII"),
    ("port=9000:interface=127.0.0.1", "has no endpoint type, only keyword arguments (the type comes first, "
     "as in tcp:9000)"),
])
def test_what_twisted_cannot_parse_is_a_problem(description: str, problem: str) -> None:
    """A string Twisted's parser fails on is one line for the administrator, not a traceback."""
    assert server_problem(description) == problem
    assert client_problem(description) == problem
