# -*- test-case-name: tests.test_tap -*-
"""``twistd colod``: command-line options and the service tree they build."""

from __future__ import annotations

import atexit
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from twisted.application.service import IService
from twisted.python import usage

from colod import config as configuration
from colod.reactor import WrongReactor, use_asyncio_reactor
from colod.role import Role

if TYPE_CHECKING:
    from colod.service import ColodService


class Options(usage.Options):
    """Options of ``twistd colod``; the configuration file holds the rest."""

    synopsis = "[--role primary|secondary] [--config PATH]"
    longdesc = (
        "colod keeps a Xen guest running through the loss of a whole host by COLO "
        "checkpointing between a primary and a secondary dom0. Everything but the "
        "role is read from the TOML configuration file (see etc/colod.toml)."
    )
    optParameters = [
        ["config", "c", configuration.DEFAULT_PATH, "Path of the TOML configuration file."],
        ["role", "r", None,
         "This node's role, 'primary' or 'secondary'; overrides [colod].role in the file."],
    ]

    def opt_role(self, role: str) -> None:
        """This node's role, 'primary' or 'secondary'; overrides [colod].role in the file."""
        try:
            self["role"] = Role(role)
        except ValueError:
            raise usage.UsageError(f"--role must be 'primary' or 'secondary', not {role!r}") from None

    opt_r = opt_role

    def postOptions(self) -> None:
        """Settle the reactor and read the configuration before anything starts.

        Both failures are the administrator's to fix, so each is one line on
        stderr and exit status 1, not a traceback or a usage screen.
        """
        try:
            use_asyncio_reactor()
            self["loaded"] = load(self["config"], self["role"])
        except (WrongReactor, configuration.ConfigError) as e:
            print(f"colod: {e}", file=sys.stderr)
            raise SystemExit(1) from None


def load(path: str, role: Role | str | None = None) -> configuration.Config:
    """The configuration at ``path`` as the daemon takes it (``colod check-config`` too).

    @raise colod.config.ConfigError: it would not start colod.
    """
    loaded = configuration.load(path, role)
    if len(loaded.domains) > 1:
        # One link and one NBD port per domain, but one peer.listen: not yet.
        raise configuration.ConfigError(
            f"{loaded.path}: domain: this version of colod protects one domain per daemon "
            f"(got {len(loaded.domains)}); run one colod per domain")
    return loaded


def makeService(options: Options, reactor: Any = None) -> IService:
    """Build colod's service tree from parsed options: twistd's entry point, in twistd's process."""
    from colod.service import ColodService

    if reactor is None:
        from twisted.internet import reactor
    reactor.callWhenRunning(_stop_cleanly_on_signals, reactor)
    service = ColodService(options["loaded"], reactor)
    atexit.register(_exit_status, service)
    return service


def _exit_status(service: ColodService) -> None:
    """Exit with status 1 when colod stopped because it failed (ColodService.fail).

    twistd exits 0 whenever its reactor has stopped, and has no exit status
    to set; systemd must see the failure.  This runs as the interpreter
    exits, after twistd has stopped every service and removed its pid file,
    so all it changes is the status.
    """
    if service.failure is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def _stop_cleanly_on_signals(reactor: Any) -> None:
    """Make SIGTERM and SIGINT a clean stop with exit status 0.

    Twisted's own handlers make twistd re-raise the signal once stopped, so
    the process dies "killed by SIGTERM"; for colod a requested stop that
    stopped every service cleanly is a success, as systemd and admins read it.
    """

    def stop(signum: int, frame: object) -> None:
        reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
