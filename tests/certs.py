"""Certificates for the tests, made once per run by colod.certs (what ``colod make-certs`` runs).

``ours()`` is a CA with nodes dom0-a and dom0-b (tests.test_config's names), host-a and host-b (the
lab's) and host-c (a node of the right CA but no peer of anyone); ``theirs()`` another CA with its own
dom0-a and host-a: valid certificates with the right names, from the wrong CA.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import attrs

from colod import certs

NODES = ("dom0-a", "dom0-b", "host-a", "host-b", "host-c")


@attrs.frozen
class Files:
    """One node's [tls] files."""

    ca: Path
    certificate: Path
    key: Path

    def toml(self) -> str:
        return f'[tls]\nca = "{self.ca}"\ncertificate = "{self.certificate}"\nkey = "{self.key}"\n'


def _made(name: str, nodes: tuple[str, ...]) -> Path:
    directory = Path(tempfile.mkdtemp(prefix=f"colod-certs-{name}-", dir="/tmp"))
    atexit.register(shutil.rmtree, directory, True)
    certs.make(directory, list(nodes))
    return directory


@functools.cache
def ours() -> Path:
    return _made("ours", NODES)


@functools.cache
def theirs() -> Path:
    return _made("theirs", ("dom0-a", "host-a"))


def files(node: str, authority: Path | None = None) -> Files:
    directory = (authority or ours()) / node
    return Files(directory / certs.CA_CERT, directory / certs.CERT, directory / certs.KEY)
