# -*- test-case-name: tests.test_config,tests.test_endpoints -*-
"""The Twisted endpoint strings of ``[peer]``: which can carry colod's link, and why one cannot.

Twisted's parsers accept strings that cannot work (``tcp:0``, ``tcp:70000``,
``interface=banana``, a unix socket in a missing directory) and raise
anything at all on others (an IndexError for a ``systemd:`` socket that
was not inherited).  Twisted's ``ssl:`` and ``tls:`` types are refused: the
link's TLS is ``[tls]``'s (colod.tls), mutual and checked by name, over any
of the types here.  Each function here returns None for a usable string or
the reason, worded for the configuration error an administrator reads.

server_problem and client_problem judge the string and the files it names;
listen_problem, at the daemon's start, what only that moment can tell: the
port is free, the socket's directory writable, the systemd socket inherited.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable

from twisted.internet import endpoints
from twisted.python.systemd import ListenFDs

#: Where the secondary may listen (lower case, as Twisted wants), and each type's positional arguments.
SERVER_TYPES: dict[str, tuple[str, ...]] = {
    "tcp": ("port", "interface", "backlog"),
    "tcp6": ("port", "backlog", "interface"),
    "unix": ("address", "mode", "backlog", "lockfile"),
    "systemd": ("domain", "index", "name"),
}
#: How the primary may reach its secondary, and the names of each type's positional arguments.
CLIENT_TYPES: dict[str, tuple[str, ...]] = {
    "tcp": ("host", "port"),
    "unix": ("path",),
}
#: Twisted's TLS types: TLS inside the link's own (``[tls]``), and without its checks.
_TLS_TYPES = ("ssl", "tls")
#: The socket families a systemd socket may have (Twisted's ``domain=``).
_SYSTEMD_DOMAINS = ("INET", "INET6", "UNIX")
#: The longest connect timeout worth waiting (the primary retries anyway).
MAX_CONNECT_TIMEOUT = 3600

# A label of a host name (RFC 1123; '_' too, which resolvers accept).
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")


class _NoReactor:
    """Stands in for a reactor while endpoint strings are only parsed, never used."""


class _Unparsable(ValueError):
    """A string Twisted's endpoint grammar cannot read (its parser fails on it too)."""


def _split(description: str) -> tuple[str, list[str], dict[str, str]]:
    """The type, positional and keyword arguments of ``description``, as Twisted reads them.

    Twisted's endpoint-string grammar (serverFromString's documentation, and
    its parser for the details): ``:`` ends an argument; an argument's first
    ``=`` makes it a keyword argument, named by what comes before it (a later
    ``=`` is part of the value); a backslash takes the next character as it
    is, ``:``, ``=`` or ``\\`` alike; the type is the first positional
    argument.  Twisted's parser is private, so colod reads the grammar itself,
    to check exactly what the endpoint will be built from; tests.test_endpoints
    holds the two to the same reading.

    @raise _Unparsable: a backslash at the end, a keyword not in ASCII, no
        positional argument for the type: Twisted fails on each as well.
    """
    arguments: list[list[str]] = [[""]]  # each argument's parts: [value] or [name, value]
    characters = iter(description)
    for character in characters:
        argument = arguments[-1]
        if character == "\\":
            escaped = next(characters, None)
            if escaped is None:
                raise _Unparsable("ends in a backslash, which escapes nothing (write \\\\ for one)")
            argument[-1] += escaped
        elif character == ":":
            arguments.append([""])
        elif character == "=" and len(argument) == 1:
            argument.append("")
        else:
            argument[-1] += character
    positional = [argument[0] for argument in arguments if len(argument) == 1]
    keywords: dict[str, str] = {}
    for argument in arguments:
        if len(argument) == 2:
            name, value = argument
            if not name.isascii():
                raise _Unparsable(f"keyword {name!r} is not ASCII")
            keywords[name] = value  # the last of a name wins, as in Twisted
    if not positional:
        raise _Unparsable("has no endpoint type, only keyword arguments "
                          "(the type comes first, as in tcp:9000)")
    return positional[0], positional[1:], keywords


def _arguments(names: tuple[str, ...], positional: list[str], keywords: dict[str, str]) -> dict[str, str]:
    """Every argument by name: the positional ones take ``names`` in order."""
    return {**dict(zip(names, positional, strict=False)), **keywords}


def server_problem(description: str) -> str | None:
    """Why the secondary cannot listen at ``description``, judged from the string and its files."""
    try:
        kind, positional, keywords = _split(description)
    except _Unparsable as e:
        return str(e)
    if kind not in SERVER_TYPES:
        return _type_problem(kind, SERVER_TYPES)
    arguments = _arguments(SERVER_TYPES[kind], positional, keywords)
    check = {"tcp": _tcp_server, "tcp6": _tcp_server, "unix": _unix_server, "systemd": _systemd_server}[kind]
    problem = check(kind, arguments)
    if problem is None and kind != "systemd":  # Twisted's systemd parser looks at this process's sockets
        problem = _twisted_problem(endpoints.serverFromString, description)
    return problem


def client_problem(description: str) -> str | None:
    """Why the primary cannot connect to ``description``, judged from the string and its files."""
    try:
        kind, positional, keywords = _split(description)
    except _Unparsable as e:
        return str(e)
    kind = kind.lower()  # Twisted reads client types case-blind
    if kind not in CLIENT_TYPES:
        return _type_problem(kind, CLIENT_TYPES)
    names = CLIENT_TYPES[kind]
    if kind == "tcp" and len(positional) == 1 and "port" not in keywords:
        names = ("port",)  # Twisted reads a lone positional argument so
    arguments = _arguments(names, positional, keywords)
    if kind == "unix":
        problem = _absolute_path("path", arguments.get("path", ""))
    else:
        problem = (_host_argument(arguments) or _port_argument(arguments)
                   or _number_argument(arguments, "timeout", 1, MAX_CONNECT_TIMEOUT)
                   or _address_argument(arguments, "bindAddress"))
    return problem or _twisted_problem(endpoints.clientFromString, description)


def host_problem(host: str) -> str | None:
    """Why a peer cannot connect to ``host`` (a name or an IP address); None if it can."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        labels = host.removesuffix(".").split(".")
        if len(host) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
            return "must be a host name or an IP address"
        if all(label.isdigit() for label in labels):
            return "is not a valid IP address"
        return None
    if address.is_unspecified or address.is_multicast or address == ipaddress.ip_address("255.255.255.255"):
        return f"{address} is not one host's address: it must be an address the peer can connect to"
    return None


def tcp_port(description: str) -> int | None:
    """The port a TCP server endpoint (``tcp``, ``tcp6``) listens on; None for other types."""
    kind, positional, keywords = _split(description)
    if kind not in ("tcp", "tcp6"):
        return None
    return int(_arguments(SERVER_TYPES[kind], positional, keywords)["port"])


def listen_problem(description: str) -> str | None:
    """What stops the secondary listening at ``description`` now: a port in use, no inherited socket...

    The port is bound and let go at once: the real listening comes later,
    when the domain is protected, and reports a port taken in between itself.
    """
    kind, positional, keywords = _split(description)
    arguments = _arguments(SERVER_TYPES[kind], positional, keywords)
    if kind == "systemd":
        return _inherited_problem(arguments)
    if kind == "unix":
        directory = os.path.dirname(arguments["address"])
        if not os.access(directory, os.W_OK | os.X_OK):
            return f"cannot make the socket {arguments['address']}: {directory} is not writable"
        return None
    interface = arguments.get("interface", "::" if kind == "tcp6" else "")
    family = socket.AF_INET6 if kind == "tcp6" or ":" in interface else socket.AF_INET
    port = int(arguments["port"])
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted's ports do
        try:
            probe.bind((interface, port))
        except OSError as e:
            return f"cannot listen on {interface or 'every interface'} port {port}: {e.strerror}"
    return None


def _tcp_server(kind: str, arguments: dict[str, str]) -> str | None:
    problem = _port_argument(arguments) or _number_argument(arguments, "backlog", 1, 65535)
    interface = arguments.get("interface", "")
    if problem or not interface:
        return problem
    try:
        address = ipaddress.ip_address(interface)
    except ValueError:
        return f"interface {interface!r} is not an IP address"
    if kind == "tcp6" and address.version != 6:
        return f"interface {interface!r} is not an IPv6 address (tcp6 listens on IPv6; use tcp)"
    return None


def _unix_server(kind: str, arguments: dict[str, str]) -> str | None:
    address = arguments.get("address", "")
    problem = _absolute_path("address", address)
    if problem is None and not os.path.isdir(os.path.dirname(address)):
        problem = f"the socket's directory {os.path.dirname(address)} does not exist"
    return problem


def _systemd_server(kind: str, arguments: dict[str, str]) -> str | None:
    if arguments.get("domain") not in _SYSTEMD_DOMAINS:
        return f"domain must be one of {', '.join(_SYSTEMD_DOMAINS)} (the inherited socket's family)"
    if ("index" in arguments) == ("name" in arguments):
        return "needs exactly one of index= and name= (which inherited socket)"
    if "index" in arguments and not arguments["index"].isdigit():
        return f"index {arguments['index']!r} must be a number from 0"
    return None


def _inherited_problem(arguments: dict[str, str]) -> str | None:
    inherited = ListenFDs.fromEnvironment()
    if "name" in arguments:
        if arguments["name"] in inherited.inheritedNamedDescriptors():
            return None
        which = f"named {arguments['name']!r}"
    else:
        if int(arguments["index"]) < len(inherited.inheritedDescriptors()):
            return None
        which = f"at index {arguments['index']}"
    return (f"systemd passed colod no socket {which} (LISTEN_FDS: {os.environ.get('LISTEN_FDS', 'unset')}); "
            "start colod from its socket unit, or listen on tcp")


def _type_problem(kind: str, types: dict[str, tuple[str, ...]]) -> str:
    if kind.lower() in _TLS_TYPES:
        return (f"endpoint type {kind!r}: the link's TLS is configured in [tls] (mutual, the peer checked "
                f"by name); use one of {', '.join(types)}")
    return f"endpoint type {kind!r} cannot carry the peer link (use one of {', '.join(types)})"


def _twisted_problem(build: Callable[[object, str], object], description: str) -> str | None:
    """Whatever Twisted's parser still finds wrong, in one line."""
    try:
        build(_NoReactor(), description)
    except Exception as e:  # noqa: BLE001 - endpoint parsers (plugins too) raise anything at all
        return f"Twisted cannot build it: {e or type(e).__name__}"
    return None


def _port_argument(arguments: dict[str, str]) -> str | None:
    if "port" not in arguments:
        return "needs a port"
    problem = _number_argument(arguments, "port", 1, 65535)
    if problem is None:
        return None
    if arguments["port"].strip() == "0":
        return "port 0 would be a random port, which the peer cannot know"
    return problem


def _number_argument(arguments: dict[str, str], key: str, low: int, high: int) -> str | None:
    if key not in arguments:
        return None
    try:
        value = int(arguments[key])
    except ValueError:
        return f"{key} {arguments[key]!r} is not a whole number"
    return None if low <= value <= high else f"{key} {value} is not between {low} and {high}"


def _host_argument(arguments: dict[str, str]) -> str | None:
    if "host" not in arguments:
        return "needs a host"
    problem = host_problem(arguments["host"])
    return None if problem is None else f"host {arguments['host']!r}: {problem}"


def _address_argument(arguments: dict[str, str], key: str) -> str | None:
    if key not in arguments:
        return None
    try:
        ipaddress.ip_address(arguments[key])
    except ValueError:
        return f"{key} {arguments[key]!r} is not an IP address"
    return None


def _absolute_path(key: str, path: str) -> str | None:
    if "\0" in path:
        return f"{key} contains a NUL byte"
    return None if os.path.isabs(path) else f"{key} {path!r} must be an absolute path"
