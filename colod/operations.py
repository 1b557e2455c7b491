# -*- test-case-name: tests.control.test_colodctl,tests.control.test_metrics -*-
"""What an administrator reaches a running colod by: its log's level and JSON lines, the control socket
(colod.control) and the metrics endpoint (colod.metrics).

They are opened before any domain is set up (ColodService.startService), so
that a colod that cannot serve them, or whose control socket another live
colod holds, ends before it touches a QEMU; and closed after every domain
has stopped, so that the last state stays visible to the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from colod import metrics
from colod.config import Config
from colod.control.commands import Commands
from colod.control.server import ControlServer
from colod.control.status import Domain
from colod.logs import LogControl


class OperationsService(Service):
    """The log's control, the control socket and the metrics endpoint of one colod."""

    log = Logger()

    def __init__(self, config: Config, domains: Sequence[Domain], reactor: Any,
                 checkpoint_wait: float) -> None:
        """``reactor`` provides IReactorUNIX, IReactorTCP and IReactorTime; ``checkpoint_wait`` is how long
        a requested checkpoint may take."""
        self.setName("operations")
        self._config = config
        self._reactor = reactor
        self._domains = {domain.domain.name: domain for domain in domains}
        self.logs = LogControl(config.log, self._log_fields)
        commands = Commands(config, domains, reactor, self.logs.set_level, checkpoint_wait)
        self.control = ControlServer(config.control_socket, commands, reactor)
        self._collector = metrics.EngineCollector(config, domains, self.logs.errors, reactor.seconds)
        self._metrics: IListeningPort | None = None

    def open(self) -> str | None:
        """Open the log's controls, the control socket and the metrics endpoint; returns why one cannot
        be (``key: problem``), or None."""
        problem = self.logs.open() or self.control.listen()
        if problem is None and self._config.metrics.listen is not None:
            listening = metrics.listen(self._reactor, self._config.metrics.listen, self._collector)
            result: list[IListeningPort | Failure] = []
            listening.addBoth(result.append)
            # Twisted's server endpoints listen at once: the result is there.
            if isinstance(result[0], Failure):
                problem = f"metrics.listen: cannot listen at {self._config.metrics.listen}: " \
                          f"{result[0].getErrorMessage()}"
            else:
                self._metrics = result[0]
                address = self._metrics.getHost()
                self.log.info("metrics at http://{host}:{port}/metrics", host=getattr(address, "host", ""),
                              port=getattr(address, "port", ""))
        if problem is not None:
            self.control.stop()
            self.logs.close()
        return problem

    @inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        if self._metrics is not None:
            yield self._metrics.stopListening()
        yield self.control.stop()
        self.logs.close()

    def _log_fields(self, name: str) -> dict[str, Any]:
        """The JSON lines' fields of an event about domain ``name``."""
        domain = self._domains.get(name)
        engine = domain.engine if domain is not None else None
        if engine is None:
            return {"role": self._config.role.value}
        return {"role": engine.role.value, "epoch": engine.epoch, "checkpoint": engine.checkpoints}

