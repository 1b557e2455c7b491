# -*- test-case-name: tests.control.test_colodctl,tests.control.test_server -*-
"""What each request of the control socket does to the running daemon.

Every command but ``log-level`` names a domain; what it asks is carried out by
the domain's engine (colod.engine.core's requests), which refuses, by
RequestRefused or CheckpointRefused, what it cannot do now: the answer is
then ``refused`` with the engine's reason.  A checkpoint is answered once it
is complete, or refused; if it has not begun within the wait (a secondary
that never comes), ``timeout``.

The devices' health takes QMP calls, which share the QMP connection with the
checkpoints: it is asked of QEMU at most once every HEALTH_AGE seconds per
domain, however many clients ask for status meanwhile.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from colod import __version__
from colod.config import Config
from colod.control.protocol import VERSION, Command, ErrorCode, Request, RequestError
from colod.control.status import Domain, device_health, engine_status
from colod.engine.core import EngineCore, RequestRefused
from colod.engine.primary import CheckpointRefused

#: Seconds a domain's device health is given again before QEMU is asked anew.
HEALTH_AGE = 1.0


class Commands:
    """Carries out the control socket's requests on this daemon's domains."""

    def __init__(self, config: Config, domains: Sequence[Domain], clock: IReactorTime,
                 log_level: Callable[[str | None], str], checkpoint_wait: float) -> None:
        """``log_level(name)`` sets the level (None: leaves it) and returns the one before;
        ``checkpoint_wait`` is how long a requested checkpoint may take to complete."""
        self._config = config
        self._domains = {domain.domain.name: domain for domain in domains}
        self._clock = clock
        self._log_level = log_level
        self._checkpoint_wait = checkpoint_wait
        self._started = clock.seconds()
        #: Per domain: the last health asked of QEMU and when; the waiters of a query under way.
        self._health: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._asking: dict[str, list[Deferred[list[dict[str, Any]]]]] = {}

    async def __call__(self, request: Request) -> dict[str, Any]:
        """The result of ``request``.  @raise RequestError: why it was not carried out."""
        try:
            if request.command is Command.STATUS:
                return await self._status(request.domain)
            if request.command is Command.LOG_LEVEL:
                return self._set_log_level(request.arguments["level"])
            return await self._engine_request(request.command, self._engine(request.domain))
        except (RequestRefused, CheckpointRefused) as refused:
            raise RequestError(ErrorCode.REFUSED, str(refused)) from None

    async def _status(self, name: str | None) -> dict[str, Any]:
        domains = [self._domain(name)] if name is not None else list(self._domains.values())
        now = self._clock.seconds()
        return {
            "colod": {"version": __version__, "protocol": VERSION, "pid": os.getpid(),
                      "node": self._config.node_name, "role": self._config.role.value,
                      "config": self._config.path, "started": self._started,
                      "log_level": self._log_level(None)},
            "domains": [{**engine_status(domain, self._config, now), "devices": await self._devices(domain)}
                        for domain in domains],
        }

    def _devices(self, domain: Domain) -> Deferred[list[dict[str, Any]]]:
        """``domain``'s device health: HEALTH_AGE old at most, and one query of QEMU at a time."""
        name = domain.domain.name
        asked, health = self._health.get(name, (None, []))
        if asked is not None and self._clock.seconds() - asked < HEALTH_AGE:
            return succeed(health)
        answer: Deferred[list[dict[str, Any]]] = Deferred()
        if name in self._asking:
            self._asking[name].append(answer)
            return answer
        self._asking[name] = [answer]

        def answered(health: list[dict[str, Any]]) -> None:
            self._health[name] = (self._clock.seconds(), health)
            for waiting in self._asking.pop(name):
                waiting.callback(health)

        Deferred.fromCoroutine(device_health(domain)).addCallback(answered)
        return answer

    async def _engine_request(self, command: Command, engine: EngineCore[Any, Any]) -> dict[str, Any]:
        name = engine.domain.name
        if command is Command.CHECKPOINT:
            waiting = engine.request_checkpoint().addTimeout(self._checkpoint_wait, self._clock)
            try:
                number = await waiting
            except CancelledError:
                raise RequestError(ErrorCode.TIMEOUT, f"domain {name}: the checkpoint was not complete "
                                   f"within {self._checkpoint_wait:g} s ({engine.doing})") from None
            return {"domain": name, "checkpoint": number}
        if command is Command.DROP:
            engine.drop()
        elif command is Command.PAUSE:
            engine.pause_checkpoints()
        elif command is Command.RESUME:
            engine.resume_checkpoints()
        else:
            engine.request_failover("colodctl, on the control socket")
        return {"domain": name, "step": engine.state.value, "checkpoint": engine.checkpoints}

    def _set_log_level(self, level: str) -> dict[str, Any]:
        try:
            was = self._log_level(level)
        except ValueError as e:
            raise RequestError(ErrorCode.BAD_REQUEST, str(e)) from None
        return {"level": level, "was": was}

    def _domain(self, name: str | None) -> Domain:
        if name not in self._domains:
            raise RequestError(ErrorCode.UNKNOWN_DOMAIN, f"no domain {name!r} here; this colod protects "
                               + ", ".join(sorted(self._domains)))
        return self._domains[name]

    def _engine(self, name: str | None) -> EngineCore[Any, Any]:
        engine = self._domain(name).engine
        if engine is None:
            raise RequestError(ErrorCode.REFUSED, f"domain {name}: colod has not reached its QEMU yet")
        return engine
